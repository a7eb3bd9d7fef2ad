"""kcat (the librdkafka command-line client) against the broker, when it is installed.

kcat is what operators reach for first; it often links an older librdkafka than
confluent-kafka does, so it also covers older request versions.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from harness import BrokerProcess

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat is not installed")


def kcat(broker: BrokerProcess, *args: str, stdin: bytes | None = None) -> str:
    assert KCAT is not None
    proc = subprocess.run(
        [KCAT, "-b", broker.bootstrap, "-m", "15", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"kcat {args} exited {proc.returncode}: {proc.stderr!r}"
    return proc.stdout.decode()


def consume_json(broker: BrokerProcess, topic: str, partition: int = 0) -> list[dict[str, Any]]:
    out = kcat(broker, "-C", "-t", topic, "-p", str(partition), "-o", "beginning", "-e", "-J")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_kcat_metadata(broker: BrokerProcess, topic_name: str) -> None:
    """-L lists the single broker at its advertised address and an auto-created topic."""
    kcat(broker, "-P", "-t", topic_name, "-p", "0", stdin=b"x\n")
    meta = json.loads(kcat(broker, "-L", "-J", "-t", topic_name))
    assert [b["name"] for b in meta["brokers"]] == [broker.bootstrap]
    assert [b["id"] for b in meta["brokers"]] == [0]
    topics = {t["topic"]: t for t in meta["topics"]}
    assert topics[topic_name].get("error") is None
    assert [p["partition"] for p in topics[topic_name]["partitions"]] == [0]
    assert topics[topic_name]["partitions"][0]["leader"] == 0


def test_kcat_produce_consume(broker: BrokerProcess, topic_name: str) -> None:
    """Keyed lines with a header go in with -P and come back with -C -e, in order."""
    lines = [f"key{i}:value number {i}" for i in range(25)]
    kcat(
        broker,
        "-P",
        "-t",
        topic_name,
        "-p",
        "0",
        "-K",
        ":",
        "-H",
        "origin=kcat",
        stdin=("\n".join(lines) + "\n").encode(),
    )
    msgs = consume_json(broker, topic_name)
    assert [m["offset"] for m in msgs] == list(range(25))
    assert [(m["key"], m["payload"]) for m in msgs] == [
        (f"key{i}", f"value number {i}") for i in range(25)
    ]
    assert all(m["headers"] == ["origin", "kcat"] for m in msgs)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_kcat_compressed(broker: BrokerProcess, topic_name: str, codec: str) -> None:
    """Batches compressed by kcat's librdkafka come back intact."""
    payloads = [f"{codec}-{i}-" + "abc" * i for i in range(50)]
    kcat(
        broker,
        "-P",
        "-t",
        topic_name,
        "-p",
        "0",
        "-z",
        codec,
        stdin=("\n".join(payloads) + "\n").encode(),
    )
    msgs = consume_json(broker, topic_name)
    assert [m["offset"] for m in msgs] == list(range(50))
    assert [m["payload"] for m in msgs] == payloads
