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
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shoal.config import default
from shoal.meta.store import MetaStore, Range
from shoal.storage.errors import ObjectNotFound
from shoal.storage.format import Labeler, labels_of
from shoal.storage.merging import MergePolicy, mostly_dead, plan_merge
from shoal.storage.objectstore import ObjectStore
from shoal.storage.rewrite import InProcess, Job, Rewriter, Round, Written

log = logging.getLogger("shoal.compaction")


@dataclass(frozen=True, slots=True)
class CompactionConfig:
    """The compaction.* keys (defaults from config.py's catalogue)."""

    min_age_ms: int = default("compaction.min.age.ms")
    #: WAL objects a round takes (no key; max_bytes bounds the data). A
    #: round's work on the event loop and in the metadata store goes with
    #: the streams it swaps, whatever the number of objects: at a fleet's
    #: small WAL objects (10,000 streams in each 256 of them) rounds of 256
    #: swapped every stream again and again, and 30 s of backlog took 20
    #: rounds back to back (docs/BENCHMARKS.md).
    max_objects: int = 4096
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
    #: build and write the new objects in a child process (rewrite.py); off
    #: by default for engines used as a library, on in a broker (the key)
    process: bool = False

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


# stream id, its old ranges' starts, its new ranges: so that the engine
# updates what it serves from
RangesChanged = Callable[[int, list[int], Sequence[Range]], None]


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
        rewriter: Rewriter | None = None,
    ) -> None:
        #: builds and writes the new objects: in this process, or in a child
        self.rewriter = rewriter if rewriter is not None else InProcess(store)
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
        monotonic clock passes `until`. A round takes max_objects, and
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
        done = await self._rewrite(keys, self.config.max_bytes, None, None, result)
        chosen = done.chosen
        # WAL objects with no range left (all trimmed, or only empty) still
        # need scheduling: replace_ranges did that for the swapped ones.
        result.objects_in = len(chosen)
        result.bytes_in = done.bytes_in
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
        # An object is read whole (one GET) unless it holds more dead bytes
        # than live and at least a block of them; of those only the live
        # ranges are read (a GET each). A small object read range by range
        # would cost a request per live range to save less than a block.
        whole = [
            o.key for o in chosen if 2 * o.live >= o.size or o.size - o.live < policy.min_dead_bytes
        ]
        try:
            done = await self._rewrite(keys, None, whole, policy.target, result)
        except ObjectNotFound as exc:
            # Trimmed empty and deleted since it was listed: the next round
            # plans again without it.
            log.info("merge round skipped: %s", exc)
            return result
        result.objects_in = len(chosen)
        result.bytes_in = sum(o.size for o in chosen)
        result.bytes_live = done.bytes_in
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

    async def _rewrite(
        self,
        candidates: list[str],
        max_bytes: int | None,
        whole: list[str] | None,
        pack_bytes: int | None,
        result: CompactionResult,
    ) -> Round:
        """Have the round planned and its objects written (rewrite.py), then
        swap each one's ranges in, in order. Until its swap an object is an
        upload in flight (its key's prefix is in `uploading`), which the
        cleaner leaves alone."""
        found = await self.meta.range_rows(candidates)
        self._seq += 1
        prefix = (
            f"compacted/{self.node_id}/{int(time.time() * 1000):013d}-{os.getpid()}-{self._seq:08d}"
        )
        job = Job(
            found,
            candidates,
            max_bytes,
            whole,
            pack_bytes,
            self.config.block_bytes,
            self.config.stream_object_bytes,
            self.meta.swap_chunk_ranges if self.meta.is_sqlite else None,
            prefix,
            labels_of(self._label, json.loads(found.streams)),
        )
        self.uploading.add(prefix + "-")
        try:
            done = await self.rewriter.run(job)
            for written in done.written:
                await self._swap(written, result)
        finally:
            self.uploading.discard(prefix + "-")
        return done

    async def _swap(self, written: Written, result: CompactionResult) -> None:
        swapped = await self.meta.swap_prepared(
            written.key,
            written.size,
            self.node_id,
            written.kind,
            written.swap,
            self.config.delete_grace_ms,
        )
        # What this broker serves from, a stream at a time, letting clients
        # in every 100 streams (a round swaps thousands; every 1,000, a
        # slice of 5-6 ms held up each WAL commit cycle it fell into).
        key = written.key
        for n, (sid, starts, news) in enumerate(written.swap.columns.of_streams(swapped)):
            self.on_change(
                sid,
                starts,
                [(sid, a, b, key, p, size, ts) for a, b, p, size, ts in news],
            )
            if n % 100 == 99:
                await asyncio.sleep(0)
        result.objects_out += 1
        result.streams += len(swapped)
