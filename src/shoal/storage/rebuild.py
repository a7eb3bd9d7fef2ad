"""Rebuild a lost metadata store from the objects alone (`shoal meta rebuild`).

Every object's index says which stream offsets each block holds, and its
labels (format.py) which topic and partition each stream is. Per stream the
blocks are chained from the lowest offset, taking at each offset the block
that reaches furthest (a compacted copy over the WAL objects it replaced),
so the stream ends at the last offset any object holds: nothing stored is
handed out again. Producers' sequence state comes from the batches of each
stream's last block, so an idempotent producer's retry is still recognised.

What the objects do not carry is lost and must be set again: topic configs
(retention, cleanup policy...), consumer groups' committed offsets, ACLs,
SCRAM credentials, quotas; a partition that never held a record after its
topic's last written partition; the log start moved by DeleteRecords inside
a block. Objects written before labels existed (older Shoal) come back as
topics named `rebuilt-stream-<id>`.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field

from shoal.meta.recovery import NewPartition, NewTopic, topic_count, write_rebuilt
from shoal.meta.store import MetaError, MetaStore, ProducerRow
from shoal.storage.cleaner import PREFIXES
from shoal.storage.errors import CorruptObject, StorageError
from shoal.storage.format import BlockEntry
from shoal.storage.inventory import new_object, new_ranges, producer_rows, read_index
from shoal.storage.objectstore import ObjectInfo, ObjectStore

log = logging.getLogger("shoal.rebuild")


@dataclass(slots=True)
class StreamPlan:
    stream_id: int
    topic: str
    partition: int
    topic_id: str  # hex uuid
    chain: list[tuple[str, BlockEntry]] = field(default_factory=list)
    lost: list[tuple[int, int]] = field(default_factory=list)  # offset gaps dropped

    @property
    def start(self) -> int:
        return self.chain[0][1].start_offset if self.chain else 0

    @property
    def end(self) -> int:
        return self.chain[-1][1].end_offset if self.chain else 0


@dataclass(slots=True)
class RebuildReport:
    streams: list[StreamPlan]
    unreadable: list[str] = field(default_factory=list)
    unlabeled: list[int] = field(default_factory=list)
    shadowed: list[str] = field(default_factory=list)  # older incarnations of a topic name
    shadowed_ids: list[int] = field(default_factory=list)
    #: the highest stream id any object holds: new streams are numbered
    #: past it, so no object is ever taken for a new stream's data
    max_stream_id: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "topics": sorted({p.topic for p in self.streams}),
            "partitions": [
                {
                    "topic": p.topic,
                    "partition": p.partition,
                    "start": p.start,
                    "end": p.end,
                    "lost": [list(g) for g in p.lost],
                }
                for p in sorted(self.streams, key=lambda x: (x.topic, x.partition))
            ],
            "unreadable_objects": self.unreadable,
            "unlabeled_streams": self.unlabeled,
            "shadowed": self.shadowed,
        }


def chain_blocks(
    blocks: list[tuple[str, BlockEntry]],
) -> tuple[list[tuple[str, BlockEntry]], list[tuple[int, int]]]:
    """A gap-free run of blocks ending at the highest offset any block holds
    (the furthest-reaching block at each step); offset gaps before that run
    are returned as lost, since offsets must stay dense."""
    by_start: dict[int, tuple[str, BlockEntry]] = {}
    for key, e in blocks:
        have = by_start.get(e.start_offset)
        if have is None or e.end_offset > have[1].end_offset:
            by_start[e.start_offset] = (key, e)
    starts = sorted(by_start)
    chain: list[tuple[str, BlockEntry]] = []
    lost: list[tuple[int, int]] = []
    i = 0
    while i < len(starts):
        key, e = by_start[starts[i]]
        chain.append((key, e))
        end = e.end_offset
        # the next block must start exactly at `end`; blocks starting inside
        # the one taken are copies (or parts) of what it holds
        j = i + 1
        while j < len(starts) and starts[j] < end:
            j += 1
        if j < len(starts) and starts[j] != end:
            lost.append((end, starts[j]))
            chain = []  # keep only the run that reaches the end
        i = j
    return chain, lost


async def plan(store: ObjectStore) -> RebuildReport:
    listed: list[ObjectInfo] = [info for p in PREFIXES for info in await store.list(p)]
    blocks: dict[int, list[tuple[str, BlockEntry]]] = {}
    labels: dict[int, tuple[int, str]] = {}  # stream -> (object mtime, label) newest wins
    report = RebuildReport([])
    for info in listed:
        try:
            entries, obj_labels = await read_index(store, info.key, info.size)
        except (CorruptObject, StorageError) as exc:
            report.unreadable.append(f"{info.key}: {exc}")
            continue
        for e in entries:
            blocks.setdefault(e.stream_id, []).append((info.key, e))
        for sid, label in obj_labels.items():
            if sid not in labels or labels[sid][0] < info.last_modified_ms:
                labels[sid] = (info.last_modified_ms, label)
    report.max_stream_id = max(blocks, default=0)
    newest: dict[str, tuple[int, str]] = {}  # topic name -> (mtime, topic id)
    parsed: dict[int, tuple[str, int, str]] = {}
    for sid in blocks:
        if sid in labels:
            try:
                lab = json.loads(labels[sid][1])
                parsed[sid] = (str(lab["topic"]), int(lab["partition"]), str(lab["id"]))
            except (ValueError, KeyError, TypeError):
                report.unreadable.append(f"stream {sid}: unreadable label {labels[sid][1]!r}")
                continue
        else:
            report.unlabeled.append(sid)
            parsed[sid] = (f"rebuilt-stream-{sid}", 0, uuid.uuid4().hex)
        name, _p, tid = parsed[sid]
        mtime = labels.get(sid, (0, ""))[0]
        if name not in newest or newest[name][0] < mtime:
            newest[name] = (mtime, tid)
    for sid, (name, partition, tid) in sorted(parsed.items()):
        if newest[name][1] != tid:
            # a deleted topic's objects awaiting deletion: the newer topic wins
            report.shadowed.append(f"stream {sid} of an older topic {name!r} (id {tid})")
            report.shadowed_ids.append(sid)
            continue
        chain, lost = chain_blocks(blocks[sid])
        report.streams.append(StreamPlan(sid, name, partition, tid, chain, lost))
    return report


async def rebuild(store: ObjectStore, meta: MetaStore, node_id: int = 0) -> RebuildReport:
    """Write the plan into an empty metadata store, in one transaction."""
    have = await topic_count(meta)
    if have:
        raise MetaError(
            f"the metadata store already has {have} topic(s): rebuild needs an empty one"
        )
    report = await plan(store)
    listed = {info.key: info for p in PREFIXES for info in await store.list(p)}
    producers: list[ProducerRow] = []
    for sp in report.streams:
        if sp.chain:
            producers.extend(await producer_rows(store, sp.stream_id, sp.chain[-1:]))
    by_topic: dict[str, list[StreamPlan]] = {}
    for sp in report.streams:
        by_topic.setdefault(sp.topic, []).append(sp)
    next_stream = report.max_stream_id + 1
    topics: list[NewTopic] = []
    for name, parts in sorted(by_topic.items()):
        have_parts = {sp.partition: sp for sp in parts}
        partitions: list[NewPartition] = []
        for index in range(max(have_parts) + 1):
            got = have_parts.get(index)
            if got is None:  # never written: an empty stream of its own
                partitions.append(NewPartition(next_stream, 0, 0, []))
                next_stream += 1
            else:
                partitions.append(
                    NewPartition(got.stream_id, got.start, got.end, new_ranges(got.chain))
                )
        topics.append(NewTopic(name, parts[0].topic_id, partitions))
    objects = {
        key: new_object(listed[key], node_id) for sp in report.streams for key, _e in sp.chain
    }
    # shadowed streams are recorded as deleted, as a deleted topic's are:
    # their objects are then garbage the cleaner may reclaim, not unknown data
    await write_rebuilt(meta, topics, report.shadowed_ids, objects, producers)
    log.info("rebuilt %d topic(s), %d partition(s)", len(by_topic), len(report.streams))
    return report
