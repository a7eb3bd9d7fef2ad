"""`shoal serve` as an operator meets it: bad input is named, precedence holds, signals stop it.

Configuration comes from a TOML file, SHOAL_* environment variables and flags, in
rising precedence; the tests read the effective value back through Kafka Metadata.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient

from harness import BrokerProcess, free_port

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal",
    reason="tests the shoal command line itself",
)

TIMEOUT = 15.0


def run_serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `shoal serve` expecting it to refuse to start (bounded: a start would hang)."""
    addr = f"127.0.0.1:{free_port()}"
    defaults = {"--listen": addr, "--data-dir": str(tmp_path / "data")}
    given = set(args)
    cmd = [sys.executable, "-m", "shoal", "serve"]
    for flag, value in defaults.items():
        if flag not in given:
            cmd += [flag, value]
    return subprocess.run(
        [*cmd, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def write_toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / f"shoal-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(body)
    return path


def auto_created_partitions(bootstrap: str) -> int:
    """Produce to a new topic and count the partitions the broker gave it."""
    topic = f"auto-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": bootstrap})
    errors: list[KafkaError | None] = []
    producer.produce(topic, value=b"x", on_delivery=lambda e, _m: errors.append(e))
    assert producer.flush(TIMEOUT * 2) == 0
    assert errors == [None]
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=TIMEOUT)
    return len(md.topics[topic].partitions)


def test_bad_listen_option(tmp_path: Path) -> None:
    """A malformed --listen is refused with a message naming it."""
    proc = run_serve(tmp_path, "--listen", "nonsense")
    assert proc.returncode != 0
    assert "listen" in proc.stderr.lower()
    assert "ready" not in proc.stdout


def test_unknown_option(tmp_path: Path) -> None:
    """An option that does not exist is refused, naming it."""
    proc = run_serve(tmp_path, "--no-such-option", "1")
    assert proc.returncode != 0
    assert "--no-such-option" in proc.stderr


def test_bad_value_in_toml(tmp_path: Path) -> None:
    """A config file value of the wrong type names its key."""
    cfg = write_toml(tmp_path, '"num.partitions" = "lots"\n')
    proc = run_serve(tmp_path, "--config", str(cfg))
    assert proc.returncode != 0
    assert "num.partitions" in proc.stderr


def test_bad_value_in_env(tmp_path: Path) -> None:
    """An out-of-range value from the environment names its key."""
    proc = run_serve(tmp_path, env={"SHOAL_NUM_PARTITIONS": "-3"})
    assert proc.returncode != 0
    assert "num.partitions" in proc.stderr or "SHOAL_NUM_PARTITIONS" in proc.stderr


def test_file_then_env_precedence(tmp_path: Path) -> None:
    """num.partitions from the file applies; the environment overrides the file."""
    cfg = write_toml(tmp_path, '"num.partitions" = 2\n')
    b = BrokerProcess(tmp_path / "file", args=["--config", str(cfg)]).start()
    try:
        assert auto_created_partitions(b.bootstrap) == 2
    finally:
        assert b.stop() == 0
    b = BrokerProcess(
        tmp_path / "env", args=["--config", str(cfg)], env={"SHOAL_NUM_PARTITIONS": "3"}
    ).start()
    try:
        assert auto_created_partitions(b.bootstrap) == 3
    finally:
        assert b.stop() == 0


def test_flags_override_env(tmp_path: Path) -> None:
    """--listen/--advertise win over SHOAL_LISTEN/SHOAL_ADVERTISE: Metadata shows the flag."""
    other = f"127.0.0.1:{free_port()}"
    b = BrokerProcess(
        tmp_path / "data", env={"SHOAL_LISTEN": other, "SHOAL_ADVERTISE": other}
    ).start()
    try:
        md = AdminClient({"bootstrap.servers": b.bootstrap}).list_topics(timeout=TIMEOUT)
        assert [f"{m.host}:{m.port}" for m in md.brokers.values()] == [b.bootstrap]
    finally:
        assert b.stop() == 0


def test_auto_create_disabled(tmp_path: Path) -> None:
    """With auto.create.topics.enable=false a new topic is UNKNOWN_TOPIC_OR_PARTITION."""
    cfg = write_toml(tmp_path, '"auto.create.topics.enable" = false\n')
    b = BrokerProcess(tmp_path / "data", args=["--config", str(cfg)]).start()
    try:
        topic = f"missing-{uuid.uuid4().hex[:8]}"
        producer = Producer(
            {"bootstrap.servers": b.bootstrap, "topic.metadata.propagation.max.ms": 2000}
        )
        md = producer.list_topics(topic, timeout=TIMEOUT)  # Metadata allowing auto-create
        err = md.topics[topic].error
        assert err is not None and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        errors: list[KafkaError | None] = []
        producer.produce(topic, value=b"x", on_delivery=lambda e, _m: errors.append(e))
        producer.flush(TIMEOUT * 2)
        assert len(errors) == 1 and errors[0] is not None
        assert errors[0].code() in (KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART)
        admin = AdminClient({"bootstrap.servers": b.bootstrap})
        assert topic not in admin.list_topics(timeout=TIMEOUT).topics
    finally:
        assert b.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGINT and SIGTERM stop the broker with exit code 0, even with a client connected."""
    b = BrokerProcess(tmp_path / "data").start()
    try:
        producer = Producer({"bootstrap.servers": b.bootstrap})
        producer.produce(f"sig-{uuid.uuid4().hex[:8]}", value=b"x")
        assert producer.flush(TIMEOUT * 2) == 0
        assert b.proc is not None
        b.proc.send_signal(sig)
        deadline = time.monotonic() + 30
        while b.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.proc.returncode == 0, b.log()
    finally:
        b.kill()
