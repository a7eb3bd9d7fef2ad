"""kafka-python against the broker: produce/consume, admin, offset lookups.

kafka-python is a pure-Python client with its own protocol code, so it exercises
request versions and encodings librdkafka never sends. Note that kafka-python 3.x
producers are idempotent by default (InitProducerId + producer ids in batches) unless
acks is set to something other than all. The two default-producer tests cover that
path; the others opt out of idempotence (NOT_IDEMPOTENT) so one missing API fails two
tests, not every test in the file.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import (
    InvalidConfigurationError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)

from harness import BrokerProcess

TIMEOUT = 15.0
NOT_IDEMPOTENT: dict[str, Any] = {"enable_idempotence": False}
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


@pytest.fixture(scope="module")
def admin(broker: BrokerProcess) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    yield client
    client.close()


def create_topic(
    admin: KafkaAdminClient, name: str, partitions: int = 1, configs: dict[str, str] | None = None
) -> None:
    res = admin.create_topics(
        {name: {"num_partitions": partitions, "replication_factor": 1, "configs": configs or {}}}
    )
    assert [t["error_code"] for t in res["topics"]] == [0]
    wait_for_partitions(admin, name, partitions)


def wait_for_partitions(admin: KafkaAdminClient, name: str, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        topics = admin.describe_topics([name])
        if topics and topics[0]["error_code"] == 0 and len(topics[0]["partitions"]) == count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} never showed {count} partitions")


def send_all(
    bootstrap: str, topic: str, records: list[Record], partition: int = 0, **conf: Any
) -> list[int]:
    """Send records in order to one partition; return the acknowledged offsets."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, **conf)
    try:
        futures = [
            producer.send(topic, key=k, value=v, headers=h, partition=partition)
            for k, v, h in records
        ]
        producer.flush(timeout=TIMEOUT * 2)
        return [f.get(timeout=TIMEOUT).offset for f in futures]
    finally:
        producer.close(timeout=TIMEOUT)


def consume(
    bootstrap: str, topic: str, count: int, partition: int = 0, offset: int = 0
) -> list[ConsumerRecord]:
    """Assign and seek (no group), then read the first `count` records, bounded in time."""
    tp = TopicPartition(topic, partition)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        consumer.assign([tp])
        consumer.seek(tp, offset)
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + TIMEOUT * 2
        while len(out) < count and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
        assert len(out) >= count, f"consumed {len(out)} of {count}"
        return out[:count]  # a poll returns whole batches, possibly past `count`
    finally:
        consumer.close()


def as_record(r: ConsumerRecord) -> Record:
    return (r.key, r.value, list(r.headers))


def test_round_trip_default_producer(
    admin: KafkaAdminClient, broker: BrokerProcess, topic_name: str
) -> None:
    """Default producer (idempotent in kafka-python 3): keys, headers, nulls, offsets."""
    create_topic(admin, topic_name)
    records: list[Record] = [
        (f"key-{i}".encode(), f"value-{i}".encode() * (i + 1), [("i", str(i).encode())])
        for i in range(30)
    ]
    records += [(None, b"no key", []), (b"tombstone", None, []), (b"", b"", [("e", b"")])]
    offsets = send_all(broker.bootstrap, topic_name, records)
    assert offsets == list(range(len(records)))
    got = consume(broker.bootstrap, topic_name, len(records))
    assert [r.offset for r in got] == list(range(len(records)))
    assert [as_record(r) for r in got] == records


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_acks(
    admin: KafkaAdminClient, broker: BrokerProcess, topic_name: str, acks: int | str
) -> None:
    """All acks levels land every record; acked sends report dense offsets.

    acks=all keeps kafka-python's default idempotence; 0 and 1 switch it off.
    """
    create_topic(admin, topic_name)
    records: list[Record] = [(b"k", f"v{i}".encode(), []) for i in range(20)]
    offsets = send_all(broker.bootstrap, topic_name, records, acks=acks)
    if acks != 0:
        assert offsets == list(range(20))
    got = consume(broker.bootstrap, topic_name, 20)
    assert [as_record(r) for r in got] == records


