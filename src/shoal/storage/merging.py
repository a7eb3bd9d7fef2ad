"""Which compacted objects the second compaction level takes. Pure: no IO.

The first level (compaction.py) turns each round's WAL objects into
compacted ones, so a broker writes a new small object every round that has
data, and nothing ever merged those again: the count grew with uptime. And an
object is only deleted when no range refers to it any more, so one kept
stream's range pins every expired byte beside it.

The second level, as SlateDB's size-tiered compaction and AutoMQ's
stream-object compaction do, takes two kinds of objects:

- **mostly dead**: less than `rewrite_live_ratio` of the object is still
  referenced, and at least `min_dead_bytes` is not: its live ranges are
  copied and the object goes. (Smaller dead parts wait for the object's next
  merge, which copies only live ranges too; so a tiny object whose index is
  most of it is not rewritten round after round.)
- **small**: live bytes below `target` (compaction.stream.object.bytes),
  sorted into size tiers a factor of `min_objects` apart (tier 1 from
  target/K up to target, tier 2 from target/K² ...). Once a tier holds
  `min_objects` objects they are merged, so each byte is rewritten about once
  per tier on its way to an object of about `target` bytes, and at most
  K-1 objects wait in each tier: the number of objects stays bounded by the
  live data, not by time.

A round takes at most `max_objects` objects and `max_bytes` live bytes: the
mostly dead ones first (they give space back), then the smallest tiers (they
reduce the count the most per byte copied).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shoal.config import default
from shoal.meta.store import ObjectUsage

#: deeper than any real tier (target / K**32 is below one byte)
MAX_TIER = 32


@dataclass(frozen=True, slots=True)
class MergePolicy:
    target: int  # compaction.stream.object.bytes
    min_objects: int = default("compaction.merge.min.objects")  # a tier's fan-in
    max_objects: int = default("compaction.merge.max.objects")  # 0 turns the level off
    max_bytes: int = default("compaction.max.bytes")  # live bytes a round copies
    rewrite_live_ratio: float = default("compaction.rewrite.live.ratio")
    min_dead_bytes: int = default("compaction.block.bytes")


def tier(live: int, policy: MergePolicy) -> int:
    """0 for an object of `target` live bytes or more, else the t >= 1 with
    target / K**t <= live < target / K**(t-1)."""
    if live >= policy.target:
        return 0
    t, bound = 1, policy.target
    while t < MAX_TIER and live * policy.min_objects**t < bound:
        t += 1
    return t


def mostly_dead(obj: ObjectUsage, policy: MergePolicy) -> bool:
    dead = obj.size - obj.live
    return dead >= policy.min_dead_bytes and obj.live < policy.rewrite_live_ratio * obj.size


def plan_merge(objects: Sequence[ObjectUsage], policy: MergePolicy) -> list[ObjectUsage]:
    """The objects one round merges (oldest first within each group), or []
    when there is nothing worth a round: a lone small object is not merged
    with itself."""
    if policy.max_objects <= 0:
        return []
    rewrite = [o for o in objects if mostly_dead(o, policy)]
    tiers: dict[int, list[ObjectUsage]] = {}
    for o in objects:
        if o.live < policy.target and not mostly_dead(o, policy):
            tiers.setdefault(tier(o.live, policy), []).append(o)
    due = [tiers[t] for t in sorted(tiers, reverse=True) if len(tiers[t]) >= policy.min_objects]
    chosen: list[ObjectUsage] = []
    live = 0
    merged = 0  # small objects taken (a tier cut to one by the bounds is no merge)
    for group in [rewrite, *due]:
        for o in group:
            if len(chosen) >= policy.max_objects:
                break
            if chosen and live + o.live > policy.max_bytes:
                break
            chosen.append(o)
            live += o.live
            merged += group is not rewrite
    if merged == 1 and len(chosen) == 1:
        return []
    return chosen
