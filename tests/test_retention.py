"""Retention, compaction and object cleanup on a live broker: space is given
back in the object store, and consumers still see every retained record once,
in order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from harness import BrokerProcess

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's storage engine"
)

FAST = {
    "SHOAL_LOG_RETENTION_CHECK_INTERVAL_MS": "200",
    "SHOAL_COMPACTION_INTERVAL_MS": "200",
    "SHOAL_COMPACTION_MIN_AGE_MS": "0",
    "SHOAL_OBJECT_DELETE_GRACE_MS": "0",
    "SHOAL_OBJECT_ORPHAN_GRACE_MS": "1000",
    "SHOAL_COMPACTION_BLOCK_BYTES": "16384",
    "SHOAL_COMPACTION_STREAM_OBJECT_BYTES": "65536",
}


@pytest.fixture
def fast_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path / "data", env=FAST).start()
    yield b
    b.kill()


def objects(b: BrokerProcess) -> dict[str, int]:
    return {k: v for k, v in b.objects().items() if not k.startswith("__shoal_check__")}


def create(b: BrokerProcess, name: str, partitions: int = 1, **configs: str) -> None:
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    futures = admin.create_topics([NewTopic(name, partitions, 1, config=configs)])
    for f in futures.values():
        f.result(20)


def produce(
    b: BrokerProcess,
    topic: str,
    n: int,
    *,
    size: int = 200,
    partitions: int = 1,
    timestamp: int | None = None,
    flush_every: int = 20,
) -> None:
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 0, "enable.idempotence": True})
    for i in range(n):
        kwargs = {"timestamp": timestamp} if timestamp is not None else {}
        p.produce(topic, value=(b"%08d" % i).ljust(size, b"."), partition=i % partitions, **kwargs)
        if i % flush_every == 0:
            p.flush(10)  # many small WAL objects
    assert p.flush(30) == 0


def consume_all(
    b: BrokerProcess, topic: str, partitions: int = 1
) -> dict[int, list[tuple[int, bytes]]]:
    c = Consumer(
        {
            "bootstrap.servers": b.bootstrap,
            "group.id": "r",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    c.assign([TopicPartition(topic, p, -2) for p in range(partitions)])  # -2: beginning
    got: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    eof: set[int] = set()
    deadline = time.monotonic() + 60
    while len(eof) < partitions and time.monotonic() < deadline:
        for m in c.consume(500, 0.5):
            if m.error():
                if m.error().code() == -191:  # partition EOF
                    eof.add(m.partition())
                continue
            got[m.partition()].append((m.offset(), m.value()[:8]))
    c.close()
    return got


def watermarks(b: BrokerProcess, topic: str, partition: int = 0) -> tuple[int, int]:
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "w"})
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        return int(lo), int(hi)
    finally:
        c.close()


def wait_for(cond: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_compaction_merges_wal_objects_and_reads_survive(
    fast_broker: BrokerProcess, topic_name: str
) -> None:
    b = fast_broker
    create(b, topic_name, 3)
    produce(b, topic_name, 600, partitions=3)  # flushes often: many small WAL objects
    # Every WAL object ends up merged and deleted; compacted objects remain.
    assert wait_for(lambda: not [k for k in objects(b) if k.startswith("wal/")])
    assert [k for k in objects(b) if k.startswith("compacted/")]
    assert "compacted" in b.log()
    # Cold caches: a restart makes every read come from the compacted objects.
    b.restart()
    got = consume_all(b, topic_name, 3)
    for p in range(3):
        offsets = [o for o, _ in got[p]]
        assert offsets == list(range(200)), f"partition {p}"
        assert [int(v) for _, v in got[p]] == list(range(p, 600, 3))


def test_retention_bytes_trims_and_deletes_objects(
    fast_broker: BrokerProcess, topic_name: str
) -> None:
    b = fast_broker
    create(b, topic_name, 1, **{"retention.bytes": "20000"})
    produce(b, topic_name, 500, size=200)  # ~110 KB of batches
    assert wait_for(lambda: watermarks(b, topic_name)[0] > 0)
    lo, hi = watermarks(b, topic_name)
    assert hi == 500 and 0 < lo < 500
    got = [o for o, _ in consume_all(b, topic_name)[0]]
    # Everything retained, once, in order (retention may move on meanwhile).
    assert got and got[0] >= lo and got == list(range(got[0], 500))
    stored = sum(objects(b).values())
    assert wait_for(lambda: sum(objects(b).values()) < 90_000), stored


def test_retention_ms_trims_old_records(fast_broker: BrokerProcess, topic_name: str) -> None:
    b = fast_broker
    create(b, topic_name, 1, **{"retention.ms": "60000"})
    hour_ago = int(time.time() * 1000) - 3_600_000
    produce(b, topic_name, 100, timestamp=hour_ago)
    produce(b, topic_name, 10)  # fresh records stay
    assert wait_for(lambda: watermarks(b, topic_name)[0] == 100)
    got = consume_all(b, topic_name)[0]
    assert [o for o, _ in got] == list(range(100, 110))


def test_deleted_topic_gives_space_back(fast_broker: BrokerProcess, topic_name: str) -> None:
    b = fast_broker
    create(b, topic_name, 2)
    produce(b, topic_name, 200, partitions=2)
    assert objects(b)
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    for f in admin.delete_topics([topic_name]).values():
        f.result(20)
    assert wait_for(lambda: not objects(b))


def test_uncommitted_upload_is_collected(fast_broker: BrokerProcess) -> None:
    b = fast_broker
    key = "wal/9/crashed-before-commit.wal"
    b.put_object(key, b"x" * 100)  # older than the 1 s grace after a second
    assert key in objects(b)
    assert wait_for(lambda: key not in objects(b))
    assert "deleting uncommitted object wal/9/crashed-before-commit.wal" in b.log()


def test_storage_stats_command(fast_broker: BrokerProcess, topic_name: str) -> None:
    b = fast_broker
    create(b, topic_name, 1)
    produce(b, topic_name, 50)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal",
            "storage",
            "stats",
            "--data-dir",
            str(b.data_dir),
            "--format",
            "json",
            *b.args,
        ],
        env={**os.environ, **b.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    stats = json.loads(out.stdout)
    assert stats["topics"][topic_name]["bytes"] > 50 * 200
    live = sum(v["count"] for v in stats["objects"].values())
    assert stats["store"]["count"] >= live > 0, stats


def test_storage_stats_table_is_not_cut_in_a_pipe(fast_broker: BrokerProcess) -> None:
    b = fast_broker
    long_name = "site-" + "x" * 90  # wider than rich's 80-column default alone
    create(b, long_name, 1)
    produce(b, long_name, 5)
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "storage", "stats", "--data-dir", str(b.data_dir), *b.args],
        env={**os.environ, **b.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert long_name in out.stdout, out.stdout
    assert "…" not in out.stdout
