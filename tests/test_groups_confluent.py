"""Consumer groups through confluent-kafka (librdkafka), unmodified.

Members that must be killed run as subprocesses (tests/group_worker.py); the
others are in-process consumers polled round-robin from the test thread, which
is where librdkafka runs their rebalance callbacks. Every record is printed or
recorded only after its offset is committed synchronously, so "exactly once"
is a property the broker's group protocol must deliver, not the client's luck.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from group_data import create_topic, produce
from harness import BrokerProcess

TIMEOUT = 60.0
SESSION_MS = 3000
GROUP_ENV = {
    "SHOAL_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    "SHOAL_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
}
WORKER = str(Path(__file__).with_name("group_worker.py"))


@pytest.fixture(scope="module")
def gbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("groups") / "data", env=GROUP_ENV).start()
    yield b
    b.stop()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> float:
    """Poll until cond(); returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Worker:
    """A group member subprocess and the events it printed."""

    def __init__(self, bootstrap: str, group: str, topic: str, **conf: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, WORKER, bootstrap, group, topic, json.dumps(conf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self.assigned: set[int] = set()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._lock:
                self.events.append(event)
                if event["event"] == "assign":
                    self.assigned = set(event["partitions"])
                elif event["event"] == "revoke":
                    self.assigned -= set(event["partitions"])

    def values(self) -> list[str]:
        with self._lock:
            return [e["value"] for e in self.events if e["event"] == "msg"]

    def assignment(self) -> set[int]:
        with self._lock:
            return set(self.assigned)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def all_values(ws: list[Worker]) -> list[str]:
    return [v for w in ws for v in w.values()]


def test_three_members_exactly_once_and_kill(gbroker: BrokerProcess, workers: list[Worker]) -> None:
    """Three members split six partitions and consume every record exactly once.
    One is killed: its partitions move to the others once its session expires, and
    records produced afterwards are still consumed exactly once. A fresh member
    then joins and picks up from the committed offsets."""
    topic = create_topic(gbroker.bootstrap, 6)
    group = f"grp-{uuid.uuid4().hex[:8]}"
    conf = {"session.timeout.ms": SESSION_MS}
    expected = produce(gbroker.bootstrap, topic, 6, 50, "a")
    workers.extend(Worker(gbroker.bootstrap, group, topic, **conf) for _ in range(3))
    wait_for(lambda: len(all_values(workers)) >= len(expected), "first 300 records")
    wait_for(
        lambda: (
            sorted(p for w in workers for p in w.assignment()) == list(range(6))
            and all(w.assignment() for w in workers)
        ),
        "three members sharing six partitions",
    )
    got = all_values(workers)
    assert sorted(got) == sorted(expected), "each record exactly once"

    victim, survivors = workers[0], workers[1:]
    orphaned = victim.assignment()
    victim.kill()
    moved_after = wait_for(
        lambda: set().union(*(w.assignment() for w in survivors)) == set(range(6)),
        "the killed member's partitions to move",
        timeout=SESSION_MS / 1000 * 5,
    )
    print(f"partitions {sorted(orphaned)} moved {moved_after:.1f}s after the kill")
    more = produce(gbroker.bootstrap, topic, 6, 50, "b")
    expected |= more
    wait_for(lambda: len(all_values(workers)) >= len(expected), "records after the kill")

    late = Worker(gbroker.bootstrap, group, topic, **conf)
    workers.append(late)
    wait_for(lambda: bool(late.assignment()), "the new member's assignment")
    expected |= produce(gbroker.bootstrap, topic, 6, 20, "c")
    wait_for(lambda: len(all_values(workers)) >= len(expected), "records after the join")
    time.sleep(0.5)  # let any duplicate show up before judging
    got = all_values(workers)
    assert len(got) == len(set(got)), "no record twice"
    assert set(got) == expected
    assert not any(v.startswith(("a-", "b-")) for v in late.values()), "resumed from commits"


def consumer(bootstrap: str, group: str, **conf: Any) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": 250,
            **conf,
        }
    )


class Member:
    """An in-process consumer recording its rebalance callbacks and records."""

    def __init__(self, bootstrap: str, group: str, topic: str, **conf: Any) -> None:
        self.c = consumer(bootstrap, group, **conf)
        self.cooperative = "cooperative" in str(conf.get("partition.assignment.strategy", ""))
        self.assigned: set[int] = set()
        self.assigns: list[set[int]] = []
        self.revokes: list[set[int]] = []
        self.values: list[str] = []
        self.c.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, c: Consumer, parts: list[TopicPartition]) -> None:
        ps = {p.partition for p in parts}
        self.assigns.append(ps)
        if self.cooperative:  # incremental: the callback names only what changes
            self.assigned |= ps
        else:
            self.assigned = ps

    def _on_revoke(self, c: Consumer, parts: list[TopicPartition]) -> None:
        ps = {p.partition for p in parts}
        self.revokes.append(ps)
        self.assigned -= ps

    def poll(self) -> None:
        m: Message | None = self.c.poll(0.05)
        if m is None or m.error():
            return
        try:
            self.c.commit(message=m, asynchronous=False)
        except KafkaException:
            try:
                self.c.seek(TopicPartition(m.topic(), m.partition(), m.offset()))
            except KafkaException:
                pass
            return
        value = m.value()
        assert value is not None
        self.values.append(value.decode())

    def close(self) -> None:
        self.c.close()


