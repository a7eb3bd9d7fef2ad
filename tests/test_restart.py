"""Data survives the broker process: a graceful stop, and a kill -9.

Acknowledged means durable: after SIGTERM every record comes back byte for byte at
the same offset; after SIGKILL every *acknowledged* record does, offsets stay dense,
and nothing that was never produced appears.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from harness import BrokerProcess

TIMEOUT = 20.0
PARTITIONS = 4
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
Stored = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[
        topic
    ].result(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        t = admin.list_topics(topic, timeout=TIMEOUT).topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == PARTITIONS:
            return
        time.sleep(0.1)
    raise AssertionError("topic not in metadata")


def make_record(seq: int) -> Stored:
    """Deterministic, distinct records of very different sizes; some compress well."""
    size = [0, 10, 1000, 30_000, 120_000][seq % 5] + seq
    body = (uuid.UUID(int=seq).bytes * (size // 16 + 1))[:size] if seq % 2 else b"z" * size
    key = None if seq % 7 == 0 else f"key-{seq}".encode()
    headers: list[tuple[str, bytes | None]] = [("seq", str(seq).encode())] if seq % 3 else []
    return key, body, headers


def frozen(rec: Stored) -> tuple[Any, ...]:
    return (rec[0], rec[1], tuple(rec[2]))


class Acks:
    """Delivery reports: (partition, offset) -> the record, for acknowledged ones only."""

    def __init__(self) -> None:
        self.acked: dict[tuple[int, int], Stored] = {}
        self.failed = 0
        self.twice: list[tuple[int, int]] = []  # offsets acknowledged for two records

    def callback(self, rec: Stored) -> Callable[[KafkaError | None, Message], None]:
        def cb(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                at = (msg.partition(), msg.offset())
                if at in self.acked:
                    self.twice.append(at)
                self.acked[at] = rec
            else:
                self.failed += 1

        return cb


def new_producer(bootstrap: str, codec: str, **extra: Any) -> Producer:
    # message.max.bytes is librdkafka's client-side cap; records here stay far below 1 MiB.
    conf = {"bootstrap.servers": bootstrap, "compression.type": codec, "acks": "all"}
    return Producer({**conf, **extra})


def produce(producer: Producer, topic: str, seqs: range, acks: Acks, flush: bool = True) -> None:
    """Record `seq` goes to partition seq % PARTITIONS, in order."""
    for seq in seqs:
        rec = make_record(seq)
        kwargs: dict[str, Any] = {"headers": rec[2]} if rec[2] else {}
        producer.produce(
            topic,
            key=rec[0],
            value=rec[1],
            partition=seq % PARTITIONS,
            on_delivery=acks.callback(rec),
            **kwargs,
        )
        producer.poll(0)
    if flush:
        assert producer.flush(TIMEOUT) == 0


def produce_in_phases(bootstrap: str, topic: str, count: int, acks: Acks) -> list[Producer]:
    """One phase per codec, so every partition holds batches of every codec, in order."""
    producers = [new_producer(bootstrap, codec) for codec in CODECS]
    step = count // len(CODECS)
    for i, producer in enumerate(producers):
        produce(producer, topic, range(i * step, (i + 1) * step), acks)
    return producers


def read_all(bootstrap: str, topic: str) -> dict[int, list[tuple[int, Stored]]]:
    """Every partition from offset 0 up to its high watermark."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"unused-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "error",
        }
    )
    try:
        ends = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT)
            for p in range(PARTITIONS)
        }
        for p, (low, _) in ends.items():
            assert low == 0, f"partition {p} starts at {low}"
        total = sum(high for _, high in ends.values())
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        out: dict[int, list[tuple[int, Stored]]] = {p: [] for p in range(PARTITIONS)}
        n = 0
        deadline = time.monotonic() + TIMEOUT * 2
        while n < total and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.topic() == topic:
                    raise KafkaException(msg.error())
                continue
            out[msg.partition()].append(
                (msg.offset(), (msg.key(), msg.value(), list(msg.headers() or [])))
            )
            n += 1
        for p, (_, high) in ends.items():
            assert [o for o, _ in out[p]] == list(range(high)), f"partition {p} offsets"
        return out
    finally:
        c.close()


def as_map(data: dict[int, list[tuple[int, Stored]]]) -> dict[tuple[int, int], Stored]:
    return {(p, o): rec for p, recs in data.items() for o, rec in recs}


def test_graceful_stop_keeps_everything(fresh_broker: BrokerProcess, topic_name: str) -> None:
    """SIGTERM exits 0; after a restart on the same data dir every record is unchanged."""
    fresh_broker.start()
    create_topic(fresh_broker.bootstrap, topic_name)
    acks = Acks()
    producers = produce_in_phases(fresh_broker.bootstrap, topic_name, 200, acks)
    assert acks.failed == 0 and len(acks.acked) == 200
    before = read_all(fresh_broker.bootstrap, topic_name)
    assert as_map(before) == acks.acked

    assert fresh_broker.stop() == 0  # with producers still connected
    fresh_broker.start()
    after = read_all(fresh_broker.bootstrap, topic_name)
    assert after == before

    # The log goes on where it was: new offsets follow the old ones in every partition.
    more = Acks()
    produce(producers[0], topic_name, range(200, 220), more)
    assert more.failed == 0
    for p in range(PARTITIONS):
        new = sorted(o for q, o in more.acked if q == p)
        assert new == list(range(len(before[p]), len(before[p]) + 5))
    assert as_map(read_all(fresh_broker.bootstrap, topic_name)) == {**acks.acked, **more.acked}


def test_kill_keeps_acknowledged(fresh_broker: BrokerProcess, topic_name: str) -> None:
    """After kill -9, every acknowledged record is back at its offset; offsets stay dense."""
    fresh_broker.start()
    create_topic(fresh_broker.bootstrap, topic_name)
    acks = Acks()
    produce_in_phases(fresh_broker.bootstrap, topic_name, 150, acks)
    assert len(acks.acked) == 150
    # More records in flight, then the crash: some may be acknowledged, some not.
    # purge() can miss messages librdkafka is moving back to a partition's
    # queue after the disconnect, at the moment it runs (seen once in CI under
    # load: 16 messages neither acknowledged nor failed after flush); the
    # message timeout fails those too, well within the flush.
    producer = new_producer(fresh_broker.bootstrap, "lz4", **{"message.timeout.ms": 8000})
    produce(producer, topic_name, range(150, 300), acks, flush=False)
    producer.poll(0.05)
    fresh_broker.kill()
    producer.purge()
    assert producer.flush(TIMEOUT) == 0  # every callback served; purged ones count as failed
    assert acks.twice == [], "one offset acknowledged for two records"
    acked = dict(acks.acked)
    assert len(acked) + acks.failed == 300

    fresh_broker.start()
    stored = read_all(fresh_broker.bootstrap, topic_name)
    flat = as_map(stored)
    for key, rec in acked.items():
        assert flat.get(key) == rec, f"acknowledged record at {key} lost or changed"

    # Whatever else survived is a real record of that partition, in production order,
    # at most once: no garbage, no reordering, no duplicates.
    produced = {frozen(make_record(seq)): seq for seq in range(300)}
    for p, recs in stored.items():
        seqs = [produced.get(frozen(rec), -1) for _, rec in recs]
        assert -1 not in seqs, f"partition {p} holds a record never produced"
        assert all(s % PARTITIONS == p for s in seqs)
        assert seqs == sorted(set(seqs)), f"partition {p} out of order or duplicated"