def test_gzip_round_trip(admin: KafkaAdminClient, broker: BrokerProcess, topic_name: str) -> None:
    """A gzip batch from kafka-python's own encoder comes back byte for byte."""
    create_topic(admin, topic_name)
    records: list[Record] = [
        (str(i).encode(), bytes([i % 5]) * (100 + i * 13), [("h", b"x")]) for i in range(100)
    ]
    records.append((b"rnd", uuid.uuid4().bytes * 100, []))
    send_all(
        broker.bootstrap,
        topic_name,
        records,
        compression_type="gzip",
        linger_ms=50,
        **NOT_IDEMPOTENT,
    )
    got = consume(broker.bootstrap, topic_name, len(records))
    assert [r.offset for r in got] == list(range(len(records)))
    assert [as_record(r) for r in got] == records


def test_seek_into_middle(admin: KafkaAdminClient, broker: BrokerProcess, topic_name: str) -> None:
    """Seeking to an offset inside a batch yields records from exactly that offset."""
    create_topic(admin, topic_name, partitions=2)
    records: list[Record] = [(None, f"r{i}".encode(), []) for i in range(50)]
    send_all(broker.bootstrap, topic_name, records, partition=1, linger_ms=50, **NOT_IDEMPOTENT)
    got = consume(broker.bootstrap, topic_name, 10, partition=1, offset=23)
    assert [r.offset for r in got] == list(range(23, 33))
    assert [r.value for r in got] == [f"r{i}".encode() for i in range(23, 33)]


def test_admin_topics_and_configs(admin: KafkaAdminClient, topic_name: str) -> None:
    """Create with configs, describe them, alter, add partitions, delete; errors by code."""
    create_topic(admin, topic_name, partitions=2, configs={"retention.ms": "86400000"})
    assert topic_name in admin.list_topics()

    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics({topic_name: {"num_partitions": 1}})

    res = ConfigResource(ConfigResourceType.TOPIC, topic_name)
    cfg = admin.describe_configs([res], config_filter="all")["topic"][topic_name]
    assert cfg["retention.ms"]["value"] == "86400000"
    assert cfg["cleanup.policy"]["value"] == "delete"

    result = admin.alter_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic_name, configs={"retention.bytes": "5000"})]
    )
    assert result == {"topic": {topic_name: "OK"}}
    cfg = admin.describe_configs([res], config_filter="all")["topic"][topic_name]
    assert cfg["retention.bytes"]["value"] == "5000"

    with pytest.raises(InvalidConfigurationError):
        admin.create_topics({f"{topic_name}-bad": {"configs": {"no.such.config": "1"}}})

    admin.create_partitions({topic_name: 4})
    wait_for_partitions(admin, topic_name, 4)

    admin.delete_topics([topic_name])
    deadline = time.monotonic() + TIMEOUT
    while topic_name in admin.list_topics() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert topic_name not in admin.list_topics()
    with pytest.raises(UnknownTopicOrPartitionError):
        admin.delete_topics([topic_name])


def test_alter_unknown_config(admin: KafkaAdminClient, topic_name: str) -> None:
    """Both AlterConfigs flavours answer an unknown key with INVALID_CONFIG (40)."""
    create_topic(admin, topic_name)
    for incremental in (True, False):
        res = ConfigResource(ConfigResourceType.TOPIC, topic_name, configs={"no.such.config": "1"})
        result = admin.alter_configs([res], raise_on_unknown=False, incremental=incremental)
        assert result["topic"][topic_name].startswith("[Error 40] InvalidConfiguration"), result


def test_offset_lookups(admin: KafkaAdminClient, broker: BrokerProcess, topic_name: str) -> None:
    """beginning_offsets, end_offsets and offsets_for_times agree with what was written."""
    create_topic(admin, topic_name)
    tp = TopicPartition(topic_name, 0)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, **NOT_IDEMPOTENT)
    base = 1_700_000_000_000
    try:
        futures = [
            producer.send(
                topic_name, value=f"v{i}".encode(), partition=0, timestamp_ms=base + i * 1000
            )
            for i in range(6)
        ]
        producer.flush(timeout=TIMEOUT)
        assert [f.get(timeout=TIMEOUT).offset for f in futures] == list(range(6))
    finally:
        producer.close(timeout=TIMEOUT)

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    try:
        assert consumer.beginning_offsets([tp]) == {tp: 0}
        assert consumer.end_offsets([tp]) == {tp: 6}
        found = consumer.offsets_for_times({tp: base + 2500})[tp]
        assert found is not None
        assert (found.offset, found.timestamp) == (3, base + 3000)
        assert consumer.offsets_for_times({tp: base + 60_000})[tp] is None
    finally:
        consumer.close()
