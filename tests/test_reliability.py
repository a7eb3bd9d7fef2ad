"""Crash and fault tests of the storage contract: acknowledged means durable,
exactly once, in order, at its offset."""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from harness import BrokerProcess, s3_endpoint
from proxy import CuttingProxy

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's storage engine"
)


class Load:
    """Producer threads writing unique values; remembers what was acknowledged."""

    def __init__(self, bootstrap: str, topic: str, producers: int, partitions: int) -> None:
        self.acked: dict[bytes, tuple[int, int]] = {}  # value -> (partition, offset)
        self.errors: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(bootstrap, topic, i, partitions), daemon=True)
            for i in range(producers)
        ]

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def _run(self, bootstrap: str, topic: str, n: int, partitions: int) -> None:
        p = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 120_000,
                "reconnect.backoff.max.ms": 1000,
            }
        )

        def on_delivery(err: Any, msg: Any) -> None:
            with self._lock:
                if err is None:
                    self.acked[msg.value()] = (msg.partition(), msg.offset())
                else:
                    self.errors.append(str(err))

        i = 0
        while not self._stop.is_set():
            p.produce(
                topic, value=b"p%d-%08d" % (n, i), partition=i % partitions, on_delivery=on_delivery
            )
            i += 1
            with self._lock:
                self.sent += 1
            if i % 20 == 0:
                p.poll(0.01)
        p.flush(120)

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(150)


def read_everything(
    bootstrap: str, topic: str, partitions: int
) -> dict[int, list[tuple[int, bytes]]]:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "verify",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    c.assign([TopicPartition(topic, p, -2) for p in range(partitions)])
    out: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    eof: set[int] = set()
    deadline = time.monotonic() + 120
    while len(eof) < partitions and time.monotonic() < deadline:
        for m in c.consume(1000, 0.5):
            if m.error():
                if m.error().code() == -191:
                    eof.add(m.partition())
                continue
            out[m.partition()].append((m.offset(), m.value()))
    c.close()
    assert len(eof) == partitions, "did not reach the end of every partition"
    return out


def check(load: Load, got: dict[int, list[tuple[int, bytes]]]) -> None:
    seen: dict[bytes, tuple[int, int]] = {}
    for p, records in got.items():
        offsets = [o for o, _ in records]
        assert offsets == list(range(len(offsets))), f"partition {p}: offsets not dense from 0"
        for o, v in records:
            assert v not in seen, f"duplicate {v!r} at {p}/{o} and {seen[v]}"
            seen[v] = (p, o)
    for value, where in load.acked.items():
        assert seen.get(value) == where, (
            f"acknowledged {value!r} at {where} read as {seen.get(value)}"
        )


def create(bootstrap: str, topic: str, partitions: int, **configs: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, partitions, 1, config=configs)]).values():
        f.result(30)


def test_kill_9_during_sustained_produce(fresh_broker: BrokerProcess, topic_name: str) -> None:
    b = fresh_broker.start()
    create(b.bootstrap, topic_name, 4)
    load = Load(b.bootstrap, topic_name, producers=3, partitions=4).start()
    rng = random.Random(1234)
    for _ in range(3):
        time.sleep(rng.uniform(0.5, 2.0))
        b.kill()
        time.sleep(rng.uniform(0.1, 0.5))
        b.start()
    time.sleep(1.0)
    load.stop()
    assert len(load.acked) > 500, f"too little load to mean anything: {len(load.acked)}"
    assert not load.errors, load.errors[:3]
    check(load, read_everything(b.bootstrap, topic_name, 4))


