"""Ingest into the embedded broker's log: batch records per topic, pick the
partition by key, append, and resolve each record's future once the batch is
durable (committed to the local object store and SQLite).

One appender task per topic serialises appends, so records of one key keep
their arrival order in the log; batching over `local.linger_ms` turns many
small MQTT messages into few appends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shoal.broker.broker import Broker
from shoal.broker.topics import Topic
from shoal.edge.config import EdgeConfig
from shoal.edge.lanes import Lanes
from shoal.protocol.batches import BatchBuilder, Header
from shoal.protocol.records import validate_batches

log = logging.getLogger("shoal.edge.ingest")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's default partitioner hash)."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    n4 = length // 4
    for i in range(n4):
        i4 = i * 4
        k = data[i4] | (data[i4 + 1] << 8) | (data[i4 + 2] << 16) | (data[i4 + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    base = n4 * 4
    if rest == 3:
        h ^= data[base + 2] << 16
    if rest >= 2:
        h ^= data[base + 1] << 8
    if rest >= 1:
        h ^= data[base]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class IngestRejected(Exception):
    """The record cannot be taken (lane full and not willing to wait)."""


@dataclass(slots=True)
class _Pending:
    records: list[tuple[int, bytes | None, bytes | None, Sequence[Header]]] = field(
        default_factory=list
    )
    futures: list[asyncio.Future[None]] = field(default_factory=list)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


class LocalLog:
    def __init__(self, broker: Broker, config: EdgeConfig, lanes: Lanes) -> None:
        self.broker = broker
        self.config = config
        self.lanes = lanes
        self._pending: dict[str, _Pending] = {}
        self._queues: dict[str, asyncio.Queue[_Pending | None]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._key_partition: dict[tuple[str, bytes], int] = {}
        self._round_robin = itertools.count()
        self.records_in = 0
        self.bytes_in = 0
        self.appends = 0
        self.append_errors = 0
        self._closing = False

    async def ensure_topic(self, name: str) -> Topic:
        topic = await self.broker.topics.get_or_create(name)
        if topic is None:  # auto-creation is always on in the embedded broker
            raise IngestRejected(f"topic {name!r} cannot be created")
        return topic

    def submit(
        self,
        topic: str,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[Header] = (),
    ) -> asyncio.Future[None]:
        """Queue one record; the future resolves when it is durable locally.
        Synchronous so that callers (the MQTT reader) keep their order."""
        if self._closing:
            raise IngestRejected("gateway is stopping")
        p = self._pending.get(topic)
        if p is None:
            p = self._pending[topic] = _Pending()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        p.records.append((timestamp, key, value, headers))
        p.futures.append(fut)
        p.size += len(value or b"") + len(key or b"") + 16
        if len(p.records) >= self.config.local.max_batch_records:
            self._flush(topic)
        elif p.timer is None:
            p.timer = asyncio.get_running_loop().call_later(
                self.config.local.linger_ms / 1000, self._flush, topic
            )
        return fut

    def _flush(self, topic: str) -> None:
        p = self._pending.pop(topic, None)
        if p is None:
            return
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None
        q = self._queues.get(topic)
        if q is None:
            q = self._queues[topic] = asyncio.Queue()
            self._tasks[topic] = asyncio.create_task(self._appender(topic, q))
        q.put_nowait(p)

    async def _appender(self, topic: str, q: asyncio.Queue[_Pending | None]) -> None:
        while True:
            p = await q.get()
            if p is None:
                return
            try:
                await self._append(topic, p)
            except Exception as exc:
                self.append_errors += 1
                log.warning("append to local topic %s failed: %s", topic, exc)
                for f in p.futures:
                    if not f.done():
                        f.set_exception(exc)

    async def _append(self, topic_name: str, p: _Pending) -> None:
        topic = await self.ensure_topic(topic_name)
        n = len(topic.partitions)
        lane = self.lanes.lane_of(topic_name)
        await lane.wait_room(p.size)
        # A full disk holds ingest (and so MQTT acks) instead of failing it.
        await self.broker.engine.disk.wait_writable()
        by_part: dict[int, tuple[BatchBuilder, list[asyncio.Future[None]]]] = {}
        cache = self._key_partition
        for rec, fut in zip(p.records, p.futures, strict=True):
            key = rec[1]
            if n == 1:
                part = 0
            elif key is None:
                part = next(self._round_robin) % n
            else:
                ck = (topic_name, key)
                part_or_none = cache.get(ck)
                if part_or_none is None:
                    if len(cache) > 200_000:
                        cache.clear()
                    part_or_none = cache[ck] = partition_for_key(key, n)
                part = part_or_none
            entry = by_part.get(part)
            if entry is None:
                entry = by_part[part] = (BatchBuilder(), [])
            entry[0].append(*rec)
            entry[1].append(fut)
        max_bytes = self.broker.topics.max_message_bytes(topic)
        for part, (builder, futs) in sorted(by_part.items()):
            data = builder.build()
            batches = validate_batches(data, max(max_bytes, len(data)))
            prec = topic.partitions[part]
            done = await self.broker.engine.append(prec.stream_id, batches, prec.leader_epoch)
            self.appends += 1
            self.records_in += len(futs)
            self.bytes_in += len(data)
            self.lanes.add_appended(topic_name, len(data))
            done.add_done_callback(_resolver(futs))

    async def close(self) -> None:
        """Flush what is pending and wait for it to be appended."""
        self._closing = True
        for topic in list(self._pending):
            self._flush(topic)
        for q in self._queues.values():
            q.put_nowait(None)
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=30)


def _resolver(futs: list[asyncio.Future[None]]) -> Callable[[asyncio.Future[int]], None]:
    def resolve(done: asyncio.Future[int]) -> None:
        exc = None if done.cancelled() else done.exception()
        if done.cancelled():
            exc = asyncio.CancelledError()
        for f in futs:
            if f.done():
                continue
            if exc is None:
                f.set_result(None)
            else:
                f.set_exception(exc)

    return resolve
