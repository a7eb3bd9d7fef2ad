"""On S3 a producer that waits for each answer does not wait out the WAL
linger: with `wal.linger.ms` at one minute, a request past
`wal.idle.seal.bytes` is acknowledged at once (it would time out here if it
waited), while a small one still waits for the linger. Real client, moto's
S3 server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from harness import BrokerProcess, s3_endpoint
from wire import create_topic


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    s3 = s3_endpoint()
    prefix = f"idle-{uuid.uuid4().hex[:8]}"
    b = BrokerProcess(
        tmp_path / "data",
        env={**s3, "SHOAL_WAL_LINGER_MS": "60000", "SHOAL_WAL_IDLE_SEAL_BYTES": "65536"},
        args=["--objects", f"s3://{s3['SHOAL_TEST_BUCKET']}/{prefix}"],
    ).start()
    try:
        yield b
    finally:
        b.stop()


def send(bootstrap: str, value: bytes, timeout_s: float) -> int:
    """Produce one record with acks=all; its offset, or KafkaException when
    it is not acknowledged within `timeout_s`."""
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": int(timeout_s * 1000),
        }
    )
    got: list[int] = []
    failed: list[object] = []

    def report(err: object, msg: object) -> None:
        if err is not None:
            failed.append(err)
        else:
            got.append(msg.offset())  # type: ignore[attr-defined]

    p.produce("idle", value, on_delivery=report)
    p.flush(timeout_s + 10)
    if failed or not got:
        raise KafkaException(failed[0] if failed else "no delivery report")
    return got[0]


def test_a_large_request_is_acknowledged_without_the_linger(broker: BrokerProcess) -> None:
    create_topic(broker.bootstrap, "idle")
    # Well under the one-minute linger, with room for a busy machine.
    assert send(broker.bootstrap, b"x" * 100_000, timeout_s=20) == 0
    assert send(broker.bootstrap, b"y" * 100_000, timeout_s=20) == 1


def test_a_small_request_still_waits_for_the_linger(broker: BrokerProcess) -> None:
    create_topic(broker.bootstrap, "idle")
    # The broker takes records (a large one goes at once)...
    assert send(broker.bootstrap, b"x" * 100_000, timeout_s=20) == 0
    # ...and a small one waits for the 60 s linger: not acknowledged in 3 s.
    with pytest.raises(KafkaException) as refused:
        send(broker.bootstrap, b"small", timeout_s=3)
    assert refused.value.args[0].code() == KafkaError._MSG_TIMED_OUT, refused.value
