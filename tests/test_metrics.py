"""The broker's Prometheus endpoint reports what the engine did: a record
produced, the broker restarted, then read back from its object (cold caches)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from harness import BrokerProcess, free_port


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    out = {}
    for line in text.decode().splitlines():
        if line.startswith("shoal_"):
            name, value = line.split()
            out[name] = float(value)
    return out


def test_metrics_follow_produce_and_a_cold_read(tmp_path: Path, topic_name: str) -> None:
    port = free_port()
    broker = BrokerProcess(
        tmp_path / "data",
        env={"SHOAL_METRICS_LISTEN": f"127.0.0.1:{port}", "SHOAL_LOG_CACHE_BYTES": "8388608"},
    ).start()
    try:
        p = Producer({"bootstrap.servers": broker.bootstrap})
        p.produce(topic_name, value=b"v" * 5000)
        assert p.flush(30) == 0
        produced = scrape(port)
        assert produced["shoal_wal_objects_committed_total"] >= 1
        assert produced["shoal_wal_bytes_committed_total"] > 5000
        assert produced["shoal_log_cache_max_bytes"] == 8388608  # what the cache fills to
        assert 5000 < produced["shoal_log_cache_bytes"] < 8388608
        broker.restart()  # cold caches: the read goes to the object
        c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "m"})
        c.assign([TopicPartition(topic_name, 0, 0)])
        msg = c.poll(30)
        c.close()
        assert msg is not None and msg.value() == b"v" * 5000
        read = scrape(port)
        assert read["shoal_block_cache_misses_total"] >= 1
        assert read["shoal_catchup_read_bytes_total"] > 5000
        assert read["shoal_catchup_paced_seconds_total"] == 0  # no producer since the restart
    finally:
        broker.stop()
