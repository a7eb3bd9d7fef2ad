#!/usr/bin/env python3
"""Edge gateway benchmark (issue 6): MQTT QoS 1 ingest, backlog drain, memory.

    .venv/bin/python bench/edge_bench.py ingest [--messages 200000] [--publishers 2]
    .venv/bin/python bench/edge_bench.py ingest --source synthetic
    .venv/bin/python bench/edge_bench.py drain [--backlog-mib 1024]
    .venv/bin/python bench/edge_bench.py drain --mode both [--backlog-mib 128]

ingest: devices publish 200-byte payloads at QoS 1 through an MQTT broker
(mosquitto when installed, else amqtt) to a gateway with no uplink; the rate
is the gateway's acknowledged records per second (an acknowledgement means the
record is durable in the local log). `--source synthetic` replaces broker and
devices by one process that speaks just enough MQTT to stream pre-encoded
PUBLISH packets with a window of unacknowledged ones: the gateway's own
ceiling, with no broker in the way.

drain: fill the local log through the local Kafka port while the central
broker is not there yet, then start it (a Shoal broker on this machine) and
time the drain with no bandwidth cap, sampling the gateway's resident memory.
`--mode exactly-once` drains through a transactional uplink
(`uplinks[].exactly_once`); `--mode both` runs the two modes one after the
other on the same backlog size and prints the exactly-once / at-least-once
ratio. The drain ends when every local partition's committed (exactly-once)
or acknowledged (at-least-once) position reaches its end.

Every service runs as its own process on loopback; everything is stopped at
the end. Prints a markdown summary; --json writes the raw figures.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from edge_harness import GatewayProcess, gateway_config  # noqa: E402
from harness import BrokerProcess, cpu_seconds, free_port  # noqa: E402

PAYLOAD = 200


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# -- MQTT brokers -------------------------------------------------------------


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 2000\nmax_keepalive 600\n"
        "set_tcp_nodelay true\n"
    )
    proc = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_port(port)
    return proc, port, "mosquitto " + mosquitto_version()


def have_mosquitto() -> bool:
    return bool(shutil.which("mosquitto")) or Path("/usr/sbin/mosquitto").exists()


def mosquitto_version() -> str:
    try:
        out = subprocess.run(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-h"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
        return out.split("version", 1)[1].split()[0] if "version" in out else "?"
    except (OSError, IndexError):
        return "?"


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def publisher(port: int, index: int, count: int, devices: int, ready: Any, go: Any) -> None:
    """One device connection publishing `count` QoS 1 messages as fast as the
    broker acknowledges them (paho, a window of 1000 in flight)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    c = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-{index}")
    c.username_pw_set(f"bench-{index}", "x")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    payload = b"x" * PAYLOAD
    ready.set()
    go.wait()
    infos = []
    for i in range(count):
        infos.append(c.publish(f"bench/d{index}-{i % devices}/data", payload, qos=1))
        if len(infos) >= 2000:
            for info in infos:
                info.wait_for_publish(60)
            infos.clear()
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def raw_publisher(port: int, index: int, count: int, devices: int, ready: Any, go: Any) -> None:
    """A device simulator that costs little CPU: pre-encoded QoS 1 PUBLISH
    packets on a plain socket, a window of 1000 unacknowledged, PUBACKs
    counted. Python paho clients cannot publish fast enough on this machine
    to load the gateway (they would be the measurement)."""
    cid = f"raw-{index}".encode()
    var = b"\x00\x04MQTT\x04\x02\x02\x58"  # MQTT 3.1.1, clean session, keepalive 600
    body = var + struct.pack(">H", len(cid)) + cid
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"\x10" + _remaining(len(body)) + body)
    assert sock.recv(4)[:1] == b"\x20"
    payload = b"x" * PAYLOAD
    topics = [f"bench/d{index}-{i}/data".encode() for i in range(devices)]
    packets = []
    for i in range(count):
        t = topics[i % devices]
        mid = (i % 65535) + 1
        b = struct.pack(">H", len(t)) + t + struct.pack(">H", mid) + payload
        packets.append(b"\x32" + _remaining(len(b)) + b)
    ready.set()
    go.wait()
    sent = acked = 0
    window = 1000
    buf = b""
    while acked < count:
        if sent < count and sent - acked < window:
            n = min(count - sent, window - (sent - acked), 200)
            sock.sendall(b"".join(packets[sent : sent + n]))
            sent += n
            continue
        buf += sock.recv(65536)
        acked += len(buf) // 4  # PUBACK: 40 02 <mid>
        buf = buf[len(buf) - len(buf) % 4 :]
    sock.close()


