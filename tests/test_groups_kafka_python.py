"""Consumer groups through kafka-python: its own implementation of the group
protocol (JoinGroup/SyncGroup/Heartbeat/OffsetCommit/OffsetFetch versions that
librdkafka never sends). Two members in one group consume every record exactly
once; a member that commits and leaves is followed by one that resumes at the
commit.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError

from group_data import produce, setup_topic
from harness import BrokerProcess

TIMEOUT = 60.0
# The initial rebalance delay stays on (shorter than Kafka's 3 s default). With
# none, a new group's first JoinGroup can be answered before kafka-python has the
# subscribed topic's metadata: the leader assigns nothing, rejoins when the
# metadata lands, and if that rejoin completes after poll()'s timer ran out,
# kafka-python 3.0.12 never applies its result (the join task finishes, but
# need_rejoin() is already false, so nothing awaits it): no assignment, no
# heartbeats, and the session expires. A client bug, seen in its debug log;
# Kafka's own default delay hides it the same way.
GROUP_ENV = {
    "SHOAL_GROUP_INITIAL_REBALANCE_DELAY_MS": "1000",
    "SHOAL_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
}


class Member:
    """A consumer polling in its own thread, as applications run them: kafka-python's
    poll() may block through a whole rebalance, so one thread cannot serve two
    members (each would wait for the other to rejoin)."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topic: str,
        limit: int | None = None,
        commit_each_poll: bool = True,
    ) -> None:
        self.limit = limit  # stop consuming (and close) after this many records
        # Committing after every poll keeps a rebalance exactly-once; a lone
        # member commits its position once, when it stops.
        self.commit_each_poll = commit_each_poll
        self.c = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Client defaults (45 s session, 3 s heartbeats): no test here
            # relies on a session expiring, and short ones flap on a busy machine.
        )
        self.values: list[str] = []
        self.partitions: set[int] = set()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self.limit is not None and len(self.values) >= self.limit:
                    break
                self._poll()
                self.partitions = {tp.partition for tp in self.c.assignment()}
            if not self.commit_each_poll:
                self.c.commit()
        except BaseException as exc:  # surfaced by the test, not lost in a thread
            self.errors.append(exc)
        finally:
            self.c.close()

    def _poll(self) -> None:
        batch: dict[Any, list[Any]] = self.c.poll(timeout_ms=100, max_records=20)
        records = [r for rs in batch.values() for r in rs]
        if not records:
            return
        if not self.commit_each_poll:
            self.values.extend(r.value.decode() for r in records)
            return
        try:
            self.c.commit()  # the positions after these records, synchronously
        except (CommitFailedError, KafkaError):
            for tp, rs in batch.items():  # not counted: rewind if still ours
                try:
                    self.c.seek(tp, rs[0].offset)
                except (AssertionError, KafkaError):
                    pass
            return
        self.values.extend(r.value.decode() for r in records)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        assert not self.errors, self.errors


def poll_until(members: list[Member], cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if cond():
            return
        for m in members:
            assert not m.errors, m.errors
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_members_exactly_once(tmp_path: Any) -> None:
    broker = BrokerProcess(tmp_path / "data", env=GROUP_ENV).start()
    try:
        topic, expected = setup_topic(broker.bootstrap, 4, 40, "a", prefix="kp")
        group = f"grp-{uuid.uuid4().hex[:8]}"
        members = [Member(broker.bootstrap, group, topic) for _ in range(2)]
        try:
            poll_until(
                members,
                lambda: (
                    all(m.c.assignment() for m in members)
                    and sum(len(m.values) for m in members) >= len(expected)
                ),
                "both members assigned and every record consumed",
            )
            parts = [m.partitions for m in members]
            assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == {0, 1, 2, 3}
            expected |= produce(broker.bootstrap, topic, 4, 20, "b")
            poll_until(
                members,
                lambda: sum(len(m.values) for m in members) >= len(expected),
                "the second batch",
            )
            got = [v for m in members for v in m.values]
            assert len(got) == len(set(got)) and set(got) == expected
            assert all(m.values for m in members), "both members did work"
        finally:
            for m in members:
                m.close()
    finally:
        broker.stop()


def test_commit_and_resume(tmp_path: Any) -> None:
    broker = BrokerProcess(tmp_path / "data", env=GROUP_ENV).start()
    try:
        topic, expected = setup_topic(broker.bootstrap, 1, 100, "r", prefix="kp")
        group = f"grp-{uuid.uuid4().hex[:8]}"
        first = Member(broker.bootstrap, group, topic, limit=30, commit_each_poll=False)
        poll_until([first], lambda: len(first.values) >= 30, "30 records")
        first.close()
        assert len(first.values) < 100
        second = Member(broker.bootstrap, group, topic, commit_each_poll=False)
        try:
            poll_until([second], lambda: len(first.values) + len(second.values) >= 100, "the rest")
            assert second.values[0] == f"r-0-{len(first.values)}"
            got = first.values + second.values
            assert len(got) == len(set(got)) and set(got) == expected
        finally:
            second.close()
    finally:
        broker.stop()
