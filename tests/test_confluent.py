"""confluent-kafka (librdkafka) against the broker: admin, produce, fetch, offsets.

librdkafka is the most used client, so every behaviour here is checked through its
unmodified public API. Consumers use manual assignment (consumer groups are out of
scope); confluent-kafka insists on a group.id, so one is set but never joined.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka import (
    TIMESTAMP_CREATE_TIME,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from harness import BrokerProcess

TIMEOUT = 15.0
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def admin(broker: BrokerProcess) -> Iterator[AdminClient]:
    yield AdminClient({"bootstrap.servers": broker.bootstrap})


def create_topic(
    admin: AdminClient, name: str, partitions: int = 1, config: dict[str, str] | None = None
) -> None:
    fut = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=TIMEOUT,
    )[name]
    fut.result(timeout=TIMEOUT)
    wait_for(lambda: partition_count(admin, name) == partitions, f"{name} in metadata")


def partition_count(admin: AdminClient, name: str) -> int:
    """-1 if the topic does not exist. Lists all topics: asking for one by name would
    auto-create it (librdkafka's admin handle sends allow_auto_topic_creation=true)."""
    md = admin.list_topics(timeout=TIMEOUT)
    t = md.topics.get(name)
    if t is None or t.error is not None:
        return -1
    return len(t.partitions)


def wait_for(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def kafka_error(exc_info: pytest.ExceptionInfo[KafkaException]) -> KafkaError:
    err = exc_info.value.args[0]
    assert isinstance(err, KafkaError), err
    return err


def produce(
    bootstrap: str,
    topic: str,
    records: list[Record],
    partition: int = 0,
    timestamps: list[int] | None = None,
    **conf: Any,
) -> list[tuple[KafkaError | None, int]]:
    """Produce records in order to one partition; return (error, offset) per record."""
    producer = Producer({"bootstrap.servers": bootstrap, **conf})
    reports: list[tuple[KafkaError | None, int]] = [(None, -2)] * len(records)

    def callback(i: int) -> Callable[[KafkaError | None, Message], None]:
        def cb(err: KafkaError | None, msg: Message) -> None:
            reports[i] = (err, msg.offset())

        return cb

    for i, (key, value, headers) in enumerate(records):
        kwargs: dict[str, Any] = {}
        if timestamps is not None:
            kwargs["timestamp"] = timestamps[i]
        if headers:
            kwargs["headers"] = headers
        producer.produce(
            topic, key=key, value=value, partition=partition, on_delivery=callback(i), **kwargs
        )
        producer.poll(0)
    remaining = producer.flush(TIMEOUT * 2)
    assert remaining == 0, f"{remaining} records not delivered"
    assert all(off != -2 for _, off in reports), "missing delivery report"
    return reports


def consumer(bootstrap: str, **conf: Any) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"unused-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **conf,
        }
    )


def consume(
    bootstrap: str, topic: str, count: int, partition: int = 0, offset: int = 0, **conf: Any
) -> list[Message]:
    """Assign one partition at `offset` and read exactly `count` records (bounded)."""
    c = consumer(bootstrap, **conf)
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        out: list[Message] = []
        deadline = time.monotonic() + TIMEOUT * 2
        while len(out) < count and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                # Group-coordinator noise has no topic; anything on our partition is real.
                if msg.topic() == topic and err.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(err)
                continue
            out.append(msg)
        assert len(out) == count, f"consumed {len(out)} of {count} records"
        return out
    finally:
        c.close()


def as_record(msg: Message) -> Record:
    return (msg.key(), msg.value(), list(msg.headers() or []))


