"""aiokafka against the broker: async produce/consume, offsets, and fetch long polling.

aiokafka is the asyncio client: it keeps one Fetch in flight per broker, so a
broker that answers empty fetches at once, or never wakes a waiting fetch when data
arrives, shows up here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from harness import BrokerProcess

TIMEOUT = 15.0
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


@pytest.fixture
async def producer(broker: BrokerProcess) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await asyncio.wait_for(p.start(), TIMEOUT)
    yield p
    await asyncio.wait_for(p.stop(), TIMEOUT)


async def new_consumer(bootstrap: str, **conf: Any) -> AIOKafkaConsumer:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **conf)
    await asyncio.wait_for(c.start(), TIMEOUT)
    return c


async def consume(
    bootstrap: str, topic: str, count: int, partition: int = 0, offset: int = 0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Assign and seek (no group) and read the first `count` records, bounded in time."""
    tp = TopicPartition(topic, partition)
    c = await new_consumer(bootstrap)
    try:
        c.assign([tp])
        c.seek(tp, offset)
        out: list[ConsumerRecord[bytes, bytes]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT * 2
        while len(out) < count and loop.time() < deadline:
            batch = await c.getmany(tp, timeout_ms=500)
            out.extend(batch.get(tp, []))
        assert len(out) >= count, f"consumed {len(out)} of {count}"
        return out[:count]
    finally:
        await c.stop()


def as_record(r: ConsumerRecord[bytes, bytes]) -> Record:
    return (r.key, r.value, [(k, bytes(v)) for k, v in r.headers])


async def test_round_trip(
    producer: AIOKafkaProducer, broker: BrokerProcess, topic_name: str
) -> None:
    """send_and_wait returns dense offsets; the consumer reads the same records back."""
    records: list[Record] = [
        (f"k{i}".encode(), f"value {i} ".encode() * (i + 1), [("n", str(i).encode())])
        for i in range(40)
    ]
    records += [(None, b"null key", []), (b"tomb", None, [])]
    offsets = []
    for key, value, headers in records:
        md = await asyncio.wait_for(
            producer.send_and_wait(topic_name, value, key=key, partition=0, headers=headers),
            TIMEOUT,
        )
        offsets.append(md.offset)
        assert (md.topic, md.partition) == (topic_name, 0)
    assert offsets == list(range(len(records)))

    got = await consume(broker.bootstrap, topic_name, len(records))
    assert [r.offset for r in got] == list(range(len(records)))
    assert [as_record(r) for r in got] == records


async def test_batched_gzip_and_end_offsets(broker: BrokerProcess, topic_name: str) -> None:
    """Many sends batched and gzipped: futures resolve to dense offsets, end offset = count."""
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, compression_type="gzip", linger_ms=20)
    await asyncio.wait_for(p.start(), TIMEOUT)
    try:
        values = [uuid.uuid4().bytes * (1 + i % 20) for i in range(300)]
        futures = [await p.send(topic_name, v, partition=0) for v in values]
        metas = await asyncio.wait_for(asyncio.gather(*futures), TIMEOUT * 2)
    finally:
        await p.stop()
    assert [m.offset for m in metas] == list(range(300))

    tp = TopicPartition(topic_name, 0)
    c = await new_consumer(broker.bootstrap)
    try:
        assert await asyncio.wait_for(c.beginning_offsets([tp]), TIMEOUT) == {tp: 0}
        assert await asyncio.wait_for(c.end_offsets([tp]), TIMEOUT) == {tp: 300}
    finally:
        await c.stop()
    got = await consume(broker.bootstrap, topic_name, 300)
    assert [r.value for r in got] == values
    # Seek into the middle of a compressed batch.
    got = await consume(broker.bootstrap, topic_name, 3, offset=151)
    assert [(r.offset, r.value) for r in got] == [(151 + i, values[151 + i]) for i in range(3)]


async def test_fetch_long_poll_wakes_on_produce(
    producer: AIOKafkaProducer, broker: BrokerProcess, topic_name: str
) -> None:
    """A consumer waiting on an empty partition receives a record produced 0.5 s later.

    The fetch may wait 30 s; the record must arrive well before that, so a broker
    whose waiting fetch is not woken by the commit fails here.
    """
    first = await asyncio.wait_for(
        producer.send_and_wait(topic_name, b"first", partition=0), TIMEOUT
    )
    assert first.offset == 0
    tp = TopicPartition(topic_name, 0)
    c = await new_consumer(broker.bootstrap, fetch_max_wait_ms=30_000)
    try:
        c.assign([tp])
        c.seek(tp, 1)  # at the end: the partition has nothing to give yet
        waiter = asyncio.create_task(c.getone(tp))
        await asyncio.sleep(0.5)
        assert not waiter.done()
        md = await asyncio.wait_for(
            producer.send_and_wait(topic_name, b"late", key=b"k", partition=0), TIMEOUT
        )
        assert md.offset == 1
        record = await asyncio.wait_for(waiter, 10)
    finally:
        await c.stop()
    assert (record.offset, record.key, record.value) == (1, b"k", b"late")


async def test_offsets_for_times(
    producer: AIOKafkaProducer, broker: BrokerProcess, topic_name: str
) -> None:
    """offsets_for_times finds the first record at or after a timestamp."""
    base = 1_650_000_000_000
    for i in range(5):
        await asyncio.wait_for(
            producer.send_and_wait(
                topic_name, f"v{i}".encode(), partition=0, timestamp_ms=base + i * 100
            ),
            TIMEOUT,
        )
    tp = TopicPartition(topic_name, 0)
    c = await new_consumer(broker.bootstrap)
    try:
        found = await asyncio.wait_for(c.offsets_for_times({tp: base + 150}), TIMEOUT)
        assert found[tp] is not None
        assert (found[tp].offset, found[tp].timestamp) == (2, base + 200)
        none = await asyncio.wait_for(c.offsets_for_times({tp: base + 10_000}), TIMEOUT)
        assert none[tp] is None
    finally:
        await c.stop()
