"""Streams: append-only sequences of record batches with dense offsets.

This is the engine's public face. It assigns offsets, feeds the WAL, keeps each
stream's committed end (the high watermark), serves reads from the LogCache or
from objects through the BlockCache, and wakes readers waiting for data.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.meta.store import (
    AbortedTxn,
    MetaStore,
    OpenedStream,
    ProducerRow,
    Range,
    RangeCommit,
    RangeRecord,
    StreamFenced,
)
from shoal.protocol.batches import ABORT_MARKER, control_batch, control_type
from shoal.protocol.records import (
    ValidatedBatch,
    batch_spans,
    patch_prefix,
    read_base_offset,
    read_header,
    record_timestamps,
    with_log_append_time,
)
from shoal.storage import producers as producer_state
from shoal.storage.caches import BlockCache, LogCache
from shoal.storage.cleaner import Cleaner
from shoal.storage.compaction import CompactionConfig, Compactor
from shoal.storage.diskspace import DiskGuard
from shoal.storage.errors import (
    BatchBehindEnd,
    Fenced,
    ObjectNotFound,
    OffsetOutOfRange,
    StorageError,
)
from shoal.storage.format import Labeler
from shoal.storage.keycompaction import KeyCompactionPolicy, compact_keys
from shoal.storage.objectstore import ObjectStore
from shoal.storage.producers import BatchMeta, ProducerEntry
from shoal.storage.rangeindex import BlockKey, RangeIndex
from shoal.storage.retention import retention_point
from shoal.storage.rewrite import child_or_in_process
from shoal.storage.throttle import ByteRate
from shoal.storage.wal import Append, Wal, WalConfig

log = logging.getLogger("shoal.streams")

# How long after the last produce append catch-up reads stay paced.
PACE_AFTER_APPEND_S = 2.0

# Streams taken per batched open (each batch is a few statements per chunk
# of ids in the metadata store).
OPEN_BATCH = 10_000

_BASE_AND_DELTA = struct.Struct(">q")
_LAST_DELTA = struct.Struct(">i")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    node_id: int = 0
    wal: WalConfig = field(default_factory=WalConfig)
    compaction: CompactionConfig = field(default_factory=CompactionConfig)
    log_cache_bytes: int = 256 * 1024 * 1024
    log_cache_max_age_ms: int = 300_000  # 0: no age bound
    block_cache_bytes: int = 256 * 1024 * 1024
    readahead_blocks: int = 4
    catchup_bytes_per_s: int = 0  # 0: unlimited
    orphan_grace_ms: int = 600_000
    # Cluster mode: how stale a read replica's view of a stream may get
    # before a read at its end asks the metadata store again.
    reader_refresh_ms: int = 100
    # Local directories whose free space is watched ((kind, path), ...), and
    # the floor below which writes are refused (0: only ENOSPC refuses).
    disk_dirs: tuple[tuple[str, str], ...] = ()
    min_free_bytes: int = 0


@dataclass(slots=True)
class StreamState:
    id: int
    epoch: int
    start_offset: int
    end_offset: int  # committed: the high watermark
    next_offset: int  # handed out to appends not yet committed
    #: columns the collector never traverses (see rangeindex.py); a reader
    #: makes a RangeRecord of the one it reads
    ranges: RangeIndex = field(default_factory=RangeIndex)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    max_timestamp: int = -1
    max_timestamp_offset: int = -1
    closed: bool = False
    producers: dict[int, ProducerEntry] = field(default_factory=dict)
    cleaned_end: int = 0  # key compaction has rewritten the stream up to here
    #: producer id -> first offset of its open transaction (see producers.py)
    open_txns: dict[int, int] = field(default_factory=dict)
    #: aborted transactions, in marker order (read_committed fetches list them)
    aborted: list[AbortedTxn] = field(default_factory=list)

    def set_ranges(self, ranges: Iterable[Range]) -> None:
        """A new index, never the old one changed: a reader may hold it
        across an await."""
        self.ranges = RangeIndex.of(ranges)

    def drop_ranges_below(self, start: int) -> list[BlockKey]:
        """Forget the ranges that end at or below `start` (trimmed);
        returns their blocks."""
        self.ranges, gone = self.ranges.from_offset(start)
        return gone

    @property
    def last_stable_offset(self) -> int:
        """The first offset of the oldest open transaction, or the high
        watermark: read_committed consumers read up to here."""
        if not self.open_txns:
            return self.end_offset
        oldest = max(min(self.open_txns.values()), self.start_offset)
        return min(self.end_offset, oldest)

    def aborted_between(self, start: int, end: int) -> list[AbortedTxn]:
        """Aborted transactions overlapping offsets [start, end)."""
        return [a for a in self.aborted if a.last_offset >= start and a.first_offset < end]

    def end_txn(self, producer_id: int, epoch: int, offset: int, commit: bool, now: int) -> int:
        """A marker at `offset` (ours, or a mirrored one) ends the producer's
        transaction here; an abort joins the list read_committed fetches
        get. The transaction's first offset, -1 if none was open."""
        first = producer_state.end_txn(self.producers, producer_id, epoch, offset, now)
        self.open_txns.pop(producer_id, None)
        if not commit and first >= 0:
            self.aborted.append(AbortedTxn(self.id, producer_id, first, offset))
        return first


