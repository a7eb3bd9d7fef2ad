"""Transactions with librdkafka (confluent-kafka) unmodified: commit and abort
visibility under read_committed and read_uncommitted, offsets sent to the
transaction, zombie fencing, timeouts, and a broker killed mid-transaction."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import (
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)

from harness import BrokerProcess
from wire import create_topic


def txn_producer(bootstrap: str, tid: str, **extra: object) -> Producer:
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": tid,
            "linger.ms": 5,
            **extra,
        }
    )
    p.init_transactions(30)
    return p


def consume_all(
    bootstrap: str, topic: str, partitions: int, isolation: str, expect: int, group: str = ""
) -> list[bytes]:
    """Values of every record readable at `isolation`, once at least
    `expect` have arrived and then a further idle second brought nothing."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"g-{topic}-{isolation}",
            "isolation.level": isolation,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    idle_since = None
    try:
        while time.monotonic() < deadline:
            batch = [m for m in c.consume(500, 0.5) if m.error() is None]
            values.extend(m.value() for m in batch)
            if len(values) >= expect:
                if batch:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > 1.0:
                    break
    finally:
        c.close()
    return values


FAST_SWEEP = {"SHOAL_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS": "100"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """This module's broker sweeps for timed-out transactions every 100 ms."""
    b = BrokerProcess(tmp_path_factory.mktemp("broker") / "data", env=FAST_SWEEP).start()
    yield b
    b.stop()


@pytest.fixture
def topic(broker: BrokerProcess, topic_name: str) -> Iterator[str]:
    assert int(create_topic(broker.bootstrap, topic_name, partitions=3)) == 0
    yield topic_name


def test_commit_and_abort_visibility(broker: BrokerProcess, topic: str) -> None:
    p = txn_producer(broker.bootstrap, f"tx-{topic}")
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, value=f"c1-{i}".encode(), partition=i % 3)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, value=f"a-{i}".encode(), partition=i % 3)
    p.flush(30)
    p.abort_transaction(30)
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, value=f"c2-{i}".encode(), partition=i % 3)
    p.commit_transaction(30)
    committed = consume_all(broker.bootstrap, topic, 3, "read_committed", 60)
    assert sorted(committed) == sorted(
        [f"c1-{i}".encode() for i in range(30)] + [f"c2-{i}".encode() for i in range(30)]
    )
    everything = consume_all(broker.bootstrap, topic, 3, "read_uncommitted", 90)
    assert len(everything) == 90
    assert {v for v in everything if v.startswith(b"a-")} == {f"a-{i}".encode() for i in range(30)}


def test_open_transaction_holds_read_committed_back(broker: BrokerProcess, topic: str) -> None:
    p = txn_producer(broker.bootstrap, f"tx-{topic}")
    p.begin_transaction()
    p.produce(topic, value=b"pending", partition=0)
    p.flush(30)
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"w-{topic}",
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        tp = TopicPartition(topic, 0)
        # high watermark counts the record; the last stable offset does not
        assert c.get_watermark_offsets(tp, timeout=10)[1] == 1
        stable = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": f"w2-{topic}",
                "isolation.level": "read_committed",
            }
        )
        try:
            assert stable.get_watermark_offsets(tp, timeout=10)[1] == 0
        finally:
            stable.close()
    finally:
        c.close()
    p.commit_transaction(30)
    assert consume_all(broker.bootstrap, topic, 3, "read_committed", 1) == [b"pending"]


def test_send_offsets_to_transaction(broker: BrokerProcess, topic: str) -> None:
    group = f"eos-{topic}"
    p = txn_producer(broker.bootstrap, f"tx-{topic}")
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    tps = [TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 7)]
    try:
        p.begin_transaction()
        p.produce(topic, value=b"x", partition=2)
        p.send_offsets_to_transaction(tps, c.consumer_group_metadata(), 30)
        p.abort_transaction(30)
        got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert [t.offset for t in got] == [-1001, -1001]  # aborted: nothing committed
        p.begin_transaction()
        p.produce(topic, value=b"y", partition=2)
        p.send_offsets_to_transaction(tps, c.consumer_group_metadata(), 30)
        p.commit_transaction(30)
        got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert [t.offset for t in got] == [5, 7]
    finally:
        c.close()


def test_zombie_is_fenced(broker: BrokerProcess, topic: str) -> None:
    tid = f"tx-{topic}"
    old = txn_producer(broker.bootstrap, tid)
    old.begin_transaction()
    old.produce(topic, value=b"zombie", partition=0)
    old.flush(30)
    new = txn_producer(broker.bootstrap, tid)  # aborts the old one's transaction
    new.begin_transaction()
    new.produce(topic, value=b"new", partition=0)
    new.commit_transaction(30)
    with pytest.raises(KafkaException) as info:
        old.produce(topic, value=b"late", partition=0)
        old.commit_transaction(30)
    assert info.value.args[0].fatal() or "fenced" in str(info.value).lower()
    assert consume_all(broker.bootstrap, topic, 3, "read_committed", 1) == [b"new"]


def test_timed_out_transaction_is_aborted(broker: BrokerProcess, topic: str) -> None:
    slow = txn_producer(broker.bootstrap, f"slow-{topic}", **{"transaction.timeout.ms": 1000})
    slow.begin_transaction()
    slow.produce(topic, value=b"timed-out", partition=0)
    slow.flush(30)
    other = txn_producer(broker.bootstrap, f"other-{topic}")
    other.begin_transaction()
    other.produce(topic, value=b"after", partition=0)
    other.commit_transaction(30)
    # the consumer moves past the aborted transaction once it times out
    assert consume_all(broker.bootstrap, topic, 3, "read_committed", 1) == [b"after"]
    with pytest.raises(KafkaException):
        slow.commit_transaction(10)  # fenced by the abort's epoch bump
    assert (
        f"'slow-{topic}': aborting the open transaction (open longer than its timeout of 1000 ms)"
        in broker.log()
    )


def test_kill_mid_transaction(fresh_broker: BrokerProcess, topic_name: str) -> None:
    """A broker killed -9 with two transactions open: after the restart one
    producer commits its transaction whole, the other's times out and is
    aborted whole; read_committed sees exactly the first."""
    b = fresh_broker
    b.env.update(FAST_SWEEP)
    b.start()
    assert int(create_topic(b.bootstrap, topic_name, partitions=3)) == 0
    dying = txn_producer(b.bootstrap, "tx-dies", **{"transaction.timeout.ms": 2000})
    living = txn_producer(b.bootstrap, "tx-lives", **{"transaction.timeout.ms": 60_000})
    dying.begin_transaction()
    living.begin_transaction()
    for i in range(9):
        dying.produce(topic_name, value=f"d{i}".encode(), partition=i % 3)
        living.produce(topic_name, value=f"l{i}".encode(), partition=i % 3)
    dying.flush(30)  # acknowledged: durable before the kill
    living.flush(30)
    b.kill()
    b.start()
    living.commit_transaction(30)
    kept = {f"l{i}".encode() for i in range(9)}
    # the aborted transaction starts first in each partition: these arrive
    # only once it has timed out and the last stable offset moved past it
    assert sorted(consume_all(b.bootstrap, topic_name, 3, "read_committed", 9)) == sorted(kept)
    everything = consume_all(b.bootstrap, topic_name, 3, "read_uncommitted", 18)
    assert set(everything) == kept | {f"d{i}".encode() for i in range(9)}
