"""`shoal link rollback`: go back to the source after promotion.

In order: the groups to move must have no members on the source (checked
first, before anything changes); the reversed topics turn read-only here and
the reverse link copies what is left (bounded by a timeout, after which the
topics take writes here again); then each group's committed offsets here are
translated through the offset map and committed on the source, and the
source's ends are compared with the map: offsets there that the reverse link
did not write (duplicates, or another writer) are counted and reported.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from shoal.link.offsetmap import OffsetMap, Range
from shoal.link.source import SourceCluster
from shoal.link.spec import matches, parse_settings, patterns
from shoal.meta.links import COPYING, ROLLED_BACK, STOPPING, LinkStore, MirrorRow

POLL_S = 0.2


class RollbackError(Exception):
    """Rollback refused or did not finish; the message says why and what to do."""


@dataclass(slots=True)
class RollbackResult:
    topics: list[str] = field(default_factory=list)
    copied: int = 0  # offsets copied back since promotion
    ranges: int = 0  # offset-map ranges (one per partition: offsets identical)
    extra: dict[str, int] = field(default_factory=dict)  # topic-partition -> unmapped offsets
    recovered: int = 0
    # group -> (topic, partition, offset here, offset on the source)
    groups: dict[str, list[tuple[str, int, int, int]]] = field(default_factory=dict)


async def rollback(
    store: LinkStore, name: str, timeout: float, group_patterns: str | None
) -> RollbackResult | None:
    """Roll link NAME back; None when it already was."""
    _v, links, mirrors = await store.load()
    link = next((row for row in links if row.name == name), None)
    if link is None:
        raise RollbackError(f"no link named {name!r}")
    reverse = [r for r in await store.reverse() if r.link == name]
    if not reverse:
        raise RollbackError(
            f"link {name!r} has no reverse link: records written here since promotion "
            "are not on the source, so it is no rollback target (a reverse link is created "
            f"by `shoal link promote --reverse`)"
        )
    pending = [r.mirror for r in reverse if r.state != ROLLED_BACK]
    if not pending:
        return None
    if link.paused:
        raise RollbackError(f"link {name} is paused: resume it first (it copies nothing back)")
    by_mirror = {m.mirror: m for m in mirrors if m.mirror in pending}
    pats = patterns(group_patterns if group_patterns is not None else link.groups or "*")
    source = SourceCluster(link.source, parse_settings(link.settings))
    try:
        groups = await _groups_here(store, pats, by_mirror)
        for group in groups:
            members = await source.group_members(group)
            if members:
                raise RollbackError(
                    f"group {group!r} has {members} member(s) on the source {link.source}: "
                    "stop them first (rollback sets the group's offsets there)"
                )
        await _stop_reverse(store, pending, timeout)
        groups = await _groups_here(store, pats, by_mirror)  # final commits included
        maps: dict[str, dict[int, OffsetMap]] = {}
        result = RollbackResult(topics=sorted(pending))
        for mirror in pending:
            parts = await store.offset_map(mirror)
            maps[mirror] = {p: OffsetMap([Range(*r) for r in rs]) for p, rs in parts.items()}
            src_topic = by_mirror[mirror].source_topic
            for p, omap in maps[mirror].items():
                result.copied += omap.copied
                result.ranges += len(omap.ranges)
                end = await source.end_offset(src_topic, p, omap.source_end)
                if end != omap.source_end:
                    result.extra[f"{src_topic}-{p}"] = end - omap.source_end
        result.recovered = sum(
            rp.recovered for rp in await store.reverse_progress() if rp.mirror in pending
        )
        for group, offsets in sorted(groups.items()):
            out: dict[tuple[str, int], tuple[int, str]] = {}
            rows = result.groups[group] = []
            for (mirror, p), (offset, metadata) in sorted(offsets.items()):
                omap_ = maps.get(mirror, {}).get(p)
                moved = omap_.translate(offset) if omap_ is not None else offset
                src_topic = by_mirror[mirror].source_topic
                out[(src_topic, p)] = (moved, metadata)
                rows.append((src_topic, p, offset, moved))
            await source.commit_offsets(group, out)
        await store.set_reverse_state(pending, ROLLED_BACK, only_from=STOPPING)
        return result
    finally:
        source.close()


async def _groups_here(
    store: LinkStore, pats: list[str], mirrors: dict[str, MirrorRow]
) -> dict[str, dict[tuple[str, int], tuple[int, str]]]:
    """Committed offsets here of the matching groups, on the rolled-back
    topics: only those topics' offsets are read, not every group's here."""
    out: dict[str, dict[tuple[str, int], tuple[int, str]]] = {}
    for group, topic, partition, offset, metadata in await store.commits_on(sorted(mirrors)):
        if matches(pats, group) and offset >= 0:
            out.setdefault(group, {})[(topic, partition)] = (offset, metadata)
    return out


async def _stop_reverse(store: LinkStore, pending: list[str], timeout: float) -> None:
    """Make the topics read-only here and wait until every partition's owner
    says it copied everything; on timeout they take writes again."""
    asked = int(time.time() * 1000)
    await store.set_reverse_state(pending, STOPPING, only_from=COPYING)
    counts = {t.name: len(t.partitions) for t in await store.meta.list_topics()}
    deadline = time.monotonic() + timeout
    while True:
        rows = {(r.mirror, r.partition): r for r in await store.reverse_progress()}
        behind: dict[str, int] = {}
        errors: set[str] = set()
        for mirror in pending:
            for p in range(counts.get(mirror, 0)):
                r = rows.get((mirror, p))
                if r is None or not r.stopped or r.updated_ms < asked:
                    behind[mirror] = behind.get(mirror, 0) + (r.lag if r is not None else 0)
                    if r is not None and r.error:
                        errors.add(r.error)
        if not behind:
            return
        if time.monotonic() >= deadline:
            await store.set_reverse_state(pending, COPYING, only_from=STOPPING)
            detail = ", ".join(f"{t} {n} record(s) behind" for t, n in sorted(behind.items()))
            if errors:
                detail += f" ({'; '.join(sorted(errors))})"
            raise RollbackError(
                f"not rolled back: the reverse link did not copy everything to the source "
                f"within {timeout:g}s ({detail}); the topics take writes here again. Stop "
                "the producers here and retry."
            )
        await asyncio.sleep(POLL_S)
