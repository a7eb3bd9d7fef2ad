"""Server-side partition assignors of the consumer group protocol (KIP-848).

Under KIP-848 the coordinator, not a client, computes the group's target
assignment. An assignor is a pure function from the members' subscriptions
(and the previous target, for stickiness) and the partition counts of the
subscribed topics to a new target. Kafka ships `uniform` (balanced and
sticky) and `range` (contiguous ranges per topic, co-partitioning friendly);
so does Shoal, under the same names, chosen by `group.consumer.assignors`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass

#: topic name -> partition indexes
Assignment = dict[str, frozenset[int]]
TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """What an assignor knows of a member: what it subscribes to (resolved to
    existing topics) and its previous target assignment."""

    member_id: str
    instance_id: str | None
    topics: frozenset[str]
    current: Mapping[str, frozenset[int]]


Assignor = Callable[[Mapping[str, MemberSpec], Mapping[str, int]], dict[str, Assignment]]


def _as_assignment(parts: Mapping[str, set[int]]) -> Assignment:
    return {t: frozenset(p) for t, p in parts.items() if p}


def uniform(
    members: Mapping[str, MemberSpec], partitions: Mapping[str, int]
) -> dict[str, Assignment]:
    """Every member gets as many partitions as the others, give or take one
    (among members subscribed to the same topics), and keeps as many of its
    previous partitions as balance allows: a member joining takes partitions
    from the most loaded members and moves nothing else."""
    if len({s.topics for s in members.values()}) == 1:
        return _uniform_homogeneous(members, partitions)
    owner: dict[TopicPartition, str] = {}
    load: dict[str, int] = dict.fromkeys(members, 0)
    # 1. Stickiness: each partition stays with its previous owner if that
    #    owner still subscribes to the topic.
    for mid in sorted(members):
        spec = members[mid]
        for topic, parts in spec.current.items():
            if topic not in spec.topics:
                continue
            for p in parts:
                if p < partitions.get(topic, 0) and (topic, p) not in owner:
                    owner[(topic, p)] = mid
                    load[mid] += 1
    eligible: dict[str, list[str]] = {
        t: sorted(m for m, s in members.items() if t in s.topics) for t in partitions
    }
    # 2. Every unowned partition goes to the least loaded eligible member
    #    (a heap per topic: P log M, not P x M).
    for topic in sorted(partitions):
        heap = [(load[m], m) for m in eligible[topic]]
        if not heap:
            continue
        heapq.heapify(heap)
        for p in range(partitions[topic]):
            if (topic, p) not in owner:
                n, mid = heapq.heappop(heap)
                owner[(topic, p)] = mid
                load[mid] = n + 1
                heapq.heappush(heap, (n + 1, mid))
    # 3. Balance: move partitions from a member to an eligible one holding at
    #    least two fewer, until no such move exists (each move lowers the sum
    #    of squared loads, so this ends). A member at most one above the least
    #    loaded of all cannot give anything, which ends a balanced pass early.
    held: dict[str, dict[str, list[int]]] = {m: {} for m in members}
    for (topic, p), mid in sorted(owner.items()):
        held[mid].setdefault(topic, []).append(p)
    progress = True
    while progress:
        progress = False
        lowest = min(load.values(), default=0)
        for donor in sorted(members, key=lambda m: (-load[m], m)):
            if load[donor] <= lowest + 1:
                break
            for topic in sorted(held[donor]):
                giving = held[donor][topic]
                while giving:
                    target = min(eligible[topic], key=lambda m: (load[m], m))
                    if load[target] + 1 >= load[donor]:
                        break
                    held[target].setdefault(topic, []).append(giving.pop())
                    load[donor] -= 1
                    load[target] += 1
                    progress = True
            lowest = min(load.values())
    return {
        mid: {t: frozenset(ps) for t, ps in topics.items() if ps} for mid, topics in held.items()
    }


def _uniform_homogeneous(
    members: Mapping[str, MemberSpec], partitions: Mapping[str, int]
) -> dict[str, Assignment]:
    """`uniform` when every member subscribes to the same topics, the usual
    case, in O(P + M log M): quotas of floor(P/M), one more for the members
    holding the most; each keeps its previous partitions up to its quota, the
    rest fill the members below theirs."""
    topics = next(iter(members.values())).topics
    every = [(t, p) for t in sorted(topics & partitions.keys()) for p in range(partitions[t])]

    def held(m: str) -> int:
        return sum(len(ps) for t, ps in members[m].current.items() if t in topics)

    order = sorted(members, key=lambda m: (-held(m), m))
    quota, extra = divmod(len(every), len(order)) if order else (0, 0)
    taken: set[TopicPartition] = set()
    kept: dict[str, list[TopicPartition]] = {}
    for i, mid in enumerate(order):
        limit = quota + (1 if i < extra else 0)
        mine: list[TopicPartition] = []
        for topic in sorted(members[mid].current):
            if topic not in topics:
                continue
            for p in sorted(members[mid].current[topic]):
                if len(mine) < limit and p < partitions.get(topic, 0) and (topic, p) not in taken:
                    mine.append((topic, p))
                    taken.add((topic, p))
        kept[mid] = mine
    free = iter(tp for tp in every if tp not in taken)
    out: dict[str, Assignment] = {}
    for i, mid in enumerate(order):
        limit = quota + (1 if i < extra else 0)
        mine = kept[mid]
        while len(mine) < limit:
            mine.append(next(free))
        grouped: dict[str, set[int]] = {}
        for topic, p in mine:
            grouped.setdefault(topic, set()).add(p)
        out[mid] = _as_assignment(grouped)
    return out


def range_(
    members: Mapping[str, MemberSpec], partitions: Mapping[str, int]
) -> dict[str, Assignment]:
    """Per topic, its subscribers (by instance id, else member id) take
    contiguous ranges: the first `n % m` get one more. Members subscribed to
    the same co-partitioned topics get the same partition numbers of each."""
    out: dict[str, dict[str, set[int]]] = {m: {} for m in members}
    for topic in sorted(partitions):
        subs = sorted(
            (m for m, s in members.items() if topic in s.topics),
            key=lambda m: (members[m].instance_id or m, m),
        )
        if not subs:
            continue
        n = partitions[topic]
        quota, extra = divmod(n, len(subs))
        start = 0
        for i, mid in enumerate(subs):
            size = quota + (1 if i < extra else 0)
            if size:
                out[mid][topic] = set(range(start, start + size))
            start += size
    return {m: _as_assignment(parts) for m, parts in out.items()}


ASSIGNORS: dict[str, Assignor] = {"uniform": uniform, "range": range_}