def poll_until(members: list[Member], cond: Callable[[], bool], what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < TIMEOUT:
        for m in members:
            m.poll()
        if cond():
            return time.monotonic() - start
    raise AssertionError(f"timed out waiting for {what}")


def settle(members: list[Member], seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for m in members:
            m.poll()


def test_restarted_consumer_resumes_from_commit(gbroker: BrokerProcess) -> None:
    """A member that commits and leaves is followed by one that starts exactly at
    the committed offset."""
    topic = create_topic(gbroker.bootstrap, 1)
    group = f"grp-{uuid.uuid4().hex[:8]}"
    produce(gbroker.bootstrap, topic, 1, 100, "r")
    first = Member(gbroker.bootstrap, group, topic)
    poll_until([first], lambda: len(first.values) >= 40, "40 records")
    first.close()
    second = Member(gbroker.bootstrap, group, topic)
    try:
        poll_until([second], lambda: len(second.values) >= 100 - len(first.values), "the rest")
        assert second.values[0] == f"r-0-{len(first.values)}"
        assert sorted(first.values + second.values) == sorted(f"r-0-{i}" for i in range(100))
    finally:
        second.close()


def test_cooperative_sticky(gbroker: BrokerProcess) -> None:
    """cooperative-sticky: when a third member joins, the first two give up only
    the partitions that move to it, keep the rest without a revocation, and every
    record is still consumed exactly once."""
    topic = create_topic(gbroker.bootstrap, 6)
    group = f"grp-{uuid.uuid4().hex[:8]}"
    conf = {"partition.assignment.strategy": "cooperative-sticky"}
    expected = produce(gbroker.bootstrap, topic, 6, 30, "x")
    members = [Member(gbroker.bootstrap, group, topic, **conf) for _ in range(2)]
    try:
        poll_until(
            members,
            lambda: (
                sorted(p for m in members for p in m.assigned) == list(range(6))
                and all(len(m.assigned) == 3 for m in members)
            ),
            "two members with three partitions each",
        )
        before = [set(m.assigned) for m in members]
        revokes_before = [len(m.revokes) for m in members]
        third = Member(gbroker.bootstrap, group, topic, **conf)
        members.append(third)
        poll_until(
            members,
            lambda: (
                all(len(m.assigned) == 2 for m in members)
                and sorted(p for m in members for p in m.assigned) == list(range(6))
            ),
            "three members with two partitions each",
        )
        for m, had in zip(members[:2], before, strict=True):
            assert m.assigned <= had, "sticky: old members keep a subset"
        for m, n, had in zip(members[:2], revokes_before, before, strict=True):
            revoked = set().union(*m.revokes[n:])
            assert revoked == had - m.assigned, "only moved partitions are revoked"
            assert revoked <= third.assigned
        expected |= produce(gbroker.bootstrap, topic, 6, 30, "y")
        poll_until(
            members, lambda: sum(len(m.values) for m in members) >= len(expected), "all records"
        )
        got = [v for m in members for v in m.values]
        assert len(got) == len(set(got)) and set(got) == expected
    finally:
        for m in members:
            m.close()


def test_static_membership_restart(gbroker: BrokerProcess) -> None:
    """group.instance.id: a member that restarts within its session timeout gets
    its partitions back, and the others see no revocation or new assignment."""
    topic = create_topic(gbroker.bootstrap, 6)
    group = f"grp-{uuid.uuid4().hex[:8]}"
    conf = {"session.timeout.ms": 20_000}

    def member(i: int) -> Member:
        return Member(gbroker.bootstrap, group, topic, **{"group.instance.id": f"i{i}", **conf})

    members = [member(i) for i in range(3)]
    try:
        poll_until(
            members,
            lambda: (
                sorted(p for m in members for p in m.assigned) == list(range(6))
                and all(len(m.assigned) == 2 for m in members)
            ),
            "three static members with two partitions each",
        )
        settle(members, 1.0)  # a trailing start-up rebalance would blur the baseline
        baseline = [(len(m.assigns), len(m.revokes)) for m in members]
        old = members[1]
        old_partitions = set(old.assigned)
        old.close()
        restarted = member(1)
        others = [members[0], members[2]]
        took = poll_until(
            [restarted, *others], lambda: bool(restarted.assigned), "the restarted member"
        )
        assert restarted.assigned == old_partitions
        expected = produce(gbroker.bootstrap, topic, 6, 10, "s")
        poll_until(
            [restarted, *others],
            lambda: sum(len(m.values) for m in [restarted, *others]) >= len(expected),
            "records after the restart",
        )
        for m, (assigns, revokes) in zip(others, [baseline[0], baseline[2]], strict=True):
            assert (len(m.assigns), len(m.revokes)) == (assigns, revokes), "no rebalance"
        print(f"static member back with {sorted(old_partitions)} after {took:.2f}s")
        members[1] = restarted
    finally:
        for m in members:
            m.close()