# An append waiting for its stream's open: (batches, leader epoch, log
# append time, the future append returned).
_Queued = tuple[Sequence[ValidatedBatch], int, "int | None", "asyncio.Future[int]"]


@dataclass(frozen=True, slots=True)
class ReadResult:
    chunks: list[bytes | memoryview]
    high_watermark: int
    log_start_offset: int
    last_stable_offset: int = -1


#: A stream's waiters list is swept of futures already done (a long poll
#: that ended on another stream, or gave up) once it holds this many, so a
#: quiet stream polled by many fetches does not collect them without bound.
WAITERS_SWEEP_AT = 16


class StreamEngine:
    def __init__(self, store: ObjectStore, meta: MetaStore, config: EngineConfig) -> None:
        self.store = store
        self.meta = meta
        self.config = config
        self.log_cache = LogCache(
            config.log_cache_bytes, max_age_s=config.log_cache_max_age_ms / 1000
        )
        self.block_cache = BlockCache(config.block_cache_bytes)
        # Objects uploaded by this process and not committed yet (see Cleaner).
        self.uploading: set[str] = set()
        self.disk = DiskGuard(
            {what: Path(path) for what, path in config.disk_dirs}, config.min_free_bytes
        )
        self.wal = Wal(
            store,
            meta,
            config.node_id,
            config.wal,
            self._committed,
            self._fenced,
            self._producer_rows,
            self.uploading,
            self.disk,
            self.label,
        )
        self._streams: dict[int, StreamState] = {}
        # Streams read but not owned (cluster read replicas): never taken.
        self._readers: dict[int, StreamState] = {}
        self._reader_at: dict[int, float] = {}
        # Cluster mode: streams are taken only while assigned to this node.
        self.owner: int | None = None
        # Batched opens (see _request_open): streams waiting to be taken, the
        # futures of their opens, and appends queued behind them in order.
        self._opening: dict[int, asyncio.Future[StreamState]] = {}
        self._open_queue: list[int] = []
        self._opener: asyncio.Task[None] | None = None
        self._queued: dict[int, list[_Queued]] = {}
        self.compactor = Compactor(
            store,
            meta,
            config.node_id,
            config.compaction,
            self._ranges_replaced,
            self.uploading,
            self.label,
            child_or_in_process(store, config.compaction.process),
        )
        self.catchup = ByteRate(config.catchup_bytes_per_s)
        # Catch-up reads are paced only while producers are active: the pacing
        # protects live traffic, and a broker with none lets a backlog go flat out.
        self.last_append = float("-inf")
        # Who owns each stream, written into objects (format.py, labels):
        # set by the broker; a stream's label never changes, so it is cached.
        self.labeler: Labeler | None = None
        self._labels: dict[int, str] = {}
        # Told the id of each stream whose committed end moved (or that went
        # away): fetch sessions mark that partition pending without polling.
        self.on_advance: list[Callable[[int], None]] = []
        self.cleaner = Cleaner(
            store, meta, config.orphan_grace_ms, self.uploading, self.block_cache
        )
        self._prefetching: dict[tuple[str, int], asyncio.Task[None]] = {}
        meta.delete_grace_ms = config.compaction.delete_grace_ms

    def label(self, stream_id: int) -> str | None:
        label = self._labels.get(stream_id)
        if label is None and self.labeler is not None:
            label = self.labeler(stream_id)
            if label is not None:
                self._labels[stream_id] = label
        return label

    async def close(self) -> None:
        await self.disk.stop()
        await self.wal.close()
        await self.compactor.rewriter.close()

    # opening -------------------------------------------------------------

    async def open(self, stream_id: int) -> StreamState:
        """The stream's state, taking the stream (epoch bump) on first use."""
        st = self._streams.get(stream_id)
        if st is not None:
            return st
        return await asyncio.shield(self._request_open(stream_id))

    async def open_all(self, stream_ids: Iterable[int]) -> None:
        """Open, in batched opens, every stream of these not open yet: a
        fetch naming thousands of partitions after a restart would otherwise
        open them one transaction at a time, as it reads them in turn. An
        open that fails is left for that stream's own `open` to report."""
        streams = self._streams
        pending = [self._request_open(sid) for sid in stream_ids if sid not in streams]
        if pending:
            # asyncio.wait, not gather: a fetch cancelled meanwhile must not
            # cancel opens other requests wait on too.
            await asyncio.wait(pending)

    def _request_open(self, stream_id: int) -> asyncio.Future[StreamState]:
        """Queue the stream for the next batched open. Ids asked for while a
        batch is being opened go into the next one, so after a restart the
        first writes to thousands of streams cost a few metadata round trips
        in all, not three per stream, one stream after another."""
        fut = self._opening.get(stream_id)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            fut.add_done_callback(_retrieve)
            self._opening[stream_id] = fut
            self._open_queue.append(stream_id)
            if self._opener is None or self._opener.done():
                self._opener = asyncio.create_task(self._open_loop())
        return fut

    async def _open_loop(self) -> None:
        while self._open_queue:
            batch = self._open_queue[:OPEN_BATCH]
            del self._open_queue[:OPEN_BATCH]
            try:
                opened = await self.meta.open_streams(batch, self.owner)
            except BaseException as exc:
                for sid in batch:
                    self._opened(sid, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for sid in batch:
                res = opened[sid]
                if isinstance(res, StreamFenced):
                    self._opened(sid, Fenced(str(res)))
                elif isinstance(res, OpenedStream):
                    try:
                        st = self._install(res)
                    except Exception as exc:  # e.g. unreadable producer state
                        log.error("stream %d: cannot load its state: %s", sid, exc)
                        self._opened(sid, StorageError(f"stream {sid}: {exc}"))
                    else:
                        self._opened(sid, st)
                else:
                    self._opened(sid, res)

    def _opened(self, stream_id: int, outcome: StreamState | BaseException) -> None:
        """Hand a batched open's outcome to the appends queued behind it, in
        their order, before anything else can append to the stream; then to
        whoever awaits the open."""
        fut = self._opening.pop(stream_id)
        for batches, leader_epoch, append_time, done in self._queued.pop(stream_id, ()):
            # A waiter that gave up (cancelled `done`) still has its append
            # applied, in its place, as a request that timed out would.
            into = None if done.done() else done
            if isinstance(outcome, BaseException):
                if into is not None:
                    into.set_exception(outcome)
                continue
            try:
                self._append_to(outcome, batches, leader_epoch, append_time, into)
            except Exception as exc:
                if into is not None:
                    into.set_exception(exc)
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)

    def _install(self, opened: OpenedStream) -> StreamState:
        rec, ranges = opened.record, opened.ranges
        self._readers.pop(rec.id, None)
        st = StreamState(
            rec.id,
            rec.epoch,
            rec.start_offset,
            rec.end_offset,
            rec.end_offset,
        )
        st.set_ranges(ranges)
        for r in ranges:
            if r.max_timestamp > st.max_timestamp:
                st.max_timestamp = r.max_timestamp
        for row in opened.producers:
            st.producers[row.producer_id] = ProducerEntry.decode(
                row.epoch, row.batches, row.last_timestamp_ms, row.txn_first_offset
            )
            if row.txn_first_offset >= 0:
                st.open_txns[row.producer_id] = row.txn_first_offset
        if st.open_txns:
            log.info("stream %d: %d open transaction(s)", rec.id, len(st.open_txns))
        st.aborted = list(opened.aborted)
        self._streams[rec.id] = st
        log.debug(
            "opened stream %d epoch %d [%d, %d)",
            rec.id,
            st.epoch,
            st.start_offset,
            st.end_offset,
        )
        return st

    def owned(self, stream_id: int) -> bool:
        return stream_id in self._streams

    async def open_reader(self, stream_id: int) -> StreamState:
        """A read-only view of a stream another broker writes: loaded from
        the metadata store without bumping the epoch, refreshed on reads at
        its end (see read_only)."""
        st = self._streams.get(stream_id) or self._readers.get(stream_id)
        if st is not None:
            return st
        rec = await self.meta.read_stream(stream_id)
        ranges = await self.meta.load_ranges(stream_id, rec.start_offset)
        st = StreamState(
            rec.id,
            rec.epoch,
            rec.start_offset,
            rec.end_offset,
            rec.end_offset,
        )
        st.set_ranges(ranges)
        self._readers[stream_id] = st
        self._reader_at[stream_id] = time.monotonic()
        return st

    async def _refresh_reader(self, st: StreamState, force: bool = False) -> None:
        """Catch a read replica up with commits made by the owner."""
        now = time.monotonic()
        if (
            not force
            and now - self._reader_at.get(st.id, 0.0) < self.config.reader_refresh_ms / 1000
        ):
            return
        self._reader_at[st.id] = now
        rec = await self.meta.read_stream(st.id)
        if rec.end_offset > st.end_offset:
            end = st.ranges.end
            known = st.start_offset if end is None else end
            newer = await self.meta.load_ranges(st.id, known)
            st.ranges.extend(r for r in newer if r.start_offset >= known)
            st.end_offset = st.next_offset = rec.end_offset
        if rec.start_offset > st.start_offset:
            st.start_offset = rec.start_offset
            st.drop_ranges_below(st.start_offset)

    async def read_only(
        self, stream_id: int, offset: int, max_bytes: int, at_least_one: bool = True
    ) -> ReadResult:
        """Read without owning: any broker can serve any stream from the store."""
        if stream_id in self._streams:
            return await self.read(stream_id, offset, max_bytes, at_least_one)
        st = await self.open_reader(stream_id)
        if offset >= st.end_offset or offset < st.start_offset:
            await self._refresh_reader(st, force=offset > st.end_offset or offset < st.start_offset)
        if offset < st.start_offset or offset > st.end_offset:
            raise OffsetOutOfRange(offset, st.start_offset, st.end_offset)
        hw = st.end_offset
        if offset == hw:
            return ReadResult([], hw, st.start_offset)
        chunks = await self._read_objects(st, offset, max_bytes, hw, at_least_one)
        return ReadResult(chunks, hw, st.start_offset)

    def forget(self, stream_id: int) -> None:
        """Drop a stream (its topic was deleted, or another broker owns it
        now): readers waiting on it wake up; the next use reopens it."""
        self._readers.pop(stream_id, None)
        self._reader_at.pop(stream_id, None)
        st = self._streams.pop(stream_id, None)
        self.log_cache.drop_stream(stream_id)
        if st is not None:
            st.closed = True
            self._wake(st)
            # Its pending appends leave in an object of their own: a reopened
            # state hands out offsets from the committed end again, and the
            # two must never share one block.
            self.wal.seal()
        self._advanced(stream_id)

    # writing -------------------------------------------------------------

    async def append(
        self,
        stream_id: int,
        batches: Sequence[ValidatedBatch],
        leader_epoch: int,
        log_append_time_ms: int | None = None,
    ) -> asyncio.Future[int]:
        """Assign offsets and hand the batches to the WAL.

        Returns once offsets are assigned (so the caller's order is the log's
        order); the returned future resolves to the first base offset when the
        WAL object holding them is committed.
        """
        self.disk.check()  # before any offset is handed out: nothing half-written
        self.last_append = time.monotonic()
        await self.wal.wait_for_room(sum(len(b.data) for b in batches))
        return self._assign(stream_id, batches, leader_epoch, log_append_time_ms)

    def append_now(
        self,
        stream_id: int,
        batches: Sequence[ValidatedBatch],
        leader_epoch: int,
        log_append_time_ms: int | None = None,
    ) -> asyncio.Future[int] | None:
        """`append` when the WAL has room, without a coroutine of its own (a
        small produce request's cost is mostly such fixed steps); None, having
        done nothing, when the appender must wait for room (use `append`)."""
        if not self.wal.has_room(sum(len(b.data) for b in batches)):
            return None
        self.disk.check()
        self.last_append = time.monotonic()
        return self._assign(stream_id, batches, leader_epoch, log_append_time_ms)

    def _assign(
        self,
        stream_id: int,
        batches: Sequence[ValidatedBatch],
        leader_epoch: int,
        log_append_time_ms: int | None,
    ) -> asyncio.Future[int]:
        st = self._streams.get(stream_id)
        if st is not None:
            return self._append_to(st, batches, leader_epoch, log_append_time_ms)
        # First use: the append waits in the stream's queue and takes its
        # offsets when the batched open lands, so neither this request nor
        # the ones behind it on the connection wait for the open.
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieve)
        self._queued.setdefault(stream_id, []).append(
            (batches, leader_epoch, log_append_time_ms, done)
        )
        self._request_open(stream_id)
        return done

    def _append_to(
        self,
        st: StreamState,
        batches: Sequence[ValidatedBatch],
        leader_epoch: int,
        log_append_time_ms: int | None,
        into: asyncio.Future[int] | None = None,
    ) -> asyncio.Future[int]:
        """append's synchronous part: offsets assigned in call order. `into`,
        if given, is the future to resolve (a queued append's)."""
        if st.closed:
            raise StorageError(f"stream {st.id} is closed")
        loop = asyncio.get_running_loop()
        first = -1
        futures: list[asyncio.Future[int]] = []
        duplicate_of: asyncio.Future[int] | None = None
        now = int(time.time() * 1000)
        for b in batches:
            count = b.record_count
            h = b.header
            meta: BatchMeta | None = None
            if h.producer_id >= 0:
                dup = producer_state.check(
                    st.producers, h.producer_id, h.producer_epoch, h.base_sequence, count
                )
                if dup is not None:
                    # A retry of a batch we already have: answer with its offset.
                    log.info(
                        "stream %d: duplicate batch of producer %d seq %d, offset %d",
                        st.id,
                        h.producer_id,
                        h.base_sequence,
                        dup.base_offset,
                    )
                    if first < 0:
                        first = dup.base_offset
                        duplicate_of = dup.committed
                    continue
                meta = BatchMeta(
                    h.base_sequence,
                    producer_state.next_seq(h.base_sequence, count - 1),
                    st.next_offset,
                    st.next_offset + count - 1,
                )
            body: bytes | bytearray | memoryview = b.data
            max_ts = b.header.max_timestamp
            if log_append_time_ms is not None:
                body = with_log_append_time(b.data, log_append_time_ms)
                max_ts = log_append_time_ms
            data = patch_prefix(st.next_offset, b.header.batch_length, leader_epoch) + body[16:]
            fut: asyncio.Future[int] = loop.create_future()
            self.wal.add(
                Append(
                    st.id,
                    st.epoch,
                    st.next_offset,
                    st.next_offset + count,
                    data,
                    max_ts,
                    fut,
                    h.producer_id,
                    producers=st.producers,
                )
            )
            if meta is not None:
                meta.committed = fut  # resolves to its base offset
                producer_state.record(st.producers, h.producer_id, h.producer_epoch, meta, now)
                if h.is_transactional and producer_state.begin_txn(
                    st.producers, h.producer_id, meta.base_offset
                ):
                    st.open_txns[h.producer_id] = meta.base_offset
            if first < 0:
                first = st.next_offset
            futures.append(fut)
            st.next_offset += count
        if into is None and duplicate_of is None and len(futures) == 1:
            # The usual produce: one new batch, whose commit resolves its
            # future to its base offset, the answer itself.
            return futures[0]
        done: asyncio.Future[int] = loop.create_future() if into is None else into
        if not futures:
            # Only duplicates: resolve once the original is committed.
            if duplicate_of is None or (duplicate_of.done() and not duplicate_of.exception()):
                if not done.done():
                    done.set_result(first)
            else:
                duplicate_of.add_done_callback(
                    lambda f: (
                        None
                        if done.done()
                        else done.set_exception(f.exception())  # type: ignore[arg-type]
                        if f.exception()
                        else done.set_result(first)
                    )
                )
            return done

        def finish(_f: object) -> None:
            if done.done():
                return
            for f in futures:
                if not f.done():
                    return
                if f.exception() is not None:
                    done.set_exception(f.exception())  # type: ignore[arg-type]
                    return
            done.set_result(first)

        for f in futures:
            f.add_done_callback(finish)
        return done

    async def write_marker(
        self,
        stream_id: int,
        producer_id: int,
        producer_epoch: int,
        commit: bool,
        coordinator_epoch: int,
        leader_epoch: int,
        marker_row: int = -1,
    ) -> asyncio.Future[int]:
        """Append a transaction marker for the producer (see control_batch);
        the future resolves to its offset once durable. Written even when the
        producer has no open transaction here, as Kafka does: the marker is
        what tells a client the transaction is over. `marker_row`: the
        txn_markers row asking for it, deleted in the same commit."""
        self.last_append = time.monotonic()
        now = int(time.time() * 1000)
        data = control_batch(producer_id, producer_epoch, commit, coordinator_epoch, now)
        await self.wal.wait_for_room(len(data))
        st = await self.open(stream_id)
        if st.closed:
            raise StorageError(f"stream {stream_id} is closed")
        offset = st.next_offset
        first = st.end_txn(producer_id, producer_epoch, offset, commit, now)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.wal.add(
            Append(
                st.id,
                st.epoch,
                offset,
                offset + 1,
                patch_prefix(offset, len(data) - 12, leader_epoch) + data[16:],
                now,
                fut,
                producer_id,
                first if not commit else -1,
                marker_row,
                producers=st.producers,
            )
        )
        st.next_offset += 1
        log.info(
            "stream %d: %s marker for producer %d epoch %d at %d (transaction from %d)",
            st.id,
            "commit" if commit else "abort",
            producer_id,
            producer_epoch,
            offset,
            first,
        )
        fut.add_done_callback(_retrieve)  # a caller that stops waiting logs nothing
        return fut  # resolves to `offset`, the Append's base

    async def append_at(self, stream_id: int, data: bytes) -> asyncio.Future[int]:
        """Append one batch at the offset it already carries (migration links).

        The bytes are stored as given, header included: offsets, leader epoch
        and producer fields are the source's, so a mirror is byte-identical.
        The base offset may lie past the stream's end (compaction or
        transaction markers left a gap upstream): the committed range then
        starts at the old end and a read in the gap gets the next batch, as
        in Kafka. Producer state follows the source's batches unchecked (the
        source already applied the sequence rules), so an idempotent producer
        continues here after a cutover. A batch ending at or below the end is
        refused (BatchBehindEnd): the caller resumes from `bounds`.
        """
        self.disk.check()
        self.last_append = time.monotonic()
        await self.wal.wait_for_room(len(data))
        st = await self.open(stream_id)
        if st.closed:
            raise StorageError(f"stream {stream_id} is closed")
        h = read_header(data)
        if h.base_offset < st.next_offset:
            raise BatchBehindEnd(
                f"stream {stream_id}: batch at {h.base_offset} is below the end {st.next_offset}"
            )
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        end = h.last_offset + 1
        now = int(time.time() * 1000)
        pid = h.producer_id if h.producer_id >= 0 and not h.is_control else -1
        aborted_first = -1
        if h.is_control and h.producer_id >= 0:
            # The source's transaction marker: it ends the producer's
            # transaction here as a marker written by our coordinator would,
            # so read_committed consumers of the mirror drop aborted records.
            pid = h.producer_id
            commit = control_type(data) != ABORT_MARKER
            first = st.end_txn(pid, h.producer_epoch, h.base_offset, commit, now)
            aborted_first = -1 if commit else first
        self.wal.add(
            Append(
                st.id,
                st.epoch,
                st.next_offset,
                end,
                data,
                h.max_timestamp,
                fut,
                pid,
                aborted_first,
                producers=st.producers,
            )
        )
        st.next_offset = end
        committed = _offset_when_done(fut, h.base_offset)
        if pid >= 0 and h.base_sequence >= 0 and not h.is_control:
            last_seq = producer_state.next_seq(h.base_sequence, h.last_offset_delta)
            meta = BatchMeta(h.base_sequence, last_seq, h.base_offset, h.last_offset, committed)
            producer_state.record(st.producers, pid, h.producer_epoch, meta, now)
            if h.is_transactional and producer_state.begin_txn(st.producers, pid, h.base_offset):
                st.open_txns[pid] = h.base_offset
        return committed

    def _committed(self, key: str, ranges: list[RangeCommit], appends: list[Append]) -> None:
        for r in ranges:
            st = self._streams.get(r.stream_id)
            if st is None:
                continue
            st.ranges.append(r.start_offset, r.end_offset, key, r.position, r.size, r.max_timestamp)
        touched: dict[int, StreamState] = {}
        for a in appends:
            st = self._streams.get(a.stream_id)
            if st is None:
                continue
            st.end_offset = a.end
            if a.max_ts > st.max_timestamp:
                st.max_timestamp = a.max_ts
                st.max_timestamp_offset = -1  # resolved lazily by ListOffsets
            self.log_cache.put(a.stream_id, a.base, a.end, a.data, a.max_ts)
            touched[a.stream_id] = st
        for st in touched.values():
            self._wake(st)
            self._advanced(st.id)

    def _producer_rows(
        self,
        stream_id: int,
        end_offset: int,
        pids: set[int],
        producers: dict[int, ProducerEntry],
    ) -> list[ProducerRow]:
        """Producer state to persist with a commit: only batches the commit
        makes durable, never ones still in flight. `producers` is the table
        the appends were checked against, even if the stream has been
        forgotten since (see Append.producers)."""
        rows = []
        for pid in pids:
            entry = producers.get(pid)
            if entry is None:
                continue
            durable = ProducerEntry(entry.epoch, last_timestamp_ms=entry.last_timestamp_ms)
            for b in entry.batches:
                if b.last_offset < end_offset:
                    durable.batches.append(b)
            txn_first = entry.durable_txn_first(end_offset)
            if durable.batches or entry.prev_txn is not None or txn_first >= 0:
                rows.append(
                    ProducerRow(
                        stream_id,
                        pid,
                        durable.epoch,
                        durable.encode_batches(),
                        durable.last_timestamp_ms,
                        txn_first,
                    )
                )
        return rows

    def _ranges_replaced(self, stream_id: int, old_starts: list[int], new: Sequence[Range]) -> None:
        """Compaction swapped ranges: serve reads from the new object."""
        st = self._streams.get(stream_id)
        if st is None:
            return
        st.ranges, gone = st.ranges.swapped(old_starts, new)
        self._evict_blocks(gone)

    def _evict_blocks(self, blocks: Iterable[BlockKey]) -> None:
        """Cached blocks of ranges no reader can reach any more (swapped out or
        trimmed) would only push live blocks out."""
        for key, position in blocks:
            self.block_cache.evict(key, position)

    def _fenced(self, stream_id: int) -> None:
        """Another writer took the stream: forget our state; the next use reopens."""
        log.warning("stream %d: fenced, dropping local state", stream_id)
        self.forget(stream_id)

    # reading -------------------------------------------------------------

    async def read(
        self,
        stream_id: int,
        offset: int,
        max_bytes: int,
        at_least_one: bool = True,
        committed: bool = False,
    ) -> ReadResult:
        """Whole batches from the one holding `offset`, up to max_bytes. The
        first may exceed max_bytes (so a batch larger than every limit still
        gets through) unless `at_least_one` is off: a fetch filling the rest of
        its response asks for that, rather than reading what it cannot send.
        `committed` (read_committed) stops at the last stable offset."""
        st = await self.open(stream_id)
        done = self._read_in_memory(st, offset, max_bytes, at_least_one, committed)
        if done is not None:
            return done
        hw = st.end_offset
        lso = st.last_stable_offset
        chunks = await self._read_objects(st, offset, max_bytes, hw, at_least_one)
        return ReadResult(_below(chunks, lso if committed else hw), hw, st.start_offset, lso)

    def read_nowait(
        self,
        stream_id: int,
        offset: int,
        max_bytes: int,
        at_least_one: bool = True,
        committed: bool = False,
    ) -> ReadResult | None:
        """`read`'s answer when it needs no I/O and no wait — an open stream
        read at its end or from its tail in the LogCache — else None (then
        await `read`). A fetch naming 10,000 quiet partitions, as librdkafka's
        do (no fetch sessions), reads nearly all of them this way, without a
        coroutine each."""
        st = self._streams.get(stream_id)
        if st is None:
            return None
        return self._read_in_memory(st, offset, max_bytes, at_least_one, committed)

    def _read_in_memory(
        self, st: StreamState, offset: int, max_bytes: int, at_least_one: bool, committed: bool
    ) -> ReadResult | None:
        if offset < st.start_offset or offset > st.end_offset:
            raise OffsetOutOfRange(offset, st.start_offset, st.end_offset)
        hw = st.end_offset
        lso = st.last_stable_offset
        limit = lso if committed else hw
        if offset >= limit:
            return ReadResult([], hw, st.start_offset, lso)
        cached = self.log_cache.read(st.id, offset, max_bytes, at_least_one)
        if cached is not None:
            return ReadResult(_below(list(cached), limit), hw, st.start_offset, lso)
        return None

    async def aborted_between(self, stream_id: int, start: int, end: int) -> list[AbortedTxn]:
        """Aborted transactions overlapping [start, end) (read_committed fetches)."""
        return (await self.open(stream_id)).aborted_between(start, end)

    async def _read_objects(
        self, st: StreamState, offset: int, max_bytes: int, hw: int, at_least_one: bool
    ) -> list[bytes | memoryview]:
        try:
            out = await self._collect_objects(st, offset, max_bytes, hw, at_least_one)
        except ObjectNotFound:
            # An object went away under us (compaction, retention): _block
            # re-resolved the stream's ranges; one more try sees the new layout.
            out = await self._collect_objects(st, offset, max_bytes, hw, at_least_one)
        # Paced by the bytes served, not by the blocks touched: a fetch that
        # stops inside a block re-reads it (cached) next time, and charging the
        # whole block twice held catch-up reads well below the configured rate.
        live = time.monotonic() - self.last_append < PACE_AFTER_APPEND_S
        await self.catchup.take(sum(len(c) for c in out), pace=live)
        return out

    async def _collect_objects(
        self, st: StreamState, offset: int, max_bytes: int, hw: int, at_least_one: bool
    ) -> list[bytes | memoryview]:
        out: list[bytes | memoryview] = []
        total = 0
        while offset < hw and (not out or total < max_bytes):
            index = st.ranges
            i = index.find(offset)
            if i < 0:
                break
            r = index.record(st.id, i)
            block = await self._block(st, r)
            self._readahead(st, index, i + 1)
            for start, end in batch_spans(block):
                last = (
                    _BASE_AND_DELTA.unpack_from(block, start)[0]
                    + _LAST_DELTA.unpack_from(block, start + 23)[0]
                )
                if last < offset:
                    continue
                size = end - start
                if (out or not at_least_one) and total + size > max_bytes:
                    return out
                out.append(block[start:end])
                total += size
            offset = r.end_offset
            if offset < hw and total < max_bytes:
                tail = self.log_cache.read(st.id, offset, max_bytes - total, at_least_one=False)
                if tail is not None:
                    out.extend(tail)
                    break
        return out

    def _readahead(self, st: StreamState, index: RangeIndex, first: int) -> None:
        """Fetch the next blocks in the background: a consumer catching up
        reads them next, and the object store's latency then overlaps."""
        tail = self.log_cache.first_offset(st.id)
        for i in range(first, min(first + self.config.readahead_blocks, len(index))):
            if tail is not None and index.starts[i] >= tail:
                return  # the tail is served from the LogCache
            k = (index.keys[i], index.positions[i])
            if k in self._prefetching or self.block_cache.get(*k, count=False) is not None:
                continue
            task = asyncio.create_task(self._prefetch(index.record(st.id, i)))
            self._prefetching[k] = task
            task.add_done_callback(functools.partial(self._prefetched, k))

    def _prefetched(self, key: tuple[str, int], _task: asyncio.Task[None]) -> None:
        self._prefetching.pop(key, None)

    async def _prefetch(self, r: RangeRecord) -> None:
        try:
            block = await self.store.get_range(r.object_key, r.position, r.position + r.size)
        except StorageError:
            return
        self.block_cache.put(r.object_key, r.position, block)

    async def _block(self, st: StreamState, r: RangeRecord) -> memoryview:
        if r.size == 0:
            return memoryview(b"")
        pending = self._prefetching.get((r.object_key, r.position))
        if pending is not None:
            await asyncio.shield(pending)
        block = self.block_cache.get(r.object_key, r.position)
        if block is not None:
            return block
        try:
            block = await self.store.get_range(r.object_key, r.position, r.position + r.size)
        except ObjectNotFound:
            # The object was replaced (compaction) or trimmed: re-resolve once.
            st.set_ranges(await self.meta.load_ranges(st.id, st.start_offset))
            raise
        self.block_cache.put(r.object_key, r.position, block)
        return block

    # waiting -------------------------------------------------------------

    def watch(self, stream_id: int) -> asyncio.Future[None] | None:
        """A future resolved at the next commit to this stream (long polls)."""
        return self.watch_any((stream_id,))

    def watch_any(self, stream_ids: Iterable[int]) -> asyncio.Future[None] | None:
        """One future resolved at the next commit to any of the streams open
        here (None if none is): a long poll over 10,000 partitions waits on
        one future, not on 10,000. Cancel it when done waiting."""
        streams = self._streams
        watched = [st for sid in stream_ids if (st := streams.get(sid)) is not None]
        if not watched:
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for st in watched:
            waiters = st.waiters
            if len(waiters) >= WAITERS_SWEEP_AT:
                waiters[:] = [w for w in waiters if not w.done()]
            waiters.append(fut)
        return fut

    def position(self, stream_id: int) -> tuple[int, int, int] | None:
        """(log start, high watermark, last stable offset) of a stream open
        here, else None."""
        st = self._streams.get(stream_id)
        if st is None:
            return None
        return st.start_offset, st.end_offset, st.last_stable_offset

    def _advanced(self, stream_id: int) -> None:
        for listener in self.on_advance:
            listener(stream_id)

    @staticmethod
    def _wake(st: StreamState) -> None:
        waiters, st.waiters = st.waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    # offsets ---------------------------------------------------------------

    def log_start(self, stream_id: int) -> int:
        """The log start offset of a stream this broker has open, else -1."""
        st = self._streams.get(stream_id)
        return -1 if st is None else st.start_offset

    async def bounds(self, stream_id: int) -> tuple[int, int]:
        """(log start offset, high watermark)."""
        st = await self.open(stream_id)
        return st.start_offset, st.end_offset

    async def producers(self, stream_id: int) -> dict[int, ProducerEntry]:
        """Producer state of the stream (DescribeProducers)."""
        return dict((await self.open(stream_id)).producers)

    async def last_stable_offset(self, stream_id: int) -> int:
        return (await self.open(stream_id)).last_stable_offset

    async def trim(self, stream_id: int, new_start: int) -> int:
        """Move the log start offset (DeleteRecords); never backwards."""
        st = await self.open(stream_id)
        if new_start > st.end_offset:
            raise OffsetOutOfRange(new_start, st.start_offset, st.end_offset)
        if new_start <= st.start_offset:
            return st.start_offset
        st.start_offset = await self.meta.trim_stream(
            stream_id, new_start, self.config.compaction.delete_grace_ms
        )
        self.log_cache.trim(stream_id, st.start_offset)
        self._evict_blocks(st.drop_ranges_below(st.start_offset))
        st.aborted = [a for a in st.aborted if a.last_offset >= st.start_offset]
        return st.start_offset

    async def apply_retention(
        self, stream_id: int, now_ms: int, retention_ms: int, retention_bytes: int
    ) -> tuple[int, int] | None:
        """Trim by retention; returns (old start, new start) when it moved."""
        st = await self.open(stream_id)
        point = retention_point(
            st.ranges.ends,
            st.ranges.sizes,
            st.ranges.max_timestamps,
            st.start_offset,
            now_ms,
            retention_ms,
            retention_bytes,
        )
        point = min(point, st.end_offset)
        if point <= st.start_offset:
            return None
        old = st.start_offset
        await self.trim(stream_id, point)
        return old, st.start_offset

    async def compact_keys(self, stream_id: int, policy: KeyCompactionPolicy) -> bool:
        """One key-compaction pass (cleanup.policy=compact); True if it ran."""
        st = await self.open(stream_id)
        if not st.ranges:
            return False

        async def read(r: RangeRecord) -> memoryview:
            return await self._block(st, r)

        outcome = await compact_keys(
            self.store,
            self.meta,
            self.config.node_id,
            st.id,
            st.ranges.records(st.id),
            read,
            policy,
            st.cleaned_end,
            self.config.compaction.delete_grace_ms,
            self.uploading,
            st.last_stable_offset,
            list(st.aborted),
            self.label(st.id),
        )
        if outcome is None:
            return False
        old_starts, new, end, _stats = outcome
        self._ranges_replaced(st.id, old_starts, new)
        # The cache holds the batches as written; readers now get the cleaned ones.
        self.log_cache.drop_stream(st.id)
        st.cleaned_end = end
        return True

    def expire_producers(self, cutoff_ms: int) -> int:
        """Forget idle producers' sequence state (producer.id.expiration.ms);
        the metadata rows go in the same round."""
        count = 0
        for st in self._streams.values():
            idle = [
                p
                for p, e in st.producers.items()
                if e.last_timestamp_ms < cutoff_ms and e.txn_first < 0
            ]
            for pid in idle:
                del st.producers[pid]
                count += 1
        return count

    async def offset_for_timestamp(self, stream_id: int, ts: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record with timestamp >= ts."""
        st = await self.open(stream_id)
        for batch in await self._batches_from(st, lambda max_ts: max_ts >= ts):
            stamps = record_timestamps(batch)
            h = read_header(batch)
            if stamps is None:
                return max(h.base_offset, st.start_offset), h.max_timestamp
            for off, t in stamps:
                if t >= ts and off >= st.start_offset:
                    return off, t
        return None

    async def max_timestamp(self, stream_id: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the record with the largest timestamp."""
        st = await self.open(stream_id)
        if st.end_offset == st.start_offset or st.max_timestamp < 0:
            return None
        target = st.max_timestamp
        for batch in await self._batches_from(st, lambda max_ts: max_ts >= target):
            stamps = record_timestamps(batch)
            h = read_header(batch)
            if stamps is None:
                return h.last_offset, h.max_timestamp
            for off, t in stamps:
                if t == target and off >= st.start_offset:
                    return off, t
        return None

    async def _batches_from(self, st: StreamState, want: Callable[[int], bool]) -> list[memoryview]:
        """Batches of the first block (object range or cached tail) whose max
        timestamp satisfies `want`, in offset order. Not a hot path."""
        pred = want
        for r in st.ranges.records(st.id):
            if r.end_offset <= st.start_offset or not pred(r.max_timestamp):
                continue
            block = await self._block(st, r)
            return [
                block[s:e]
                for s, e in batch_spans(block)
                if pred(read_header(block, s).max_timestamp)
            ]
        return []


def _below(chunks: list[bytes | memoryview], limit: int) -> list[bytes | memoryview]:
    """The leading batches that start below `limit` (the last stable offset
    is always a batch boundary: the first batch of a transaction)."""
    for i, c in enumerate(chunks):
        if read_base_offset(c) >= limit:
            return chunks[:i]
    return chunks


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a failure as seen: an open or append nobody awaited any more
    (its request timed out) must not log "exception never retrieved"."""
    if not fut.cancelled():
        fut.exception()


def _offset_when_done(fut: asyncio.Future[int], offset: int) -> asyncio.Future[int]:
    """A future of the batch's base offset that follows its commit."""
    out: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def relay(f: asyncio.Future[int]) -> None:
        if f.cancelled():
            out.cancel()
        elif f.exception() is not None:
            out.set_exception(f.exception())  # type: ignore[arg-type]
        else:
            out.set_result(offset)

    fut.add_done_callback(relay)
    out.add_done_callback(lambda f: f.cancelled() or f.exception())
    return out
