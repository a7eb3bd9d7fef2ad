"""Consumer-group offset sync: the source's committed offsets of matching
groups, copied for the mirror topics while the group has no members here.

Offsets need no translation (a mirror's offsets are the source's). An offset
beyond what the mirror holds is not copied yet: a consumer starting there
would be out of range and reset, so the group waits a round instead. Offsets
only move forward: consumers that moved here and went on committing are never
rewound to the source's older offset.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from shoal.broker.broker import Broker
from shoal.group.offsets import CommittedOffset
from shoal.link.source import SourceCluster, SourceError
from shoal.link.spec import matches, patterns
from shoal.meta.links import PROMOTED, MirrorRow
from shoal.protocol.errors import ErrorCode

log = logging.getLogger("shoal.link.groups")


@dataclass(slots=True)
class GroupSync:
    """The outcome of one group's sync round, for status."""

    synced: int = 0  # partitions whose offset equals the source's
    behind: int = 0  # partitions whose source offset the mirror does not hold yet
    skipped: str = ""  # why the group was not touched (members on Shoal)
    at_ms: int = field(default_factory=lambda: int(time.time() * 1000))


async def sync_groups(
    broker: Broker, source: SourceCluster, group_patterns: str, mirrors: dict[str, MirrorRow]
) -> dict[str, GroupSync]:
    pats = patterns(group_patterns)
    if not pats:
        return {}
    by_source = {m.source_topic: m for m in mirrors.values() if m.state != PROMOTED}
    out: dict[str, GroupSync] = {}
    for group in await source.groups():
        if not matches(pats, group):
            continue
        try:
            offsets = await source.group_offsets(group)
        except SourceError as exc:
            log.info("link: offsets of group %s unavailable: %s", group, exc)
            continue
        entries: dict[tuple[str, int], CommittedOffset] = {}
        result = out[group] = GroupSync()
        now = int(time.time() * 1000)
        have = broker.groups.committed(group)
        for (topic, partition), (offset, metadata) in offsets.items():
            m = by_source.get(topic)
            if m is None:
                continue
            shoal_topic = broker.topics.get(m.mirror)
            if shoal_topic is None or partition >= len(shoal_topic.partitions):
                continue
            part = shoal_topic.partitions[partition]
            if broker.owns(part):
                _start, end = await broker.engine.bounds(part.stream_id)
            else:
                end = (await broker.engine.open_reader(part.stream_id)).end_offset
            if offset > end:
                result.behind += 1
                continue
            result.synced += 1
            current = have.get((m.mirror, partition))
            # Never backwards: once consumers have moved here and committed
            # past the source's (frozen) offset, a moment with no members (a
            # rolling restart) must not rewind them.
            if current is None or current.offset < offset:
                entries[(m.mirror, partition)] = CommittedOffset(offset, -1, metadata, now)
        if not entries:
            continue
        code = broker.groups.check_commit(group, -1, "", None)
        if code == ErrorCode.none:
            await broker.groups.commit(group, entries)
            log.info("link: group %s: %d offset(s) copied from the source", group, len(entries))
        elif code == ErrorCode.unknown_member_id:
            result.skipped = "has members on Shoal"
        else:
            result.skipped = code.name  # another broker coordinates it
    return out