# -- a synthetic MQTT source: the gateway's ceiling -------------------------------


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def synthetic_source(port: int, total: int, window: int, result: Any) -> None:
    """Accept the gateway's MQTT 3.1.1 connection and stream `total` QoS 1
    PUBLISH packets, at most `window` unacknowledged; record the time of the
    first and the last PUBACK."""

    async def main() -> None:
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            async def packet() -> tuple[int, bytes]:
                head = await reader.readexactly(1)
                mult, n = 1, 0
                while True:
                    b = (await reader.readexactly(1))[0]
                    n += (b & 127) * mult
                    mult *= 128
                    if not b & 128:
                        break
                return head[0], await reader.readexactly(n)

            await packet()  # CONNECT
            writer.write(b"\x20\x02\x00\x00")  # CONNACK
            _kind, body = await packet()  # SUBSCRIBE
            pid = body[:2]
            writer.write(b"\x90\x03" + pid + b"\x01")
            await writer.drain()
            topics = [f"bench/d{i}/data".encode() for i in range(100)]
            payload = b"x" * PAYLOAD
            sent = acked = 0
            window_free = asyncio.Semaphore(window)
            t_first = t_last = 0.0

            async def read_acks() -> None:
                nonlocal acked, t_first, t_last
                while acked < total:
                    k, _b = await packet()
                    if k >> 4 == 4:  # PUBACK
                        acked += 1
                        window_free.release()
                        if acked == 1:
                            t_first = time.perf_counter()
                        t_last = time.perf_counter()
                    elif k >> 4 == 12:  # PINGREQ
                        writer.write(b"\xd0\x00")

            acks = asyncio.create_task(read_acks())
            t0 = time.perf_counter()
            while sent < total:
                await window_free.acquire()
                sent += 1
                mid = (sent % 65535) + 1
                t = topics[sent % 100]
                var = struct.pack(">H", len(t)) + t + struct.pack(">H", mid)
                body = var + payload
                writer.write(b"\x32" + _remaining(len(body)) + body)
                if sent % 64 == 0:
                    await writer.drain()
            await writer.drain()
            await acks
            result["seconds"] = t_last - t0
            result["first_ack_s"] = t_first - t0
            done.set()
            await asyncio.sleep(0.5)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port)
        await done.wait()
        server.close()

    asyncio.run(main())


# -- ingest --------------------------------------------------------------------------


