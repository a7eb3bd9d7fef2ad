"""Compaction: rewrite small WAL objects into large, per-stream ones.

WAL objects are small and mix every partition of a broker, which is right for
write latency and wrong for catch-up reads. A round takes the oldest WAL
objects of this broker, and rewrites each stream's data as contiguous,
batch-aligned blocks of about `block_bytes`: streams with at least
`stream_object_bytes` in the round get objects of their own, each about that
size (so retention, which frees whole objects, can give space back a piece at a
time), the rest share one. One metadata transaction swaps the ranges; the replaced objects are
deleted after a grace period, so readers in flight finish first.

The second level (`merge_once`, chosen by merging.py) applies the same
rewrite to compacted objects: small ones are merged, mostly dead ones are
rewritten with their live ranges only, so the number of objects follows the
data retention keeps instead of uptime.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from shoal.config import default
from shoal.meta.store import MetaStore, RangeCommit, RangeRecord
from shoal.protocol.records import batch_spans
from shoal.storage.concurrency import gather_bounded
from shoal.storage.errors import ObjectNotFound
from shoal.storage.format import BlockBuilder, BlockEntry, Labeler, labels_of, object_parts
from shoal.storage.merging import MergePolicy, mostly_dead, plan_merge
from shoal.storage.objectstore import ObjectStore

log = logging.getLogger("shoal.compaction")


@dataclass(frozen=True, slots=True)
class CompactionConfig:
    """The compaction.* keys (defaults from config.py's catalogue)."""

    min_age_ms: int = default("compaction.min.age.ms")
    max_objects: int = 256  # WAL objects a round takes (no key)
    max_bytes: int = default("compaction.max.bytes")
    block_bytes: int = default("compaction.block.bytes")
    stream_object_bytes: int = default("compaction.stream.object.bytes")
    delete_grace_ms: int = default("object.delete.grace.ms")
    # The second level (merging.py): a size tier's fan-in, most objects a
    # round takes (0: off), and the live share below which an object is
    # rewritten.
    merge_min_objects: int = default("compaction.merge.min.objects")
    merge_max_objects: int = default("compaction.merge.max.objects")
    rewrite_live_ratio: float = default("compaction.rewrite.live.ratio")

    @property
    def merge_policy(self) -> MergePolicy:
        return MergePolicy(
            target=self.stream_object_bytes,
            min_objects=self.merge_min_objects,
            max_objects=self.merge_max_objects,
            max_bytes=self.max_bytes,
            rewrite_live_ratio=self.rewrite_live_ratio,
            min_dead_bytes=self.block_bytes,
        )


@dataclass(slots=True)
class CompactionResult:
    objects_in: int = 0
    objects_out: int = 0
    bytes_in: int = 0  # the input objects' size
    streams: int = 0
    bytes_live: int = 0  # merges: what ranges still referred to (copied)
    rewritten: int = 0  # merges: inputs taken for being mostly dead
    #: a round left WAL objects old enough for it (it took its maximum)
    more: bool = False

    def add(self, other: CompactionResult) -> None:
        self.objects_in += other.objects_in
        self.objects_out += other.objects_out
        self.bytes_in += other.bytes_in
        self.streams += other.streams
        self.bytes_live += other.bytes_live
        self.rewritten += other.rewritten


# stream id -> its new ranges, so the engine can update what it serves from
RangesChanged = Callable[[int, list[int], list[RangeRecord]], None]
# a range's bytes, from the objects a round read
BlockOf = Callable[[RangeRecord], memoryview]


class Compactor:
    def __init__(
        self,
        store: ObjectStore,
        meta: MetaStore,
        node_id: int,
        config: CompactionConfig,
        on_change: RangesChanged,
        uploading: set[str] | None = None,
        label: Labeler | None = None,
    ) -> None:
        self.uploading = uploading if uploading is not None else set()
        self._label = label
        self.store = store
        self.meta = meta
        self.node_id = node_id
        self.config = config
        self.on_change = on_change
        self._seq = 0
        self.rounds = 0
        self.totals = CompactionResult()
        self.merge_rounds = 0
        self.merge_totals = CompactionResult()

    async def pending(self) -> int:
        """WAL objects old enough to compact (for stats)."""
        cutoff = int(time.time() * 1000) - self.config.min_age_ms
        return len(await self.meta.wal_objects(self.node_id, cutoff, 1_000_000))

    async def catch_up(self, until: float, node_id: int | None = None) -> CompactionResult:
        """Rounds until the WAL objects old enough are all compacted, or the
        monotonic clock passes `until`. A round takes max_objects (256), and
        a local store at a fleet's small requests writes hundreds a second:
        one round per compaction interval let them pile up without bound
        (10,000 WAL objects after 12 s of such load, here)."""
        total = CompactionResult()
        while True:
            result = await self.run_once(node_id)
            total.add(result)
            total.more = result.more
            if not result.more or time.monotonic() >= until:
                return total

    async def run_once(self, node_id: int | None = None) -> CompactionResult:
        """One round over the WAL objects of `node_id` (default: this broker;
        the controller passes dead brokers' ids, whose objects nobody else
        would ever rewrite)."""
        cutoff = int(time.time() * 1000) - self.config.min_age_ms
        node = self.node_id if node_id is None else node_id
        keys = await self.meta.wal_objects(node, cutoff, self.config.max_objects)
        result = CompactionResult()
        if not keys:
            return result
        ranges = await self.meta.ranges_in_objects(keys)
        # Bound the round's memory: whole objects in id order until max_bytes.
        chosen: list[str] = []
        size = 0
        sizes: dict[str, int] = {}
        for r in ranges:
            sizes[r.object_key] = sizes.get(r.object_key, 0) + r.size
        for key in keys:
            if chosen and size + sizes.get(key, 0) > self.config.max_bytes:
                break
            chosen.append(key)
            size += sizes.get(key, 0)
        chosen_set = set(chosen)
        ranges = [r for r in ranges if r.object_key in chosen_set]
        wanted = [key for key in chosen if key in sizes]
        blobs = await self.store.get_many(wanted)
        data = dict(zip(wanted, blobs, strict=True))

        def block_of(r: RangeRecord) -> memoryview:
            return memoryview(data[r.object_key])[r.position : r.position + r.size]

        shared = await self._stream_objects(ranges, block_of, wanted, result)
        if shared:
            await self._write(shared, block_of, "set", result, wanted)
        # WAL objects with no range left (all trimmed, or only empty) still
        # need scheduling: replace_ranges did that for the swapped ones.
        result.objects_in = len(chosen)
        result.bytes_in = size
        result.more = len(keys) == self.config.max_objects or len(chosen) < len(keys)
        self.rounds += 1
        self.totals.add(result)
        log.info(
            "compacted %d WAL objects (%d bytes) of %d streams into %d objects",
            result.objects_in,
            result.bytes_in,
            result.streams,
            result.objects_out,
        )
        return result

    async def merge_once(self, node_id: int | None = None) -> CompactionResult:
        """One round of the second level over the compacted objects of
        `node_id` (default: this broker; the controller passes brokers that
        are gone): merge small ones, rewrite mostly dead ones (merging.py).
        Same protocol as a WAL round: the new objects are written and their
        ranges swapped in one transaction each before the old objects are
        unreferenced, and those are deleted after the grace period."""
        node = self.node_id if node_id is None else node_id
        result = CompactionResult()
        policy = self.config.merge_policy
        chosen = plan_merge(await self.meta.compacted_objects(node), policy)
        if not chosen:
            return result
        keys = [o.key for o in chosen]
        ranges = await self.meta.ranges_in_objects(keys)
        # An object is read whole (one GET) unless it holds more dead bytes
        # than live and at least a block of them; of those only the live
        # ranges are read (a GET each). A small object read range by range
        # would cost a request per live range to save less than a block.
        whole = [
            o.key for o in chosen if 2 * o.live >= o.size or o.size - o.live < policy.min_dead_bytes
        ]
        wholes = set(whole)
        parts = [r for r in ranges if r.object_key not in wholes and r.size]
        try:
            blobs = await self.store.get_many(whole)
            views = await gather_bounded(
                [
                    functools.partial(
                        self.store.get_range, r.object_key, r.position, r.position + r.size
                    )
                    for r in parts
                ]
            )
        except ObjectNotFound as exc:
            # Trimmed empty and deleted since it was listed: the next round
            # plans again without it.
            log.info("merge round skipped: %s", exc)
            return result
        data = dict(zip(whole, blobs, strict=True))
        pieces = {(r.object_key, r.position): v for r, v in zip(parts, views, strict=True)}

        def block_of(r: RangeRecord) -> memoryview:
            if r.object_key in data:
                return memoryview(data[r.object_key])[r.position : r.position + r.size]
            return pieces.get((r.object_key, r.position), memoryview(b""))

        shared = await self._stream_objects(ranges, block_of, keys, result)
        for pack in _packs(shared, policy.target):
            await self._write(pack, block_of, "set", result, keys)
        result.objects_in = len(chosen)
        result.bytes_in = sum(o.size for o in chosen)
        result.bytes_live = sum(r.size for r in ranges)
        result.rewritten = sum(mostly_dead(o, policy) for o in chosen)
        self.merge_rounds += 1
        self.merge_totals.add(result)
        log.info(
            "merged %d compacted objects of broker %d (%d bytes, %d live; %d mostly dead) "
            "of %d streams into %d objects",
            result.objects_in,
            node,
            result.bytes_in,
            result.bytes_live,
            result.rewritten,
            result.streams,
            result.objects_out,
        )
        return result

    async def _stream_objects(
        self,
        ranges: list[RangeRecord],
        block_of: BlockOf,
        sources: list[str],
        result: CompactionResult,
    ) -> list[tuple[int, list[RangeRecord]]]:
        """Write each stream run of at least stream_object_bytes as objects of
        its own (about that size each); return the smaller runs."""
        by_stream: dict[int, list[RangeRecord]] = {}
        for r in ranges:
            by_stream.setdefault(r.stream_id, []).append(r)
        shared: list[tuple[int, list[RangeRecord]]] = []
        for sid, rs in sorted(by_stream.items()):
            for run in _contiguous(rs):
                run_bytes = sum(r.size for r in run)
                if run_bytes >= self.config.stream_object_bytes:
                    for piece in _pieces(run, self.config.stream_object_bytes):
                        await self._write([(sid, piece)], block_of, "stream", result, sources)
                else:
                    shared.append((sid, run))
        return shared

    async def _write(
        self,
        runs: list[tuple[int, list[RangeRecord]]],
        block_of: BlockOf,
        kind: str,
        result: CompactionResult,
        sources: list[str],
    ) -> None:
        blocks: list[BlockBuilder] = []
        plan: list[tuple[int, list[int], int, int]] = []  # stream, old starts, first, last block
        for sid, run in runs:
            first_block = len(blocks)
            current: BlockBuilder | None = None
            await asyncio.sleep(0)  # one stream's run at a time, then let clients in
            for r in run:
                block = block_of(r)
                for start, end in batch_spans(block):
                    batch = block[start:end]
                    base = int.from_bytes(batch[0:8], "big", signed=True)
                    last = base + int.from_bytes(batch[23:27], "big", signed=True)
                    max_ts = int.from_bytes(batch[35:43], "big", signed=True)
                    if current is None or current.size + len(batch) > self.config.block_bytes:
                        # Blocks tile the run exactly: a range key compaction
                        # left wider than its batches (offsets whose records
                        # went) keeps covering them, so reads find no gap.
                        begin = run[0].start_offset if current is None else current.end_offset
                        current = BlockBuilder(sid, begin, last + 1, max_ts, [], 0)
                        blocks.append(current)
                    current.add(batch, last + 1, max_ts)
            if current is None:  # no batch left in the run (all its records compacted away)
                ts = max(r.max_timestamp for r in run)
                current = BlockBuilder(sid, run[0].start_offset, run[-1].end_offset, ts, [], 0)
                blocks.append(current)
            current.end_offset = run[-1].end_offset
            plan.append((sid, [r.start_offset for r in run], first_block, len(blocks)))
        if not blocks:
            return
        labels = labels_of(self._label, {b.stream_id for b in blocks})
        # Not assembled here: a file store writes the batches' buffers with
        # writev, another store joins them off the event loop (a round is up
        # to compaction.max.bytes, which copied on the loop stalled clients).
        payload, entries, size = object_parts(blocks, labels)
        self._seq += 1
        key = (
            f"compacted/{self.node_id}/{int(time.time() * 1000):013d}-{os.getpid()}-"
            f"{self._seq:08d}.obj"
        )
        self.uploading.add(key)
        try:
            await self.store.put(key, payload)
            await self._swap(key, size, kind, plan, entries, result, sources)
        finally:
            self.uploading.discard(key)

    async def _swap(
        self,
        key: str,
        size: int,
        kind: str,
        plan: list[tuple[int, list[int], int, int]],
        entries: list[BlockEntry],
        result: CompactionResult,
        sources: list[str],
    ) -> None:
        replacements = []
        new_by_stream: dict[int, list[RangeRecord]] = {}
        for sid, old_starts, lo, hi in plan:
            new = [
                RangeCommit(
                    sid, 0, e.start_offset, e.end_offset, e.position, e.size, e.max_timestamp
                )
                for e in entries[lo:hi]
            ]
            replacements.append((sid, old_starts, new))
            new_by_stream.setdefault(sid, []).extend(
                RangeRecord(
                    sid, x.start_offset, x.end_offset, key, x.position, x.size, x.max_timestamp
                )
                for x in new
            )
        done = await self.meta.replace_ranges(
            key,
            size,
            self.node_id,
            kind,
            replacements,
            self.config.delete_grace_ms,
            sources,
        )
        old: dict[int, list[int]] = {}
        for sid, starts, _lo, _hi in plan:  # a stream may come in several runs
            old.setdefault(sid, []).extend(starts)
        for sid in done:
            self.on_change(sid, old[sid], new_by_stream[sid])
        result.objects_out += 1
        result.streams += len(done)


def _contiguous(ranges: list[RangeRecord]) -> list[list[RangeRecord]]:
    runs: list[list[RangeRecord]] = []
    for r in ranges:
        if runs and runs[-1][-1].end_offset == r.start_offset:
            runs[-1].append(r)
        else:
            runs.append([r])
    return runs


def _packs(
    runs: list[tuple[int, list[RangeRecord]]], target: int
) -> list[list[tuple[int, list[RangeRecord]]]]:
    """Small runs of many streams packed into shared objects of about
    `target` bytes (a tail under half of it joins the pack before), so
    merged objects leave the small tiers instead of growing without end."""
    packs: list[list[tuple[int, list[RangeRecord]]]] = []
    size = target
    for sid, run in runs:
        if size >= target:
            packs.append([])
            size = 0
        packs[-1].append((sid, run))
        size += sum(r.size for r in run)
    if len(packs) > 1 and size < target // 2:
        packs[-2].extend(packs.pop())
    return packs


def _pieces(run: list[RangeRecord], target: int) -> list[list[RangeRecord]]:
    """A long run cut at range boundaries (a range is swapped whole) into
    pieces of about `target` bytes; a tail under half of it joins the piece
    before, rather than becoming a small object of its own."""
    pieces: list[list[RangeRecord]] = [[]]
    size = 0
    for r in run:
        if size >= target:
            pieces.append([])
            size = 0
        pieces[-1].append(r)
        size += r.size
    if len(pieces) > 1 and size < target // 2:
        pieces[-2].extend(pieces.pop())
    return pieces