@pytest.fixture
def s3_behind_proxy(tmp_path: Any) -> Iterator[tuple[BrokerProcess, CuttingProxy]]:
    if os.environ.get("SHOAL_TEST_STORE") == "s3":
        pytest.skip("runs once, in the default pass: it brings its own S3")
    s3 = s3_endpoint()
    port = int(s3["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = CuttingProxy(port).start()
    env = {**s3, "AWS_ENDPOINT_URL": f"http://{proxy.address}"}
    b = BrokerProcess(
        tmp_path / "data",
        env=env,
        args=["--objects", f"s3://{s3['SHOAL_TEST_BUCKET']}/outage-{tmp_path.name}"],
    )
    b.start()
    yield b, proxy
    b.kill()
    proxy.stop()


def test_object_store_outage_slowness_and_recovery(
    s3_behind_proxy: tuple[BrokerProcess, CuttingProxy], topic_name: str
) -> None:
    """Errors, a slow store and a 30 s outage: producers wait or retry, nothing
    acknowledged is lost or doubled, and the broker recovers by itself."""
    b, proxy = s3_behind_proxy
    create(b.bootstrap, topic_name, 2)
    load = Load(b.bootstrap, topic_name, producers=2, partitions=2).start()
    time.sleep(1.0)
    proxy.delay = 0.2  # slow responses
    time.sleep(2.0)
    proxy.delay = 0.0
    proxy.set_down(True)  # the outage: connections refused
    time.sleep(30.0)
    before_restore = len(load.acked)
    proxy.set_down(False)
    deadline = time.monotonic() + 60
    while len(load.acked) <= before_restore + 100 and time.monotonic() < deadline:
        time.sleep(0.2)
    load.stop()
    assert len(load.acked) > before_restore + 100, "broker did not recover after the outage"
    assert not load.errors, load.errors[:3]
    assert "failed (attempt 1), retrying" in b.log()
    check(load, read_everything(b.bootstrap, topic_name, 2))


def test_compaction_and_retention_during_produce_and_catch_up(
    fresh_broker: BrokerProcess, topic_name: str
) -> None:
    b = fresh_broker
    b.env.update(
        {
            "SHOAL_LOG_RETENTION_CHECK_INTERVAL_MS": "300",
            "SHOAL_COMPACTION_INTERVAL_MS": "300",
            "SHOAL_COMPACTION_MIN_AGE_MS": "0",
            "SHOAL_OBJECT_DELETE_GRACE_MS": "500",
            "SHOAL_COMPACTION_BLOCK_BYTES": "8192",
            "SHOAL_LOG_CACHE_BYTES": "65536",
        }
    )
    b.start()
    create(b.bootstrap, topic_name, 2, **{"retention.bytes": "400000"})
    load = Load(b.bootstrap, topic_name, producers=2, partitions=2).start()
    c = Consumer(
        {
            "bootstrap.servers": b.bootstrap,
            "group.id": "catch-up",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "max.partition.fetch.bytes": 16384,
        }
    )
    time.sleep(2.0)  # a backlog to catch up on, from the object store
    c.assign([TopicPartition(topic_name, p, -2) for p in range(2)])
    got: dict[int, list[int]] = {0: [], 1: []}
    # At least 8 s, and on until compaction and retention have both run under
    # the load (a slow machine, e.g. on moto's S3, takes longer to fill the
    # retention budget).
    start = time.monotonic()
    while True:
        for m in c.consume(200, 0.2):
            if m.error() is None:
                got[m.partition()].append(m.offset())
        elapsed = time.monotonic() - start
        log = b.log()
        if elapsed > 60 or (
            elapsed > 8 and "compacted" in log and "retention moved log start" in log
        ):
            break
    load.stop()
    lows = {}
    for p in range(2):
        lo, _hi = c.get_watermark_offsets(TopicPartition(topic_name, p), timeout=10)
        lows[p] = lo
        offs = got[p]
        assert offs, f"partition {p}: nothing consumed"
        # In order and never twice; a jump forward only over trimmed records.
        assert all(b2 > a for a, b2 in itertools.pairwise(offs)), f"partition {p}"
        gaps = [(a, b2) for a, b2 in itertools.pairwise(offs) if b2 != a + 1]
        assert all(b2 <= lo for _a, b2 in gaps), (
            f"partition {p}: skipped retained records {gaps[:3]}"
        )
    c.close()
    log = b.log()
    assert "compacted" in log, "no compaction round under the load"
    assert "retention moved log start" in log, "retention never trimmed under the load"
    assert any(lo > 0 for lo in lows.values())