def ingest(
    workdir: Path, messages: int, publishers: int, source: str, raw: bool, protocol: str = "5"
) -> dict[str, Any]:
    broker_proc = None
    label = source
    if source == "synthetic":
        port = free_port()
        mgr = multiprocessing.Manager()
        result = mgr.dict()
        src = multiprocessing.Process(
            target=synthetic_source, args=(port, messages, 2000, result), daemon=True
        )
        src.start()
        wait_port(port)
        label = "synthetic MQTT source (window 2000)"
    elif source == "mosquitto" or (source == "auto" and have_mosquitto()):
        broker_proc, port, label = start_mosquitto(workdir)
    else:
        from mqtt_broker import MqttBroker

        mb = MqttBroker(workdir).start()
        port, label = mb.port, "amqtt"
        broker_proc = mb.proc
    cfg = gateway_config(
        workdir / "gw" / "data",
        site="bench",
        mqtt_port=port,
        routes=[{"filter": "bench/+/data", "topic": "telemetry", "key_level": 1, "qos": 1}],
        local={"partitions": 1},
    )
    cfg["mqtt"]["keepalive_s"] = 300
    if source != "synthetic":
        cfg["mqtt"]["protocol"] = protocol
    gw = GatewayProcess(workdir / "gw", cfg)
    gw.start()
    pid = gw.proc.pid if gw.proc else 0
    try:
        cpu0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        if source == "synthetic":
            src.join(600)
            seconds = float(result["seconds"])
        else:
            ctx = multiprocessing.get_context("fork")
            ready = [ctx.Event() for _ in range(publishers)]
            go = ctx.Event()
            per = messages // publishers
            fn = raw_publisher if raw else publisher
            procs = [
                ctx.Process(target=fn, args=(port, i, per, 50, ready[i], go))
                for i in range(publishers)
            ]
            for p in procs:
                p.start()
            for r in ready:
                r.wait(30)
            t0 = time.perf_counter()
            go.set()
            target = per * publishers
            peak_pending = 0
            while True:
                st = gw.status()
                peak_pending = max(peak_pending, st["mqtt"]["pending_acks"])
                if st["mqtt"]["acked"] >= target:
                    break
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError("ingest did not finish in 600 s")
                time.sleep(0.05)
            seconds = time.perf_counter() - t0
            print(f"peak unacknowledged in the gateway: {peak_pending}", file=sys.stderr)
            for p in procs:
                p.join(60)
            messages = target
        cpu = cpu_seconds(pid) - cpu0
        st = gw.status()
        return {
            "source": label,
            "protocol": "3.1.1" if source == "synthetic" else protocol,
            "devices": "synthetic (raw socket)" if raw else "paho-mqtt clients",
            "messages": messages,
            "seconds": round(seconds, 3),
            "rate": round(messages / seconds),
            "gateway_cpu_s": round(cpu, 2),
            "gateway_cpu_share": round(cpu / seconds, 2),
            "records_in": st["local"]["records_in"],
            "rss_mib": round(rss_mib(pid), 1),
            "peak_unacked": peak_pending if source != "synthetic" else None,
        }
    finally:
        gw.stop()
        if broker_proc is not None and broker_proc.poll() is None:
            broker_proc.send_signal(signal.SIGTERM)
            broker_proc.wait(10)


# -- drain -------------------------------------------------------------------------------


def fill(bootstrap: str, topic: str, total_bytes: int, value_size: int) -> int:
    from confluent_kafka import Producer

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.kbytes": 262_144,
        }
    )
    value = b"v" * value_size
    n = 0
    keys = [f"dev-{i}".encode() for i in range(100)]
    while n * (value_size + 8) < total_bytes:
        try:
            p.produce(topic, value, key=keys[n % 100])
            n += 1
        except BufferError:
            p.poll(0.05)
        if n % 10_000 == 0:
            p.poll(0)
    assert p.flush(300) == 0
    return n


