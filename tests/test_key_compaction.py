"""cleanup.policy=compact: the latest record per key survives at its offset,
older ones and expired tombstones go, for every compression codec."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from harness import BrokerProcess

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's storage engine"
)


@pytest.fixture(scope="module")
def cleaner_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(
        tmp_path_factory.mktemp("kc") / "data",
        env={
            "SHOAL_LOG_CLEANER_BACKOFF_MS": "300",
            "SHOAL_OBJECT_DELETE_GRACE_MS": "0",
            "SHOAL_COMPACTION_MIN_AGE_MS": "0",
            "SHOAL_COMPACTION_INTERVAL_MS": "500",
        },
    ).start()
    yield b
    b.stop()


def read_all(bootstrap: str, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "kc",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    c.assign([TopicPartition(topic, 0, -2)])
    out: list[tuple[int, bytes | None, bytes | None]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() == -191:
                break
            continue
        out.append((m.offset(), m.key(), m.value()))
    c.close()
    return out


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_latest_value_per_key_survives(
    cleaner_broker: BrokerProcess, topic_name: str, codec: str
) -> None:
    b = cleaner_broker
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    cfg = {
        "cleanup.policy": "compact",
        "min.compaction.lag.ms": "0",
        "delete.retention.ms": "0",
        "min.cleanable.dirty.ratio": "0.01",
    }
    for f in admin.create_topics([NewTopic(topic_name, 1, 1, config=cfg)]).values():
        f.result(20)
    p = Producer({"bootstrap.servers": b.bootstrap, "compression.type": codec, "linger.ms": 5})
    written: dict[bytes, tuple[int, bytes | None]] = {}

    def on_delivery(err: object, msg: object) -> None:
        assert err is None
        written[msg.key()] = (msg.offset(), msg.value())  # type: ignore[attr-defined]

    for round_ in range(20):
        for k in range(10):
            p.produce(
                topic_name,
                key=b"device-%d" % k,
                value=b"state-%d-%d" % (k, round_),
                on_delivery=on_delivery,
            )
        p.flush(10)
    for k in (3, 7):  # devices decommissioned: tombstones
        p.produce(topic_name, key=b"device-%d" % k, value=None, on_delivery=on_delivery)
    p.flush(10)
    # Kafka refuses keyless records on compacted topics (LogValidator.validateKey)
    refused: list[KafkaError] = []
    p.produce(topic_name, key=None, value=b"keyless", on_delivery=lambda e, _m: refused.append(e))
    p.flush(10)
    assert [e.code() for e in refused] == [KafkaError.INVALID_RECORD]
    end = 202
    # The cleaner leaves everything older than the lag (0 ms here) compacted.
    deadline = time.monotonic() + 30
    records = read_all(b.bootstrap, topic_name)
    while len(records) > 8 and time.monotonic() < deadline:
        time.sleep(0.5)
        records = read_all(b.bootstrap, topic_name)
    offsets = [o for o, _k, _v in records]
    assert offsets == sorted(offsets)
    # The refused record took no offset, and compaction leaves the log end where it was.
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "kc"})
    try:
        assert c.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10)[1] == end
    finally:
        c.close()
    latest = {k: v for k, v in written.items() if k is not None and v[1] is not None}
    # Each live key once, at the offset it was written at, with its last value.
    got = {k: (o, v) for o, k, v in records if k is not None}
    assert got == latest
    assert len([1 for _o, k, _v in records if k is not None]) == len(latest) == 8
    assert "key compaction kept" in b.log()
