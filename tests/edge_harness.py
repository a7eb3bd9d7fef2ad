"""Edge gateway test helpers: the gateway as a subprocess (so it can be
killed -9), its TOML config, MQTT devices, and reading the central topic."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from harness import free_port


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(doc: dict[str, Any]) -> str:
    """Enough TOML for gateway configs: scalars, tables, arrays of tables."""
    lines: list[str] = []

    def table(d: dict[str, Any], prefix: str) -> None:
        scalars = {
            k: v
            for k, v in d.items()
            if not isinstance(v, dict | list)
            or (isinstance(v, list) and not (v and isinstance(v[0], dict)))
        }
        for k, v in scalars.items():
            lines.append(f"{json.dumps(k)} = {toml_value(v)}")
        for k, v in d.items():
            if k in scalars:
                continue
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                lines.append(f"\n[{name}]")
                table(v, name + ".")
            else:
                for item in v:
                    lines.append(f"\n[[{name}]]")
                    table(item, name + ".")

    table(doc, "")
    return "\n".join(lines) + "\n"


def gateway_config(
    data_dir: Path,
    *,
    site: str = "site-a",
    mqtt_port: int | None = None,
    central: str | None = None,
    routes: list[dict[str, Any]] | None = None,
    lanes: list[dict[str, Any]] | None = None,
    uplink: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "site": site,
        "data_dir": str(data_dir),
        "local": {"listen": f"127.0.0.1:{free_port()}", "compaction_interval_ms": 1000},
        "admin": {"listen": f"127.0.0.1:{free_port()}", "status_interval_ms": 200},
    }
    if mqtt_port is not None:
        doc["mqtt"] = {
            "port": mqtt_port,
            "protocol": "3.1.1",
            "username": "gateway",
            "password": "x",
            "reconnect_initial_ms": 50,
            "reconnect_max_ms": 500,
            "routes": routes
            or [{"filter": "devices/+/data", "topic": "telemetry", "key_level": 1, "qos": 1}],
        }
    if lanes is not None:
        doc["lanes"] = lanes
    if central is not None:
        up = {
            "name": "central",
            "bootstrap": central,
            "compression": "none",
            "backoff_initial_ms": 100,
            "backoff_max_ms": 1000,
            "stall_timeout_ms": 3000,
            "connected_window_ms": 3000,
            "kafka": {"topic.metadata.refresh.interval.ms": 1000},
        }
        up.update(uplink or {})
        doc["uplinks"] = [up]
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(doc.get(k), dict):
            doc[k].update(v)
        else:
            doc[k] = v
    return doc


class GatewayProcess:
    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.config = config
        self.path = workdir / "edge.toml"
        self.log_path = workdir / "edge.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    @property
    def admin(self) -> str:
        return f"http://{self.config['admin']['listen']}"

    @property
    def kafka(self) -> str:
        return str(self.config["local"]["listen"])

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path.write_text(to_toml(self.config))

    def start(self, timeout: float = 30) -> GatewayProcess:
        self.write_config()
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shoal", "edge", "--config", str(self.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(os.environ),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log()}")
            if "shoal edge: ready" in self.log()[self._log_start :]:
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"gateway not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.admin + "/status", timeout=5) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def metrics(self) -> str:
        with urllib.request.urlopen(self.admin + "/metrics", timeout=5) as r:
            return str(r.read().decode())

    def lane(self, name: str) -> dict[str, Any]:
        return next(x for x in self.status()["lanes"] if x["name"] == name)

    def uplink(self) -> dict[str, Any]:
        up: dict[str, Any] = self.status()["uplinks"][0]
        return up


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as exc:  # the gateway may be restarting
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def publish(
    port: int,
    messages: list[tuple[str, bytes]],
    *,
    client_id: str,
    qos: int = 1,
    inflight: int = 50,
    user_properties: list[tuple[str, str]] | None = None,
    protocol: int = 4,
) -> None:
    """Publish in order from one device connection; returns once the broker
    acknowledged every message (QoS 1)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311,
    )
    c.username_pw_set(client_id, "x")
    c.max_inflight_messages_set(inflight)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        props = None
        if user_properties:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = user_properties
        infos = [c.publish(t, p, qos=qos, properties=props) for t, p in messages]
        for info in infos:
            info.wait_for_publish(timeout=60)
            assert info.is_published(), "the MQTT broker did not acknowledge a publish"
    finally:
        c.disconnect()
        c.loop_stop()


async def apublish(
    port: int,
    messages: list[tuple[str, bytes]],
    client_id: str,
    *,
    user_properties: list[tuple[str, str]] | None = None,
    content_type: str | None = None,
) -> None:
    """Devices with aiomqtt over MQTT 5, in order, QoS 1."""
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    if user_properties:
        props.UserProperty = user_properties
    if content_type:
        props.ContentType = content_type
    async with aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=client_id,
        username=client_id,
        password="x",
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as c:
        for topic, payload in messages:
            await c.publish(topic, payload, qos=1, properties=props)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


Rec = tuple[bytes | None, bytes | None, dict[str, bytes], int, int]  # key, value, headers, ts, part


def consume_all(
    bootstrap: str,
    topic: str,
    expect: int,
    timeout: float = 60,
    partitions: int | None = None,
    settle: float = 1.0,
) -> list[Rec]:
    """Every record of a central topic (all partitions), in partition order.
    Returns once `expect` records were seen and nothing more came for `settle`
    seconds, or at the timeout."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"edge-test-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        deadline = time.monotonic() + timeout
        while partitions is None or partitions == 0:
            # The gateway may not have created the central topic yet (its
            # uplink is still connecting): wait for it, within the timeout.
            md = c.list_topics(topic, timeout=10)
            partitions = len(md.topics[topic].partitions)
            if partitions == 0:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        out: list[Rec] = []
        errors: list[str] = []
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                if len(out) >= expect and time.monotonic() - last_new >= settle:
                    break
                continue
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    errors.append(str(m.error()))
                continue
            last_new = time.monotonic()
            hdrs = {k: (v or b"") for k, v in (m.headers() or [])}
            out.append((m.key(), m.value(), hdrs, m.timestamp()[1], m.partition()))
        if len(out) < expect:
            marks = [
                c.get_watermark_offsets(TopicPartition(topic, p), 5) for p in range(partitions)
            ]
            print(
                f"consume_all({topic}): {len(out)}/{expect}; watermarks {marks}; "
                f"positions {c.position([TopicPartition(topic, p) for p in range(partitions)])}; "
                f"errors: {errors[:5]}"
            )
        return out
    finally:
        c.close()
