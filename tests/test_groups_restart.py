"""The broker is killed (SIGKILL) and restarted in the middle of a group's life.

Two confluent-kafka members consume with a synchronous commit after every record,
then consume a window of records without committing, then the broker dies. After
the restart they rejoin on their own and resume from their commits: the
uncommitted window is delivered again, nothing committed before it is, and every
record produced after the restart arrives exactly once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from harness import BrokerProcess

TIMEOUT = 60.0
PARTITIONS = 4
GROUP_ENV = {
    "SHOAL_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    "SHOAL_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
}


def produce(bootstrap: str, topic: str, per_partition: int, tag: str) -> set[str]:
    p = Producer({"bootstrap.servers": bootstrap})
    values = set()
    for i in range(per_partition):
        for part in range(PARTITIONS):
            v = f"{tag}-{part}-{i}"
            p.produce(topic, value=v.encode(), partition=part)
            values.add(v)
    assert p.flush(TIMEOUT) == 0
    return values


class Member:
    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.c = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 3000,
                "heartbeat.interval.ms": 250,
                "reconnect.backoff.max.ms": 500,
            }
        )
        self.c.subscribe([topic])
        self.commit = True
        self.committed: list[str] = []  # consumed and committed
        self.uncommitted: list[str] = []  # consumed while commits were off

    def poll(self) -> None:
        m = self.c.poll(0.05)
        if m is None or m.error():
            return
        value = m.value()
        assert value is not None
        if not self.commit:
            self.uncommitted.append(value.decode())
            return
        try:
            self.c.commit(message=m, asynchronous=False)
        except KafkaException:
            try:
                self.c.seek(TopicPartition(m.topic(), m.partition(), m.offset()))
            except KafkaException:
                pass
            return
        self.committed.append(value.decode())


def poll_until(members: list[Member], cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for m in members:
            m.poll()
        if cond():
            return
    raise AssertionError(f"timed out waiting for {what}")


def test_broker_restart_mid_group(tmp_path: Path) -> None:
    broker = BrokerProcess(tmp_path / "data", env=GROUP_ENV).start()
    members: list[Member] = []
    try:
        topic = f"rs-{uuid.uuid4().hex[:10]}"
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[
            topic
        ].result(TIMEOUT)
        group = f"grp-{uuid.uuid4().hex[:8]}"
        before = produce(broker.bootstrap, topic, 50, "a")
        members.extend(Member(broker.bootstrap, group, topic) for _ in range(2))

        def committed() -> list[str]:
            return [v for m in members for v in m.committed]

        def count(values: list[str], tag: str) -> int:
            return sum(v.startswith(tag) for v in values)

        poll_until(members, lambda: len(committed()) >= len(before), "the first records")
        assert sorted(committed()) == sorted(before)
        for m in members:
            m.commit = False
        window = produce(broker.bootstrap, topic, 10, "w")
        poll_until(
            members,
            lambda: sum(len(m.uncommitted) for m in members) >= len(window),
            "the uncommitted window",
        )
        assert sorted(v for m in members for v in m.uncommitted) == sorted(window)

        broker.kill()
        broker.start()
        for m in members:
            m.commit = True
        after = produce(broker.bootstrap, topic, 25, "c")
        poll_until(
            members,
            lambda: (
                count(committed(), "w-") >= len(window) and count(committed(), "c-") >= len(after)
            ),
            "the window again and the records produced after the restart",
        )
        time.sleep(0.5)
        for m in members:
            m.poll()
        got = committed()
        assert count(got, "a-") == len(before), "nothing committed before the window again"
        redelivered = [v for v in got if v.startswith("w-")]
        assert sorted(redelivered) == sorted(window), "the uncommitted window, once more"
        assert sorted(v for v in got if v.startswith("c-")) == sorted(after)
    finally:
        for m in members:
            m.c.close()
        broker.stop()