def sample_records(n: int, size: int = 100) -> list[Record]:
    return [
        (f"k{i}".encode(), (f"v{i:06d}-".encode() * (size // 8 + 1))[:size], []) for i in range(n)
    ]


# --------------------------------------------------------------------------- topics admin


def test_create_list_describe_delete_topic(admin: AdminClient, topic_name: str) -> None:
    """A topic's whole life cycle through the admin API, seen in Metadata each step."""
    create_topic(admin, topic_name, partitions=3, config={"retention.ms": "3600000"})

    md = admin.list_topics(timeout=TIMEOUT)
    assert topic_name in md.topics
    parts = md.topics[topic_name].partitions
    assert sorted(parts) == [0, 1, 2]
    for p in parts.values():
        assert p.error is None
        assert p.leader in md.brokers
        assert p.replicas == [p.leader]

    desc = admin.describe_topics(TopicCollection([topic_name]))[topic_name].result(TIMEOUT)
    assert desc.name == topic_name
    assert [p.id for p in desc.partitions] == [0, 1, 2]
    assert not desc.is_internal

    admin.delete_topics([topic_name], operation_timeout=TIMEOUT)[topic_name].result(TIMEOUT)
    wait_for(lambda: topic_name not in admin.list_topics(timeout=TIMEOUT).topics, "topic deletion")


def test_delete_unknown_topic(admin: AdminClient, topic_name: str) -> None:
    """Deleting a topic that never existed is UNKNOWN_TOPIC_OR_PARTITION, as in Kafka."""
    with pytest.raises(KafkaException) as exc:
        admin.delete_topics([topic_name], operation_timeout=TIMEOUT)[topic_name].result(TIMEOUT)
    assert kafka_error(exc).code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_create_existing_topic(admin: AdminClient, topic_name: str) -> None:
    """A second CreateTopics for the same name is TOPIC_ALREADY_EXISTS."""
    create_topic(admin, topic_name)
    with pytest.raises(KafkaException) as exc:
        create_topic(admin, topic_name)
    assert kafka_error(exc).code() == KafkaError.TOPIC_ALREADY_EXISTS


@pytest.mark.parametrize("name", ["bad/name", "has space", "..", "x" * 250])
def test_create_invalid_topic_name(admin: AdminClient, name: str) -> None:
    """Kafka's legal topic names are [a-zA-Z0-9._-]{1,249} except '.' and '..'."""
    with pytest.raises(KafkaException) as exc:
        admin.create_topics(
            [NewTopic(name, num_partitions=1, replication_factor=1)], operation_timeout=TIMEOUT
        )[name].result(TIMEOUT)
    assert kafka_error(exc).code() == KafkaError.TOPIC_EXCEPTION  # INVALID_TOPIC_EXCEPTION, 17


def test_create_topic_unknown_config(admin: AdminClient, topic_name: str) -> None:
    """An unknown topic config is INVALID_CONFIG and no topic is created."""
    with pytest.raises(KafkaException) as exc:
        create_topic(admin, topic_name, config={"no.such.config": "1"})
    assert kafka_error(exc).code() == KafkaError.INVALID_CONFIG
    assert partition_count(admin, topic_name) == -1


def test_create_partitions(admin: AdminClient, broker: BrokerProcess, topic_name: str) -> None:
    """Partitions can be added (and the new one used), never removed."""
    create_topic(admin, topic_name, partitions=1)
    admin.create_partitions([NewPartitions(topic_name, 3)], operation_timeout=TIMEOUT)[
        topic_name
    ].result(TIMEOUT)
    wait_for(lambda: partition_count(admin, topic_name) == 3, "3 partitions")

    reports = produce(broker.bootstrap, topic_name, sample_records(2), partition=2)
    assert reports == [(None, 0), (None, 1)]
    got = consume(broker.bootstrap, topic_name, 2, partition=2)
    assert [m.value() for m in got] == [r[1] for r in sample_records(2)]

    with pytest.raises(KafkaException) as exc:
        admin.create_partitions([NewPartitions(topic_name, 2)], operation_timeout=TIMEOUT)[
            topic_name
        ].result(TIMEOUT)
    assert kafka_error(exc).code() == KafkaError.INVALID_PARTITIONS


# --------------------------------------------------------------------------- configs


def describe(admin: AdminClient, topic: str) -> dict[str, str | None]:
    res = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([res])[res].result(TIMEOUT)
    return {name: e.value for name, e in entries.items()}


def test_describe_configs(admin: AdminClient, topic_name: str) -> None:
    """Configs set at creation are described back; the others show Kafka's defaults."""
    create_topic(admin, topic_name, config={"retention.ms": "123456", "cleanup.policy": "compact"})
    cfg = describe(admin, topic_name)
    assert cfg["retention.ms"] == "123456"
    assert cfg["cleanup.policy"] == "compact"
    assert cfg["max.message.bytes"] == "1048588"
    assert cfg["retention.bytes"] == "-1"
    assert cfg["message.timestamp.type"] == "CreateTime"


def test_alter_configs_replaces_set(admin: AdminClient, topic_name: str) -> None:
    """Legacy AlterConfigs replaces the topic's whole config set, as Kafka does."""
    create_topic(admin, topic_name, config={"retention.ms": "123456"})
    res = ConfigResource(ResourceType.TOPIC, topic_name, set_config={"retention.bytes": "1000000"})
    admin.alter_configs([res])[res].result(TIMEOUT)
    cfg = describe(admin, topic_name)
    assert cfg["retention.bytes"] == "1000000"
    assert cfg["retention.ms"] == "604800000"  # not in the new set: back to the default


def test_incremental_alter_configs(admin: AdminClient, topic_name: str) -> None:
    """SET changes one key and keeps the rest; DELETE goes back to the default."""
    create_topic(admin, topic_name, config={"retention.ms": "123456"})
    res = ConfigResource(
        ResourceType.TOPIC,
        topic_name,
        incremental_configs=[
            ConfigEntry("max.message.bytes", "2000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry(
                "message.timestamp.type",
                "LogAppendTime",
                incremental_operation=AlterConfigOpType.SET,
            ),
        ],
    )
    admin.incremental_alter_configs([res])[res].result(TIMEOUT)
    cfg = describe(admin, topic_name)
    assert cfg["max.message.bytes"] == "2000"
    assert cfg["message.timestamp.type"] == "LogAppendTime"
    assert cfg["retention.ms"] == "123456"

    res = ConfigResource(
        ResourceType.TOPIC,
        topic_name,
        incremental_configs=[
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)
        ],
    )
    admin.incremental_alter_configs([res])[res].result(TIMEOUT)
    cfg = describe(admin, topic_name)
    assert cfg["retention.ms"] == "604800000"
    assert cfg["max.message.bytes"] == "2000"


def test_alter_unknown_config(admin: AdminClient, topic_name: str) -> None:
    """Both AlterConfigs flavours reject an unknown key with INVALID_CONFIG."""
    create_topic(admin, topic_name)
    legacy = ConfigResource(ResourceType.TOPIC, topic_name, set_config={"no.such.config": "1"})
    with pytest.raises(KafkaException) as exc:
        admin.alter_configs([legacy])[legacy].result(TIMEOUT)
    assert kafka_error(exc).code() == KafkaError.INVALID_CONFIG

    incr = ConfigResource(
        ResourceType.TOPIC,
        topic_name,
        incremental_configs=[
            ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    with pytest.raises(KafkaException) as exc:
        admin.incremental_alter_configs([incr])[incr].result(TIMEOUT)
    assert kafka_error(exc).code() == KafkaError.INVALID_CONFIG
    assert "no.such.config" not in describe(admin, topic_name)


# --------------------------------------------------------------------------- produce


def test_auto_create_on_produce(admin: AdminClient, broker: BrokerProcess, topic_name: str) -> None:
    """Producing to an unknown topic creates it with num.partitions (default 1)."""
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    reports: list[tuple[KafkaError | None, int, int]] = []
    producer.produce(
        topic_name,
        value=b"hello",
        on_delivery=lambda e, m: reports.append((e, m.partition(), m.offset())),
    )
    assert producer.flush(TIMEOUT * 2) == 0
    assert reports == [(None, 0, 0)]
    assert partition_count(admin, topic_name) == 1
    assert [m.value() for m in consume(broker.bootstrap, topic_name, 1)] == [b"hello"]


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_produce_acks(
    admin: AdminClient, broker: BrokerProcess, topic_name: str, acks: str
) -> None:
    """Every acks level stores the records in order; acked ones report their offsets."""
    create_topic(admin, topic_name)
    records = sample_records(50)
    reports = produce(broker.bootstrap, topic_name, records, acks=acks)
    assert [e for e, _ in reports] == [None] * 50
    if acks != "0":
        assert [off for _, off in reports] == list(range(50))
    got = consume(broker.bootstrap, topic_name, 50)
    assert [m.offset() for m in got] == list(range(50))
    assert [as_record(m) for m in got] == records


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_round_trip(
    admin: AdminClient, broker: BrokerProcess, topic_name: str, codec: str
) -> None:
    """Compressed batches come back byte for byte, with dense offsets."""
    create_topic(admin, topic_name)
    records = [(f"key-{i}".encode(), bytes([i % 7]) * (200 + i * 37), []) for i in range(200)]
    records.append((b"random", uuid.uuid4().bytes * 64, []))
    produce(broker.bootstrap, topic_name, records, **{"compression.type": codec})
    got = consume(broker.bootstrap, topic_name, len(records))
    assert [m.offset() for m in got] == list(range(len(records)))
    assert [as_record(m) for m in got] == records


def test_headers_and_null_key_value(
    admin: AdminClient, broker: BrokerProcess, topic_name: str
) -> None:
    """Headers keep order, duplicates and null values; null differs from empty."""
    create_topic(admin, topic_name)
    headers: list[tuple[str, bytes | None]] = [
        ("trace", b"abc"),
        ("dup", b"1"),
        ("dup", b"2"),
        ("empty", b""),
        ("null", None),
    ]
    records: list[Record] = [
        (b"k", b"v", headers),
        (None, b"no key", []),
        (b"tombstone", None, []),
        (None, None, [("only", b"header")]),
        (b"", b"", []),
    ]
    produce(broker.bootstrap, topic_name, records)
    got = consume(broker.bootstrap, topic_name, len(records))
    assert [as_record(m) for m in got] == records


def test_message_timestamps(admin: AdminClient, broker: BrokerProcess, topic_name: str) -> None:
    """CreateTime keeps the producer's timestamp; LogAppendTime replaces it."""
    create_topic(admin, topic_name, config={"message.timestamp.type": "CreateTime"})
    ts = 1_600_000_000_000
    produce(broker.bootstrap, topic_name, sample_records(3), timestamps=[ts, ts + 1, ts + 2])
    got = consume(broker.bootstrap, topic_name, 3)
    assert [m.timestamp() for m in got] == [(TIMESTAMP_CREATE_TIME, ts + i) for i in range(3)]

    other = f"{topic_name}-lat"
    create_topic(admin, other, config={"message.timestamp.type": "LogAppendTime"})
    before = int(time.time() * 1000)
    produce(broker.bootstrap, other, sample_records(3), timestamps=[ts, ts + 1, ts + 2])
    got = consume(broker.bootstrap, other, 3)
    for m in got:
        kind, value = m.timestamp()
        assert kind == TIMESTAMP_LOG_APPEND_TIME
        assert value >= before - 60_000  # the broker's clock, not the producer's 2020 stamp


def test_record_near_one_mib_accepted(
    admin: AdminClient, broker: BrokerProcess, topic_name: str
) -> None:
    """A single record just under the default max.message.bytes (1048588) is accepted."""
    create_topic(admin, topic_name)
    value = uuid.uuid4().bytes * ((1_048_576 - 1024) // 16)
    # librdkafka's own client-side cap defaults to 1000000; lift it so the broker decides.
    reports = produce(
        broker.bootstrap, topic_name, [(b"big", value, [])], **{"message.max.bytes": 4_000_000}
    )
    assert reports == [(None, 0)]
    got = consume(broker.bootstrap, topic_name, 1, **{"fetch.max.bytes": 4_000_000})
    assert got[0].value() == value


def test_record_over_max_rejected(
    admin: AdminClient, broker: BrokerProcess, topic_name: str
) -> None:
    """Batches over max.message.bytes (broker default or topic override) are refused."""
    create_topic(admin, topic_name)
    too_big = uuid.uuid4().bytes * (1_100_000 // 16)
    conf = {"message.max.bytes": 4_000_000, "compression.type": "none"}
    reports = produce(broker.bootstrap, topic_name, [(None, too_big, [])], **conf)
    err = reports[0][0]
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE

    small = f"{topic_name}-small"
    create_topic(admin, small, config={"max.message.bytes": "5000"})
    records: list[Record] = [(None, b"x" * 100, []), (None, uuid.uuid4().bytes * 1000, [])]
    # One record per batch so only the second one is too large.
    reports = produce(broker.bootstrap, small, records, **conf, **{"batch.num.messages": 1})
    assert reports[0] == (None, 0)
    err = reports[1][0]
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE


def test_consume_in_order_dense_offsets(
    admin: AdminClient, broker: BrokerProcess, topic_name: str
) -> None:
    """Records from several produce calls come back in order, offsets 0..n-1, per partition."""
    create_topic(admin, topic_name, partitions=3)
    expected: dict[int, list[Record]] = {}
    for p in range(3):
        expected[p] = []
        for round_ in range(3):  # three producers => at least three batches
            recs = [
                (f"p{p}r{round_}i{i}".encode(), f"value-{p}-{round_}-{i}".encode() * (i + 1), [])
                for i in range(40)
            ]
            reports = produce(broker.bootstrap, topic_name, recs, partition=p)
            assert [off for _, off in reports] == list(
                range(len(expected[p]), len(expected[p]) + 40)
            )
            expected[p].extend(recs)
    for p in range(3):
        got = consume(broker.bootstrap, topic_name, 120, partition=p)
        assert [m.offset() for m in got] == list(range(120))
        assert [as_record(m) for m in got] == expected[p]
    # Starting in the middle of a batch returns from exactly that offset.
    got = consume(broker.bootstrap, topic_name, 5, partition=1, offset=57)
    assert [m.offset() for m in got] == [57, 58, 59, 60, 61]
    assert [as_record(m) for m in got] == expected[1][57:62]


# --------------------------------------------------------------------------- offsets


def list_offsets(admin: AdminClient, tp: TopicPartition, spec: OffsetSpec) -> tuple[int, int]:
    info = admin.list_offsets({tp: spec})[tp].result(TIMEOUT)
    return info.offset, info.timestamp


def test_list_offsets(admin: AdminClient, broker: BrokerProcess, topic_name: str) -> None:
    """Earliest, latest, by timestamp and max timestamp, on CreateTime stamps out of order."""
    create_topic(admin, topic_name)
    tp = TopicPartition(topic_name, 0)
    assert list_offsets(admin, tp, OffsetSpec.earliest())[0] == 0
    assert list_offsets(admin, tp, OffsetSpec.latest())[0] == 0

    base = 1_700_000_000_000
    stamps = [base, base + 1000, base + 5000, base + 2000, base + 3000]
    produce(
        broker.bootstrap,
        topic_name,
        sample_records(5),
        timestamps=stamps,
        **{"batch.num.messages": 2},
    )
    assert list_offsets(admin, tp, OffsetSpec.earliest())[0] == 0
    assert list_offsets(admin, tp, OffsetSpec.latest())[0] == 5
    assert list_offsets(admin, tp, OffsetSpec.for_timestamp(base))[0] == 0
    assert list_offsets(admin, tp, OffsetSpec.for_timestamp(base + 1))[0] == 1
    assert list_offsets(admin, tp, OffsetSpec.for_timestamp(base + 1500))[0] == 2
    assert list_offsets(admin, tp, OffsetSpec.for_timestamp(base + 4000))[0] == 2
    assert list_offsets(admin, tp, OffsetSpec.for_timestamp(base + 9999))[0] == -1
    assert list_offsets(admin, tp, OffsetSpec.max_timestamp()) == (2, base + 5000)


def test_delete_records(admin: AdminClient, broker: BrokerProcess, topic_name: str) -> None:
    """DeleteRecords moves the log start: earliest offset and fetches begin there."""
    create_topic(admin, topic_name)
    records = sample_records(10)
    produce(broker.bootstrap, topic_name, records, **{"batch.num.messages": 3})
    tp = TopicPartition(topic_name, 0, 4)
    result = admin.delete_records([tp], operation_timeout=TIMEOUT)[tp].result(TIMEOUT)
    assert result.low_watermark == 4
    tp0 = TopicPartition(topic_name, 0)
    assert list_offsets(admin, tp0, OffsetSpec.earliest())[0] == 4
    assert list_offsets(admin, tp0, OffsetSpec.latest())[0] == 10

    c = consumer(broker.bootstrap)
    try:
        low, high = c.get_watermark_offsets(tp0, timeout=TIMEOUT)
    finally:
        c.close()
    assert (low, high) == (4, 10)
    # A fetch from the start (earliest reset) starts at the new log start.
    got = consume(broker.bootstrap, topic_name, 6, offset=-2)  # OFFSET_BEGINNING
    assert [m.offset() for m in got] == list(range(4, 10))
    assert [as_record(m) for m in got] == records[4:]


def test_fetch_out_of_range(admin: AdminClient, broker: BrokerProcess, topic_name: str) -> None:
    """Fetching past the end with auto.offset.reset=error surfaces OFFSET_OUT_OF_RANGE."""
    create_topic(admin, topic_name)
    produce(broker.bootstrap, topic_name, sample_records(3))
    c = consumer(broker.bootstrap, **{"auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic_name, 0, 1000)])
        seen: list[KafkaError] = []
        deadline = time.monotonic() + TIMEOUT
        while not seen and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            assert err is not None, f"unexpected record at offset {msg.offset()}"
            if msg.topic() == topic_name:
                seen.append(err)
    finally:
        c.close()
    assert seen, "no error for an out-of-range fetch"
    assert seen[0].code() == KafkaError._AUTO_OFFSET_RESET
    assert "out of range" in seen[0].str().lower()


def test_describe_cluster(admin: AdminClient, broker: BrokerProcess) -> None:
    """One node, id 0, reachable at the advertised address, and it is the controller."""
    desc = admin.describe_cluster(request_timeout=TIMEOUT).result(TIMEOUT)
    assert desc.cluster_id
    assert len(desc.nodes) == 1
    node = desc.nodes[0]
    assert (node.host, node.port) == ("127.0.0.1", broker.port)
    assert node.id == 0
    assert desc.controller is not None and desc.controller.id == 0
    md = admin.list_topics(timeout=TIMEOUT)
    assert list(md.brokers) == [0]
    assert md.cluster_id == desc.cluster_id
