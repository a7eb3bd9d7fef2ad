"""Many partitions after a restart (issue 13): librdkafka sends one produce
request per partition, and the broker opens the streams those requests touch
in batches (the appends wait in each stream's queue meanwhile). Every record
must be acknowledged once, at the right offset, with nothing lost or doubled."""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from harness import BrokerProcess

TOPICS = 20
PARTITIONS = 5


def one_each(
    bootstrap: str, names: list[str], values: list[bytes]
) -> dict[tuple[str, int, bytes], int]:
    """The values, in order, to every partition (idempotent, acks=all); the
    offset each got."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
    )
    got: dict[tuple[str, int, bytes], int] = {}
    errors: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            key = (msg.topic(), msg.partition(), msg.value())
            assert key not in got, f"{key} acknowledged twice"
            got[key] = msg.offset()

    for value in values:
        for name in names:
            for p in range(PARTITIONS):
                producer.produce(name, value, partition=p, on_delivery=report)
    assert producer.flush(60) == 0
    assert errors == []
    return got


def ends(bootstrap: str, names: list[str]) -> dict[tuple[str, int], int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = {TopicPartition(n, p): OffsetSpec.latest() for n in names for p in range(PARTITIONS)}
    result = admin.list_offsets(request, request_timeout=30)
    return {(tp.topic, tp.partition): f.result().offset for tp, f in result.items()}


def test_first_writes_to_many_partitions_after_a_restart(fresh_broker: BrokerProcess) -> None:
    fresh_broker.start()
    run = uuid.uuid4().hex[:6]
    names = [f"many-{run}-{i}" for i in range(TOPICS)]
    admin = AdminClient({"bootstrap.servers": fresh_broker.bootstrap})
    for f in admin.create_topics([NewTopic(n, PARTITIONS, 1) for n in names]).values():
        f.result(30)
    everything = [(n, p) for n in names for p in range(PARTITIONS)]
    first = one_each(fresh_broker.bootstrap, names, [b"before"])
    assert first == {(n, p, b"before"): 0 for n, p in everything}
    fresh_broker.restart()  # every stream is opened again by its next append
    second = one_each(fresh_broker.bootstrap, names, [b"after-1", b"after-2"])
    assert second == {
        (n, p, v): offset for n, p in everything for v, offset in ((b"after-1", 1), (b"after-2", 2))
    }
    assert ends(fresh_broker.bootstrap, names) == dict.fromkeys(everything, 3)
