"""Slow-frame attack: broker memory and a normal producer's latency.

Scenarios, each against a fresh broker with default limits except where named:
  baseline      no attack
  trickle       200 clients send ApiVersions, announce 100 MiB frames and
                trickle 1 KiB/s each
  stall         200 clients announce 100 MiB frames, push 2 MiB each as fast
                as the broker reads, then stall (400 MiB wanted)
  stall-nolimit the same with queued.max.request.bytes=-1 (no budget)
  bomb          2 clients send, one after another, Produce requests whose 5 KiB
                zstd batch decompresses to 60 MiB and is refused

For each: the broker's RSS before and at its peak, and the produce latency
(acks=all, one 200-byte record every 10 ms, linger.ms=0) of a well-behaved
confluent-kafka producer during the attack.

    .venv/bin/python bench/attack_bench.py [--seconds 15]
"""

from __future__ import annotations

import importlib.util
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click
from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def load(name: str) -> Any:
    path = ROOT / "tests" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"shoal_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


harness = load("harness")
sys.path.insert(0, str(ROOT / "tests"))
wire = load("wire")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def hello() -> bytes:
    from kio.schema.api_versions.v3.request import ApiVersionsRequest

    return bytes(
        wire.request_frame(
            18, 3, ApiVersionsRequest(client_software_name="a", client_software_version="1")
        )
    )


class Attack:
    """200 connections announcing 100 MiB frames: `rate` bytes/s each after
    `burst` bytes sent as fast as the broker takes them."""

    def __init__(self, port: int, conns: int, burst: int, rate: int) -> None:
        self.port, self.conns, self.burst, self.rate = port, conns, burst, rate
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True)]

    def run(self) -> None:
        socks = []
        for _ in range(self.conns):
            s = socket.create_connection(("127.0.0.1", self.port))
            s.sendall(hello())
            s.recv(65536)
            s.setblocking(False)
            head = struct.pack(">i", 100 * MIB) + b"\x00\x00\x00\x03"
            socks.append([s, memoryview(head + b"\x00" * self.burst)])
        last = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            allowance = int(self.rate * (now - last))
            last = now
            for entry in socks:
                s, rest = entry
                if not rest and allowance:
                    rest = memoryview(b"\x00" * allowance)
                if rest:
                    try:
                        sent = s.send(rest)
                    except (BlockingIOError, ConnectionError):
                        continue
                    entry[1] = rest[sent:]
            time.sleep(0.05)
        for s, _ in socks:
            s.close()


class BombAttack:
    """`threads` connections each sending, again and again, a Produce whose
    few-kilobyte zstd batch decompresses to 60 MiB and is then refused (it
    declares two records and holds one): CPU spent, nothing stored."""

    def __init__(self, port: int, topic: str, threads: int = 2) -> None:
        from shoal.protocol.batches import ZSTD, compress, encode_record

        record = encode_record(0, 0, None, b"\x00" * (60 * MIB))
        frame = _bomb_batch(compress(ZSTD, record))
        self.frame = bytes(wire.request_frame(0, 9, wire.produce_request(topic, frame)))
        self.port = port
        self.sent = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(hello())
            s.recv(65536)
            while not self.stop.is_set():
                s.sendall(self.frame)
                size = struct.unpack(">i", _exact(s, 4))[0]
                _exact(s, size)
                self.sent += 1


def _exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _bomb_batch(compressed: bytes) -> bytes:
    import crc32c

    after_crc = struct.pack(">hiqqqhii", 4, 1, 0, 0, -1, -1, -1, 2) + compressed
    crc = crc32c.crc32c(after_crc)
    return struct.pack(">qiibI", 0, 9 + len(after_crc), -1, 2, crc) + after_crc


def producer_latency(bootstrap: str, seconds: float, topic: str) -> list[float]:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    lat: list[float] = []

    def done(err: Any, _msg: Any, t0: float) -> None:
        if err is None:
            lat.append((time.perf_counter() - t0) * 1000)

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        p.produce(topic, b"x" * 200, on_delivery=lambda e, m, t0=t0: done(e, m, t0))
        p.poll(0.01)
    p.flush(30)
    return lat


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def scenario(name: str, seconds: float) -> dict[str, Any]:
    env = {"SHOAL_QUEUED_MAX_REQUEST_BYTES": "-1"} if name == "stall-nolimit" else {}
    with tempfile.TemporaryDirectory() as tmp:
        b = harness.BrokerProcess(Path(tmp) / "data", env=env).start()
        try:
            assert b.proc is not None
            wire.create_topic(b.bootstrap, "lat")
            producer_latency(b.bootstrap, 1.0, "lat")  # warm up
            base = rss(b.proc.pid)
            attack: Any = None
            if name == "bomb":
                wire.create_topic(b.bootstrap, "bomb")
                attack = BombAttack(b.port, "bomb")
            elif name == "trickle":
                attack = Attack(b.port, 200, 0, 1024)
            elif name.startswith("stall"):
                attack = Attack(b.port, 200, 2 * MIB, 0)
            if attack is not None:
                for th in attack.threads:
                    th.start()
                time.sleep(3)  # let it take hold
            peak = [base]
            sampling = threading.Event()

            def sample() -> None:
                while not sampling.is_set():
                    peak[0] = max(peak[0], rss(b.proc.pid))
                    time.sleep(0.1)

            t = threading.Thread(target=sample, daemon=True)
            t.start()
            lat = producer_latency(b.bootstrap, seconds, "lat")
            sampling.set()
            t.join()
            if attack is not None:
                attack.stop.set()
                for th in attack.threads:
                    th.join()
            return {
                "scenario": name,
                "rss_base_mib": base / MIB,
                "rss_peak_mib": peak[0] / MIB,
                "acked": len(lat),
                "p50_ms": pct(lat, 0.5),
                "p99_ms": pct(lat, 0.99),
                "mean_ms": statistics.fmean(lat) if lat else float("nan"),
            }
        finally:
            b.stop()


@click.command()
@click.option("--seconds", default=15.0, show_default=True, help="producer run per scenario")
@click.option("--scenarios", default="baseline,trickle,stall,stall-nolimit,bomb", show_default=True)
def main(seconds: float, scenarios: str) -> None:
    rows = [scenario(s.strip(), seconds) for s in scenarios.split(",")]
    print("| scenario | RSS before (MiB) | RSS peak (MiB) | acked | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['scenario']} | {r['rss_base_mib']:.0f} | {r['rss_peak_mib']:.0f} | "
            f"{r['acked']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
