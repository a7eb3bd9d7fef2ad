"""Topics and tagged records for the consumer-group tests of every client."""

from __future__ import annotations

import uuid

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

TIMEOUT = 60.0


def create_topic(bootstrap: str, partitions: int, prefix: str = "g") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(TIMEOUT)
    return name


def produce(bootstrap: str, topic: str, partitions: int, per_partition: int, tag: str) -> set[str]:
    """Values `tag-P-I`, spread evenly; returns the set produced."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    values = set()
    for i in range(per_partition):
        for part in range(partitions):
            v = f"{tag}-{part}-{i}"
            p.produce(topic, value=v.encode(), partition=part)
            values.add(v)
    assert p.flush(TIMEOUT) == 0
    return values


def setup_topic(
    bootstrap: str, partitions: int, per_partition: int, tag: str, prefix: str = "g"
) -> tuple[str, set[str]]:
    """A new topic already holding `per_partition` tagged records per partition."""
    name = create_topic(bootstrap, partitions, prefix)
    return name, produce(bootstrap, name, partitions, per_partition, tag)