def drain(
    workdir: Path, backlog_mib: int, value_size: int, exactly_once: bool = False
) -> dict[str, Any]:
    central_port = free_port()
    cfg = gateway_config(
        workdir / "gw" / "data",
        site="bench",
        central=f"127.0.0.1:{central_port}",
        uplink={
            "compression": "lz4",
            "stall_timeout_ms": 5000,
            "backoff_max_ms": 500,
            "exactly_once": exactly_once,
        },
        local={"partitions": 4, "compaction_interval_ms": 5000},
    )
    gw = GatewayProcess(workdir / "gw", cfg)
    gw.start()
    pid = gw.proc.pid if gw.proc else 0
    central = BrokerProcess(workdir / "central", port=central_port)
    try:
        t0 = time.perf_counter()
        records = fill(gw.kafka, "telemetry", backlog_mib * 1024 * 1024, value_size)
        fill_s = time.perf_counter() - t0
        time.sleep(2)
        st = gw.status()
        lane = st["lanes"][0]
        backlog = sum(u["backlog_records"] for u in lane["uplinks"].values())
        rss_before = rss_mib(pid)
        central.start()
        t0 = time.perf_counter()
        cpu0 = cpu_seconds(pid)
        peak = rss_before
        samples = []
        while True:
            st = gw.status()
            up = st["uplinks"][0]
            sent = up["sent_records"]
            left = sum(p["backlog_records"] for p in up["partitions"])
            r = rss_mib(pid)
            peak = max(peak, r)
            samples.append((round(time.perf_counter() - t0, 1), sent, round(r, 1)))
            if sent >= records and up["partitions"] and left == 0:
                break
            if time.perf_counter() - t0 > 1800:
                raise RuntimeError("drain did not finish in 30 min")
            time.sleep(0.5)
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu0
        txn = up.get("transactions") or {}
        return {
            "mode": up.get("mode", "at-least-once"),
            "transactions_committed": txn.get("committed"),
            "transactions_aborted": txn.get("aborted"),
            "commit_latency_ms_p50": txn.get("commit_latency_ms_p50"),
            "commit_latency_ms_p99": txn.get("commit_latency_ms_p99"),
            "records_sent_incl_resent": sent,
            "backlog_records": records,
            "backlog_mib_local": round(lane["disk_used_bytes"] / 2**20, 1),
            "backlog_seen": backlog,
            "fill_seconds": round(fill_s, 1),
            "drain_seconds": round(seconds, 1),
            "records_per_s": round(records / seconds),
            "mib_per_s": round(records * (value_size + 40) / seconds / 2**20, 1),
            "gateway_cpu_share": round(cpu / seconds, 2),
            "rss_before_mib": round(rss_before, 1),
            "rss_peak_mib": round(peak, 1),
            "samples": samples[:: max(1, len(samples) // 20)],
        }
    finally:
        gw.stop()
        central.stop()


@click.group()
def cli() -> None:
    """Edge gateway benchmark."""


@cli.command("ingest")
@click.option("--messages", default=200_000, show_default=True)
@click.option("--publishers", default=2, show_default=True)
@click.option(
    "--source",
    type=click.Choice(["auto", "mosquitto", "amqtt", "synthetic"]),
    default="auto",
    show_default=True,
)
@click.option("--raw-publishers", is_flag=True, help="Pre-encoded packets instead of paho.")
@click.option("--protocol", type=click.Choice(["5", "3.1.1"]), default="5", show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
def ingest_cmd(
    messages: int,
    publishers: int,
    source: str,
    raw_publishers: bool,
    protocol: str,
    json_path: str | None,
) -> None:
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as d:
        res = ingest(Path(d), messages, publishers, source, raw_publishers, protocol)
    click.echo(json.dumps(res, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2))


@cli.command("drain")
@click.option("--backlog-mib", default=512, show_default=True)
@click.option("--value-size", default=200, show_default=True)
@click.option(
    "--mode",
    type=click.Choice(["at-least-once", "exactly-once", "both"]),
    default="at-least-once",
    show_default=True,
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False))
def drain_cmd(backlog_mib: int, value_size: int, mode: str, json_path: str | None) -> None:
    modes = ["at-least-once", "exactly-once"] if mode == "both" else [mode]
    runs: dict[str, Any] = {}
    for m in modes:
        with tempfile.TemporaryDirectory(prefix="edge-bench-") as d:
            runs[m] = drain(Path(d), backlog_mib, value_size, exactly_once=m == "exactly-once")
    res: dict[str, Any] = runs[modes[0]] if len(modes) == 1 else runs
    if len(modes) == 2:
        res["exactly_once_over_at_least_once"] = round(
            runs["exactly-once"]["records_per_s"] / runs["at-least-once"]["records_per_s"], 2
        )
    res["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    click.echo(json.dumps(res, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    cli()
