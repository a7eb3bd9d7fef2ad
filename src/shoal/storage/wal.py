"""The write-ahead log on object storage.

Appends from every partition of the broker go into one open buffer. The buffer
is sealed into one object when it reaches `wal.max.bytes` or when its oldest
append is `wal.linger.ms` old. Sealed buffers upload concurrently (up to
`wal.max.inflight`), but commit strictly in order: each commit is one metadata
transaction that records the object and advances every stream in it. Only then
are the appends' futures resolved, so an acknowledgement means durable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.meta.store import MetaStore, ProducerRow, RangeCommit, StreamFenced
from shoal.storage.errors import Fenced, ObjectExists, StorageError
from shoal.storage.format import BlockBuilder, encode_object
from shoal.storage.objectstore import ObjectStore

log = logging.getLogger("shoal.wal")


@dataclass(frozen=True, slots=True)
class WalConfig:
    max_bytes: int = 8 * 1024 * 1024
    linger_ms: float = 5.0
    max_inflight: int = 4
    buffer_max_bytes: int = 64 * 1024 * 1024
    retry_backoff_ms: float = 50.0
    retry_backoff_max_ms: float = 5000.0


@dataclass(slots=True)
class Append:
    stream_id: int
    epoch: int
    base: int
    end: int  # exclusive
    data: bytes
    max_ts: int
    future: asyncio.Future[None]
    producer_id: int = -1


@dataclass(slots=True)
class _Buffer:
    seq: int
    appends: list[Append] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


CommitCallback = Callable[[str, list[RangeCommit], list[Append]], None]
# (stream id, committed end offset, producer ids) -> rows to persist with the commit
ProducerRows = Callable[[int, int, set[int]], list[ProducerRow]]


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
    ) -> None:
        self.store = store
        self.meta = meta
        self.node_id = node_id
        self.config = config
        self._on_commit = on_commit
        self._on_fenced = on_fenced
        self._producer_rows = producer_rows
        self._seq = 0
        self._buffer = _Buffer(0)
        self._inflight = asyncio.Semaphore(config.max_inflight)
        self._last_commit: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.unflushed = 0
        self._room = asyncio.Condition()
        self._prefix = f"wal/{node_id}/{int(time.time() * 1000):013d}-{os.getpid()}"
        self.objects_committed = 0
        self.bytes_committed = 0
        self.upload_retries = 0
        self._closing = False

    async def wait_for_room(self, size: int) -> None:
        """Back-pressure: hold new appends while unflushed bytes are over the
        bound. One append larger than the bound still goes in alone."""
        if self.unflushed + size <= self.config.buffer_max_bytes:
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
            buf.timer = asyncio.get_running_loop().call_later(
                self.config.linger_ms / 1000, self.seal
            )

    def seal(self) -> None:
        buf = self._buffer
        if buf.timer is not None:
            buf.timer.cancel()
        if not buf.appends:
            return
        self._seq += 1
        self._buffer = _Buffer(self._seq)
        previous = self._last_commit
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_commit = done
        task = asyncio.create_task(self._flush(buf, previous, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, timeout: float = 30.0) -> None:
        """Seal and commit everything pending (graceful shutdown)."""
        self._closing = True
        self.seal()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def _flush(
        self, buf: _Buffer, previous: asyncio.Future[None] | None, done: asyncio.Future[None]
    ) -> None:
        try:
            async with self._inflight:
                data, blocks = self._encode(buf)
                key = f"{self._prefix}-{buf.seq:010d}.wal"
                await self._retry(lambda: self._put_once(key, data), f"upload {key}")
            if previous is not None:
                await asyncio.shield(previous)
            await self._commit(key, len(data), buf, blocks)
        except BaseException as exc:
            for a in buf.appends:
                if not a.future.done():
                    a.future.set_exception(
                        exc if isinstance(exc, StorageError) else StorageError(str(exc))
                    )
            raise
        finally:
            if not done.done():
                done.set_result(None)
            self.unflushed -= buf.size
            async with self._room:
                self._room.notify_all()

    async def _put_once(self, key: str, data: bytes) -> None:
        try:
            await self.store.put(key, data)
        except ObjectExists:
            # Keys are unique to this process, so an earlier attempt whose
            # answer was lost already wrote it.
            pass

    def _encode(self, buf: _Buffer) -> tuple[bytes, dict[int, BlockBuilder]]:
        blocks: dict[int, BlockBuilder] = {}
        for a in buf.appends:
            b = blocks.get(a.stream_id)
            if b is None:
                blocks[a.stream_id] = BlockBuilder(
                    a.stream_id, a.base, a.end, a.max_ts, [a.data], len(a.data)
                )
            else:
                b.add(a.data, a.end, a.max_ts)
        data, _entries = encode_object(list(blocks.values()))
        return data, blocks

    async def _commit(
        self, key: str, size: int, buf: _Buffer, blocks: dict[int, BlockBuilder]
    ) -> None:
        epochs = {a.stream_id: a.epoch for a in buf.appends}
        appends = buf.appends
        position = 0
        positions: dict[int, int] = {}
        for sid, b in blocks.items():
            positions[sid] = position
            position += b.size
        ranges: list[RangeCommit] = []
        while True:
            ranges = [
                RangeCommit(
                    sid,
                    epochs[sid],
                    b.start_offset,
                    b.end_offset,
                    positions[sid],
                    b.size,
                    b.max_timestamp,
                )
                for sid, b in blocks.items()
            ]
            producers = self._producers(appends, blocks)
            try:
                if ranges:
                    await self._retry(
                        functools.partial(
                            self.meta.commit_object, key, size, self.node_id, ranges, producers
                        ),
                        f"commit {key}",
                        retry_on=(Exception,),
                        give_up_on=(StreamFenced,),
                    )
                break
            except StreamFenced as exc:
                # Drop the fenced stream and commit the rest of the object.
                log.warning("stream %d fenced while committing %s: %s", exc.stream_id, key, exc)
                blocks.pop(exc.stream_id, None)
                self._on_fenced(exc.stream_id)
                kept = []
                for a in appends:
                    if a.stream_id == exc.stream_id:
                        a.future.set_exception(Fenced(str(exc)))
                    else:
                        kept.append(a)
                appends = kept
        self.objects_committed += 1
        self.bytes_committed += size
        self._on_commit(key, ranges, appends)
        for a in appends:
            if not a.future.done():
                a.future.set_result(None)

    def _producers(
        self, appends: list[Append], blocks: dict[int, BlockBuilder]
    ) -> list[ProducerRow]:
        if self._producer_rows is None:
            return []
        pids: dict[int, set[int]] = {}
        for a in appends:
            if a.producer_id >= 0:
                pids.setdefault(a.stream_id, set()).add(a.producer_id)
        rows: list[ProducerRow] = []
        for sid, ids in pids.items():
            if sid in blocks:
                rows.extend(self._producer_rows(sid, blocks[sid].end_offset, ids))
        return rows

    async def _retry(
        self,
        op: Callable[[], object],
        what: str,
        retry_on: tuple[type[BaseException], ...] = (StorageError,),
        give_up_on: tuple[type[BaseException], ...] = (),
    ) -> None:
        """Retry with capped exponential backoff and full jitter; the requests
        waiting on this flush time out on their own deadlines meanwhile."""
        delay = self.config.retry_backoff_ms
        attempt = 0
        while True:
            try:
                result = op()
                if asyncio.iscoroutine(result):
                    await result
                return
            except give_up_on:
                raise
            except retry_on as exc:
                attempt += 1
                self.upload_retries += 1
                if attempt == 1 or attempt % 20 == 0:
                    log.warning("%s failed (attempt %d), retrying: %s", what, attempt, exc)
                await asyncio.sleep(random.uniform(0, delay) / 1000)
                delay = min(delay * 2, self.config.retry_backoff_max_ms)
