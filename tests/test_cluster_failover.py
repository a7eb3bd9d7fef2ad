"""Cluster mode: three brokers on one embedded PostgreSQL and one moto S3
bucket. Metadata agreement, kill -9 failover and restart, SIGSTOP fencing."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_harness import Cluster, wait_for
from test_fetch_sessions import fetch
from wire import RawClient, topic_id

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal cluster mode"
)

PARTITIONS = 6


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path).start()
    try:
        yield c
    finally:
        c.stop()


def view(bootstrap: str, topic: str) -> tuple[set[int], dict[int, int]]:
    """(broker ids, partition -> leader) as one broker reports them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(topic, timeout=10)
    t = md.topics[topic]
    return set(md.brokers), {p: t.partitions[p].leader for p in t.partitions}


def create_topic(c: Cluster, name: str, partitions: int = PARTITIONS) -> None:
    admin = AdminClient({"bootstrap.servers": c.bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(15)


def agreed(c: Cluster, topic: str, nodes: set[int]) -> dict[int, int] | None:
    """The owners if every running broker reports the same live brokers and
    owners, every partition having a live leader; else None."""
    views = [
        view(b.bootstrap, topic) for b in c.brokers.values() if b.proc and b.proc.poll() is None
    ]
    first = views[0]
    if any(v != first for v in views) or first[0] != nodes:
        return None
    owners = first[1]
    if len(owners) != PARTITIONS or any(o not in nodes for o in owners.values()):
        return None
    return owners


class Load:
    """An idempotent producer writing keyed records from a thread; keeps
    every acknowledged (partition, offset, value) and each partition's
    acknowledgement times."""

    def __init__(self, bootstrap: str, topic: str, prefix: bytes = b"v", rate: float = 0.0) -> None:
        self.topic = topic
        self.prefix = prefix  # values are prefix + counter: distinct per Load
        self.rate = rate  # records a second (0: as fast as it goes); the soak paces
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 60000,
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self.acked: list[tuple[int, int, bytes]] = []
        self.ack_times: dict[int, list[float]] = {}
        self.errors: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _cb(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        self.acked.append((msg.partition(), msg.offset(), msg.value()))
        self.ack_times.setdefault(msg.partition(), []).append(time.monotonic())

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            for _ in range(20):
                self.producer.produce(
                    self.topic,
                    key=b"k%d" % (self.sent % 24),
                    value=self.prefix + b"%08d" % self.sent,
                    on_delivery=self._cb,
                )
                self.sent += 1
            self.producer.poll(0.01)
            ahead = self.sent / self.rate - (time.monotonic() - start) if self.rate else 0
            if ahead > 0:
                self._stop.wait(ahead)
        left = self.producer.flush(60)
        assert left == 0, f"{left} records never acknowledged"

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)
        assert not self._thread.is_alive()


def consume_all(bootstrap: str, topic: str, expected: int) -> list[tuple[int, int, bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"check-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF or msg.error().retriable()
                continue
            got.append((msg.partition(), msg.offset(), msg.value()))
        # Anything past the acknowledged records would be a phantom write.
        end = time.monotonic() + 2
        while time.monotonic() < end:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append((msg.partition(), msg.offset(), msg.value()))
    finally:
        consumer.close()
    return got


def check_exactly_once(load: Load, got: list[tuple[int, int, bytes]]) -> None:
    values = [v for _p, _o, v in got]
    assert len(values) == len(set(values)), "a record was read twice (duplicate)"
    assert set(values) == {v for _p, _o, v in load.acked}, (
        f"acked {len(load.acked)} read {len(got)}: lost or phantom records"
    )
    by_part: dict[int, list[int]] = {}
    for p, o, _v in got:
        by_part.setdefault(p, []).append(o)
    for p, offsets in by_part.items():
        assert offsets == sorted(offsets), f"partition {p} out of order"
    acked_order: dict[int, list[bytes]] = {}
    for p, _o, v in sorted(load.acked, key=lambda x: (x[0], x[1])):
        acked_order.setdefault(p, []).append(v)
    read_order: dict[int, list[bytes]] = {}
    for p, _o, v in got:
        read_order.setdefault(p, []).append(v)
    assert read_order == acked_order


def test_metadata_lists_all_brokers_and_same_owners(cluster: Cluster) -> None:
    create_topic(cluster, "spread")
    owners = wait_for(lambda: agreed(cluster, "spread", {1, 2, 3}), 20, "agreement")
    counts = {n: list(owners.values()).count(n) for n in (1, 2, 3)}
    assert counts == {1: 2, 2: 2, 3: 2}, counts
    # One topic id, whichever broker answers; fetch sessions are per broker.
    ids = {topic_id(b.bootstrap, "spread") for b in cluster.brokers.values()}
    assert len(ids) == 1, ids
    owner = cluster.brokers[owners[0]]
    other = cluster.brokers[owners[0] % 3 + 1]
    with RawClient(owner.bootstrap) as c:
        sid = fetch(c, "spread", {0: 0}, (0, 0)).session_id
        assert sid > 0
        assert fetch(c, "spread", {}, (sid, 1)).error_code == 0
    with RawClient(other.bootstrap) as c:
        assert fetch(c, "spread", {}, (sid, 2)).error_code == 70  # FETCH_SESSION_ID_NOT_FOUND


def test_kill9_failover_and_restart(cluster: Cluster) -> None:
    create_topic(cluster, "failover")
    owners = wait_for(lambda: agreed(cluster, "failover", {1, 2, 3}), 20, "agreement")
    load = Load(cluster.bootstrap, "failover").start()
    wait_for(lambda: len(load.acked) > 2000, 30, "initial load")
    victim = cluster.brokers[2]
    moved = [p for p, o in owners.items() if o == 2]
    killed = time.monotonic()
    victim.kill()
    survivors = [b for n, b in cluster.brokers.items() if n != 2]
    new = wait_for(
        lambda: (
            (o := view(survivors[0].bootstrap, "failover")[1])
            and all(o[p] in (1, 3) for p in moved)
            and o
        ),
        30,
        "the killed broker's partitions to move",
    )
    assert all(new[p] in (1, 3) for p in moved)

    def writable() -> bool:
        return all(any(t > killed for t in load.ack_times.get(p, [])) for p in moved)

    wait_for(writable, 30, "moved partitions to take writes again")
    for p in moved:
        first = min(t for t in load.ack_times[p] if t > killed)
        print(f"partition {p}: first acknowledged produce {first - killed:.2f}s after kill -9")
    victim.start()
    wait_for(lambda: agreed(cluster, "failover", {1, 2, 3}), 30, "restarted broker listed")
    time.sleep(1)
    load.stop()
    assert not load.errors, load.errors[:5]
    got = consume_all(cluster.bootstrap, "failover", len(load.acked))
    check_exactly_once(load, got)


def test_sigstop_fencing(cluster: Cluster) -> None:
    create_topic(cluster, "fencing")
    owners = wait_for(lambda: agreed(cluster, "fencing", {1, 2, 3}), 20, "agreement")
    load = Load(cluster.bootstrap, "fencing").start()
    wait_for(lambda: len(load.acked) > 1000, 30, "initial load")
    paused = cluster.brokers[3]
    assert paused.proc is not None
    moved = [p for p, o in owners.items() if o == 3]
    paused.proc.send_signal(signal.SIGSTOP)
    try:
        others = cluster.brokers[1].bootstrap
        wait_for(
            lambda: all(view(others, "fencing")[1][p] != 3 for p in moved),
            30,
            "the paused broker's partitions to move",
        )
        # Let the producer pile requests on the paused broker's socket.
        time.sleep(1)
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: "lost its lease" in paused.log(), 15, "the paused broker to step down")
    wait_for(
        lambda: paused.log().count("registered as node 3") >= 2,
        15,
        "re-registration as a fresh member",
    )
    wait_for(lambda: agreed(cluster, "fencing", {1, 2, 3}), 30, "agreement after resume")
    time.sleep(1)
    load.stop()
    assert not load.errors, load.errors[:5]
    got = consume_all(cluster.bootstrap, "fencing", len(load.acked))
    # Whatever the paused broker still held in flight was refused (fenced
    # epochs answer NOT_LEADER_OR_FOLLOWER, which the idempotent producer
    # retries): every acknowledged record once, nothing from the stale owner.
    check_exactly_once(load, got)


def test_incarnations_in_metadata(cluster: Cluster) -> None:
    """The schema is created by the brokers themselves and holds one lease row
    per broker and one controller."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from shoal.meta.store import engine_url

    async def rows() -> tuple[list[Any], list[Any]]:
        engine = create_async_engine(engine_url(cluster.url))
        async with engine.connect() as conn:
            b = list(await conn.execute(text("select node_id, incarnation from brokers")))
            c = list(await conn.execute(text("select node_id from controller")))
        await engine.dispose()
        return b, c

    brokers, controller = asyncio.run(rows())
    assert sorted(r[0] for r in brokers) == [1, 2, 3]
    assert len(controller) == 1 and controller[0][0] in (1, 2, 3)


def test_postgres_restart_under_load(tmp_path: Path) -> None:
    """The metadata store goes away and comes back: brokers wait (produce
    requests wait or time out retriably), recover by themselves, and nothing
    acknowledged is lost or doubled."""
    from cluster_harness import postgres

    c = Cluster(tmp_path).start()
    server = postgres()
    pid: int | None = None
    try:
        create_topic(c, "pg-restart")
        wait_for(lambda: agreed(c, "pg-restart", {1, 2, 3}), 20, "agreement")
        load = Load(c.bootstrap, "pg-restart").start()
        wait_for(lambda: len(load.acked) > 2000, 60, "initial load")
        # The server has served every earlier test in this process: its
        # shutdown checkpoint could take longer than the wait below (it did,
        # over 30 s, in a full suite). Flushed here, the shutdown is quick.
        server.psql("CHECKPOINT;")
        pid = server.get_pid()
        assert pid is not None
        os.kill(pid, signal.SIGINT)  # fast shutdown: every connection is dropped
        _wait_down(server, pid)
        time.sleep(2.0)
        server.ensure_postgres_running()
        before = len(load.acked)
        wait_for(lambda: len(load.acked) > before + 2000, 90, "produce to resume")
        load.stop()
        assert not load.errors, load.errors[:5]
        check_exactly_once(load, consume_all(c.bootstrap, "pg-restart", len(load.acked)))
    finally:
        c.stop()
        if pid is not None:
            # Later tests in this process share the server: up again even
            # when this one failed on the way.
            _wait_down(server, pid)
            server.ensure_postgres_running()


def _wait_down(server: Any, pid: int) -> None:
    wait_for(lambda: server.get_pid() is None or not _alive(pid), 120, "postgres down")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_topics_created_together_are_spread_evenly_and_writable_at_once(cluster: Cluster) -> None:
    """One CreateTopics of 30 topics: the broker that creates them places
    each one's partitions on the least loaded brokers, keeping its counts
    as it goes (ClusterMember._owner_counts), and opens those that are its
    own without reconciling the whole catalog for each topic."""
    names = [f"batch-{i:02d}" for i in range(30)]
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    for f in admin.create_topics([NewTopic(n, 2, 1) for n in names]).values():
        f.result(30)
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "linger.ms": 5})
    delivered: list[tuple[str, int, int]] = []
    failed: list[str] = []

    def done(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(str(err))
        else:
            delivered.append((msg.topic(), msg.partition(), msg.offset()))

    for n in names:
        for p in (0, 1):
            producer.produce(n, value=b"first", partition=p, on_delivery=done)
    assert producer.flush(60) == 0 and not failed, failed
    assert sorted(delivered) == [(n, p, 0) for n in names for p in (0, 1)]
    md = admin.list_topics(timeout=10)
    leaders = [md.topics[n].partitions[p].leader for n in names for p in (0, 1)]
    counts = {node: leaders.count(node) for node in (1, 2, 3)}
    assert max(counts.values()) - min(counts.values()) <= 1, counts
