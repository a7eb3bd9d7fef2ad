"""The edge gateway against hostile input: its local Kafka listener survives
the frames that once killed the broker and closes stalled connections, and an
oversize MQTT payload is counted and acknowledged instead of being stored as a
record no uplink could forward. Real gateway, MQTT broker and central broker."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_harness import GatewayProcess, consume_all, gateway_config, publish, wait_for
from harness import BrokerProcess
from mqtt_broker import MqttBroker
from wire import RawClient

# Metadata v9 with a compact array count of 2^32-1 (the native decoder once
# tried to allocate 32 GiB for it and aborted the process), and Metadata v1
# with an int32 count of 2^31-1.
KILLER_FRAMES = (
    bytes.fromhex("000000170003000900000001000466757a7a00ffffffff0f000000"),
    bytes.fromhex("000000120003000100000001000466757a7a7fffffff"),
)


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("central") / "data").start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def mqtt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttBroker]:
    b = MqttBroker(tmp_path_factory.mktemp("mqtt")).start()
    yield b
    b.stop()


def test_gateway_survives_hostile_kafka_and_mqtt_input(
    tmp_path: Path, central: BrokerProcess, mqtt: MqttBroker
) -> None:
    tag = uuid.uuid4().hex[:8]
    site, topic = f"site-{tag}", f"telemetry-{tag}"
    cfg = gateway_config(
        tmp_path / "gw" / "data",
        site=site,
        mqtt_port=mqtt.port,
        central=central.bootstrap,
        routes=[{"filter": f"{tag}/+/data", "topic": topic, "key_level": 1, "qos": 1}],
        mqtt={"max_payload_bytes": 200},
        local={"broker": {"connections.max.idle.ms": 1000}},
    )
    gw = GatewayProcess(tmp_path / "gw", cfg)
    gw.start()
    try:
        local = cfg["local"]["listen"]
        host, _, port = local.rpartition(":")
        for frame in KILLER_FRAMES:
            with RawClient(local) as c:
                c.send_raw(frame)
                assert c.is_closed()
        stalled = socket.create_connection((host, int(port)))
        stalled.sendall(b"\x00\x00")
        t0 = time.monotonic()
        stalled.settimeout(15)
        assert stalled.recv(1) == b"", "a stalled connection is closed after the idle timeout"
        assert time.monotonic() - t0 >= 0.5
        stalled.close()

        msgs = [
            (f"{tag}/dev1/data", b"small-1"),
            (f"{tag}/dev1/data", b"x" * 1000),
            (f"{tag}/dev1/data", b"small-2"),
        ]
        publish(mqtt.port, msgs, client_id=f"pub-{tag}")
        wait_for(lambda: len(mqtt.acked(f"shoal-edge-{site}")) == 3, 20, "all three acked")
        recs = consume_all(central.bootstrap, topic, 2)
        assert [r[1] for r in recs] == [b"small-1", b"small-2"]
        assert wait_for(lambda: gw.status()["mqtt"]["oversize"] == 1, 10, "oversize counted")
        assert gw.proc is not None and gw.proc.poll() is None
        assert "Traceback" not in gw.log()
    finally:
        gw.stop()
