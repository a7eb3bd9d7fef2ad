"""The write-ahead log on object storage.

Appends from every partition of the broker go into one open buffer. The buffer
is sealed into one object when it reaches `wal.max.bytes` or when its oldest
append is `wal.linger.ms` old; on a local store (`eager`) also as soon as no
other flush is in progress, so a lone append never waits for the linger; on
a remote one also once it holds `wal.idle.seal.bytes` and appends pause (a
producer waiting for its answer sends nothing more however long it lingers).
Sealed buffers upload concurrently (up to `wal.max.inflight`) but commit
strictly in order, by one committer: it takes every uploaded object at the
head of the queue and records them all in one metadata transaction (group
commit), which advances every stream in them. Only then are the appends'
futures resolved: an acknowledgement means durable.

On a local store with a SQLite file (eager), a small object is not uploaded
on its own: the commit's thread writes its file and then runs the
transaction, in one hop. With librdkafka's pattern (one request per
partition, a few at a time) an object holds a handful of requests, and each
hop to a thread and back is a fixed cost of every object.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shoal.meta.store import (
    AbortedTxn,
    MetaStore,
    ObjectCommit,
    ProducerRow,
    RangeCommit,
    StreamFenced,
)
from shoal.storage.diskspace import DiskGuard
from shoal.storage.errors import Fenced, ObjectExists, StorageError
from shoal.storage.format import BlockBuilder, Labeler, labels_of, object_parts
from shoal.storage.objectstore import ObjectStore, Payload
from shoal.storage.producers import ProducerEntry

log = logging.getLogger("shoal.wal")

MAX_GROUP = 64  # objects per group commit
#: Objects up to this size are written in the commit's thread when the store
#: allows it (see the module's docstring); larger ones upload concurrently,
#: overlapping the commit before them.
FUSED_MAX_BYTES = 1 << 20
#: How long appends must pause before a buffer of WalConfig.idle_seal_bytes
#: is sealed ahead of its linger.
IDLE_SEAL_MS = 2.0


@dataclass(frozen=True, slots=True)
class WalConfig:
    max_bytes: int = 8 * 1024 * 1024
    linger_ms: float = 5.0
    max_inflight: int = 4
    buffer_max_bytes: int = 64 * 1024 * 1024
    retry_backoff_ms: float = 50.0
    #: Seal as soon as nothing is uploading or committing, lingering only
    #: behind a flush in progress: right for stores where a PUT costs nothing
    #: (file, memory); remote stores keep the linger, where each PUT is paid.
    eager: bool = False
    retry_backoff_max_ms: float = 5000.0
    #: A lingering buffer holding at least this many bytes is sealed once no
    #: append has come for IDLE_SEAL_MS (0: never): a producer that sends one
    #: request and waits for its answer (librdkafka's idempotent producer,
    #: with more than a few records in flight) adds nothing while the linger
    #: runs, so it would wait out the linger on every request. Costs at most
    #: one PUT per this many bytes.
    idle_seal_bytes: int = 0


@dataclass(slots=True)
class Append:
    stream_id: int
    epoch: int
    base: int
    end: int  # exclusive
    data: bytes
    max_ts: int
    #: resolves to `base` once committed
    future: asyncio.Future[int]
    producer_id: int = -1
    #: an abort marker: the first offset of the transaction it ends (else -1)
    aborted_first: int = -1
    #: a marker asked for through the metadata store: its txn_markers row
    marker_row: int = -1
    #: The stream's producer table when this was appended. The commit
    #: persists the producers' sequences from it, not from whatever the
    #: engine holds by then: a stream dropped while this append was in
    #: flight (a lapsed lease) must still record the sequences its commit
    #: makes durable, or the reopened stream takes a retry for new data.
    producers: dict[int, ProducerEntry] | None = None


@dataclass(slots=True)
class _Buffer:
    seq: int
    appends: list[Append] = field(default_factory=list)
    size: int = 0
    timer: asyncio.Handle | None = None
    #: the check for a pause in appends (WalConfig.idle_seal_bytes)
    idle: asyncio.TimerHandle | None = None
    key: str = ""
    object_size: int = 0
    blocks: dict[int, BlockBuilder] = field(default_factory=dict)
    uploaded: bool = False
    failed: BaseException | None = None
    #: the object's PUT, for the commit's thread to run first (local stores)
    write: Callable[[], None] | None = None


CommitCallback = Callable[[str, list[RangeCommit], list[Append]], None]
# (stream id, committed end offset, producer ids, the appends' producer
# table) -> rows to persist with the commit
ProducerRows = Callable[[int, int, set[int], dict[int, ProducerEntry]], list[ProducerRow]]


class Wal:
    def __init__(
        self,
        store: ObjectStore,
        meta: MetaStore,
        node_id: int,
        config: WalConfig,
        on_commit: CommitCallback,
        on_fenced: Callable[[int], None],
        producer_rows: ProducerRows | None = None,
        uploading: set[str] | None = None,
        disk: DiskGuard | None = None,
        label: Labeler | None = None,
    ) -> None:
        self.store = store
        self._label = label
        self.disk = disk if disk is not None else DiskGuard()
        self.uploading = uploading if uploading is not None else set()
        self.meta = meta
        self.node_id = node_id
        self.config = config
        self._on_commit = on_commit
        self._on_fenced = on_fenced
        self._producer_rows = producer_rows
        # Small objects are written in the commit's thread (one hop): only
        # where a PUT is a local file write and the commit runs in a thread.
        self._fused = config.eager and meta.sqlite_commits is not None
        if config.eager:
            store.make_spares_ahead()  # each acknowledgement waits on its PUT
        self._seq = 0
        self._buffer = _Buffer(0)
        self._idle_seal = 0 if config.eager else config.idle_seal_bytes
        self._last_add = 0.0  # loop time of the last append, once idle sealing is armed
        self._inflight = asyncio.Semaphore(config.max_inflight)
        self._sealed: deque[_Buffer] = deque()  # in seq order, until committed
        self._uploads: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self.unflushed = 0
        self._room = asyncio.Condition()
        self._prefix = f"wal/{node_id}/{int(time.time() * 1000):013d}-{os.getpid()}"
        self.objects_committed = 0
        self.bytes_committed = 0
        self.group_commits = 0
        self.upload_retries = 0

    def has_room(self, size: int) -> bool:
        return self.unflushed + size <= self.config.buffer_max_bytes

    async def wait_for_room(self, size: int) -> None:
        """Back-pressure: hold new appends while unflushed bytes are over the
        bound. One append larger than the bound still goes in alone."""
        if self.has_room(size):
            return
        async with self._room:
            await self._room.wait_for(
                lambda: self.unflushed == 0 or self.unflushed + size <= self.config.buffer_max_bytes
            )

    def add(self, append: Append) -> None:
        """Synchronous, so offsets are handed out in the caller's order."""
        buf = self._buffer
        buf.appends.append(append)
        buf.size += len(append.data)
        self.unflushed += len(append.data)
        if buf.size >= self.config.max_bytes:
            self.seal()
        elif buf.timer is None:
            loop = asyncio.get_running_loop()
            if self.config.eager and not self._sealed:
                # Nothing in flight: flush now, with whatever else this event
                # loop turn appends (the other partitions of the same request).
                buf.timer = loop.call_soon(self.seal)
            else:
                # A flush is in progress: gather behind it (group commit).
                buf.timer = loop.call_later(self.config.linger_ms / 1000, self.seal)
        if self._idle_seal and buf.size >= self._idle_seal and buf is self._buffer:
            loop = asyncio.get_running_loop()
            self._last_add = loop.time()
            if buf.idle is None:
                buf.idle = loop.call_later(IDLE_SEAL_MS / 1000, self._seal_if_idle, buf)

    def _seal_if_idle(self, buf: _Buffer) -> None:
        """Seal a large enough buffer once appends have paused."""
        buf.idle = None
        if buf is not self._buffer:
            return  # sealed meanwhile
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_add
        wait = IDLE_SEAL_MS / 1000 - quiet
        if wait <= 0:
            self.seal()
        else:
            buf.idle = loop.call_later(wait, self._seal_if_idle, buf)

    def seal(self) -> None:
        buf = self._buffer
        if buf.timer is not None:
            buf.timer.cancel()
        if buf.idle is not None:
            buf.idle.cancel()
            buf.idle = None
        if not buf.appends:
            return
        self._seq += 1
        self._buffer = _Buffer(self._seq)
        self._sealed.append(buf)
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_loop())
        key = f"{self._prefix}-{buf.seq:010d}.wal"
        if self._fused and buf.size <= FUSED_MAX_BYTES and self.store.writes_locally(key):
            self._write_in_commit(buf, key)
            return
        task = asyncio.create_task(self._upload(buf, key))
        self._uploads.add(task)
        task.add_done_callback(self._uploads.discard)

    async def close(self, timeout: float = 30.0) -> None:
        """Seal and commit everything pending (graceful shutdown)."""
        self.seal()
        if self._committer is not None:
            done, _pending = await asyncio.wait([self._committer], timeout=timeout)
            if not done:
                self._committer.cancel()
        for t in list(self._uploads):
            t.cancel()
        if self.config.eager:
            # Their descriptors are the process's until closed: an engine
            # closed and made again (tests, a restarted gateway) kept 128 each.
            await asyncio.to_thread(self.store.stop_spares_ahead)

    # upload --------------------------------------------------------------

    def _write_in_commit(self, buf: _Buffer, key: str) -> None:
        """Build the object now and leave its PUT to the commit's thread."""
        try:
            data, size = self._encode(buf)
        except Exception as exc:  # the committer fails its appends (as _upload's)
            buf.failed = exc
        else:
            buf.key, buf.object_size = key, size
            buf.write = self.store.local_put(key, data)
            self.uploading.add(key)
            buf.uploaded = True
        self._wakeup.set()

    async def _upload(self, buf: _Buffer, key: str) -> None:
        try:
            async with self._inflight:
                parts, buf.object_size = self._encode(buf)
                buf.key = key
                self.uploading.add(buf.key)
                # A remote store takes one buffer: joined once here (off the
                # loop), not again by every retry's put.
                data: Payload = (
                    parts
                    if self.store.writes_locally(key)
                    else await asyncio.to_thread(b"".join, parts)
                )
                await self._retry(
                    lambda: self._put_once(buf.key, data), f"upload {buf.key}", "objects"
                )
            buf.uploaded = True
        except BaseException as exc:
            buf.failed = exc
            raise
        finally:
            self._wakeup.set()

    async def _put_once(self, key: str, data: Payload) -> None:
        try:
            await self.store.put(key, data)
        except ObjectExists:
            # Keys are unique to this process, so an earlier attempt whose
            # answer was lost already wrote it.
            pass

    def _encode(self, buf: _Buffer) -> tuple[list[bytes | memoryview], int]:
        """The object's buffers and its size."""
        blocks = buf.blocks
        for a in buf.appends:
            b = blocks.get(a.stream_id)
            if b is None:
                blocks[a.stream_id] = BlockBuilder(
                    a.stream_id, a.base, a.end, a.max_ts, [a.data], len(a.data)
                )
            else:
                b.add(a.data, a.end, a.max_ts)
        parts, _entries, size = object_parts(list(blocks.values()), labels_of(self._label, blocks))
        return parts, size

    # commit --------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while self._sealed:
            head = self._sealed[0]
            if head.failed is not None:
                self._sealed.popleft()
                self.uploading.discard(head.key)
                self._fail(head, head.failed)
                continue
            if not head.uploaded:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            group: list[_Buffer] = []
            for buf in self._sealed:
                if not buf.uploaded or len(group) >= MAX_GROUP:
                    break
                group.append(buf)
            try:
                await self._commit_group(group)
            except BaseException as exc:
                for buf in group:
                    self._fail(buf, exc)
                raise
            finally:
                for buf in group:
                    self._sealed.popleft()
                    self.uploading.discard(buf.key)
                for buf in group:
                    self.unflushed -= buf.size
                if self.config.eager and not self._sealed and self._buffer.appends:
                    self.seal()  # what gathered behind this flush goes now
                async with self._room:
                    self._room.notify_all()

    def _fail(self, buf: _Buffer, exc: BaseException) -> None:
        err = exc if isinstance(exc, StorageError) else StorageError(str(exc))
        for a in buf.appends:
            if not a.future.done():
                a.future.set_exception(err)

    async def _commit_group(self, group: list[_Buffer]) -> None:
        fenced: set[int] = set()
        writes = [buf.write for buf in group if buf.write is not None]
        before = functools.partial(_write_all, writes) if writes else None
        while True:
            objects = [self._object_commit(buf, fenced) for buf in group]
            try:
                await self._retry(
                    functools.partial(self.meta.commit_objects, objects, self.node_id, before),
                    f"commit {group[0].key}..{group[-1].key}",
                    "metadata",
                    retry_on=(Exception,),
                    give_up_on=(StreamFenced,),
                    also_ok="objects" if writes else None,
                )
                break
            except StreamFenced as exc:
                # Drop the fenced stream and commit the rest of the objects.
                log.warning("stream %d fenced while committing WAL objects: %s", exc.stream_id, exc)
                fenced.add(exc.stream_id)
                self._on_fenced(exc.stream_id)
        self.group_commits += 1
        for buf, obj in zip(group, objects, strict=True):
            appends = [a for a in buf.appends if a.stream_id not in fenced]
            for a in buf.appends:
                if a.stream_id in fenced and not a.future.done():
                    a.future.set_exception(Fenced(f"stream {a.stream_id} has a new owner"))
            self.objects_committed += 1
            self.bytes_committed += buf.object_size
            self._on_commit(buf.key, list(obj.ranges), appends)
            for a in appends:
                if not a.future.done():
                    a.future.set_result(a.base)

    def _object_commit(self, buf: _Buffer, fenced: set[int]) -> ObjectCommit:
        epochs = {a.stream_id: a.epoch for a in buf.appends}
        ranges = []
        position = 0
        for sid, b in buf.blocks.items():
            if sid not in fenced:
                ranges.append(
                    RangeCommit(
                        sid,
                        epochs[sid],
                        b.start_offset,
                        b.end_offset,
                        position,
                        b.size,
                        b.max_timestamp,
                    )
                )
            position += b.size
        aborted = [
            AbortedTxn(a.stream_id, a.producer_id, a.aborted_first, a.base)
            for a in buf.appends
            if a.aborted_first >= 0 and a.stream_id not in fenced
        ]
        done = [
            a.marker_row for a in buf.appends if a.marker_row >= 0 and a.stream_id not in fenced
        ]
        return ObjectCommit(
            buf.key, buf.object_size, ranges, self._producers(buf, fenced), aborted, done
        )

    def _producers(self, buf: _Buffer, fenced: set[int]) -> list[ProducerRow]:
        if self._producer_rows is None:
            return []
        pids: dict[int, set[int]] = {}
        tables: dict[int, dict[int, ProducerEntry]] = {}
        for a in buf.appends:
            if a.producer_id >= 0 and a.stream_id not in fenced and a.producers is not None:
                pids.setdefault(a.stream_id, set()).add(a.producer_id)
                tables[a.stream_id] = a.producers
        rows: list[ProducerRow] = []
        for sid, ids in pids.items():
            rows.extend(self._producer_rows(sid, buf.blocks[sid].end_offset, ids, tables[sid]))
        return rows

    async def _retry(
        self,
        op: Callable[[], Awaitable[object]],
        what: str,
        kind: str,
        retry_on: tuple[type[BaseException], ...] = (StorageError,),
        give_up_on: tuple[type[BaseException], ...] = (),
        also_ok: str | None = None,
    ) -> None:
        """Retry with capped exponential backoff and full jitter; the requests
        waiting on this flush time out on their own deadlines meanwhile. A
        failure for lack of space turns new writes away (DiskGuard) until a
        write of the same `kind` goes through. `also_ok`: a second kind the
        operation writes (a commit that writes its objects first); its
        failures are the store's errors (StorageError)."""
        delay = self.config.retry_backoff_ms
        attempt = 0
        while True:
            try:
                await op()
                self.disk.write_ok(kind)
                if also_ok is not None:
                    self.disk.write_ok(also_ok)
                return
            except give_up_on:
                raise
            except retry_on as exc:
                attempt += 1
                self.upload_retries += 1
                failed = also_ok if also_ok and isinstance(exc, StorageError) else kind
                full = self.disk.write_failed(failed, exc)
                if (attempt == 1 and not full) or attempt % 20 == 0:
                    log.warning("%s failed (attempt %d), retrying: %s", what, attempt, exc)
                await asyncio.sleep(random.uniform(0, delay) / 1000)
                delay = min(delay * 2, self.config.retry_backoff_max_ms)


def _write_all(writes: list[Callable[[], None]]) -> None:
    """A group's object PUTs, in the commit's thread before its transaction.
    An object a failed attempt already wrote is there: keys are unique to
    this process (as in `Wal._put_once`)."""
    for write in writes:
        try:
            write()
        except ObjectExists:
            pass
