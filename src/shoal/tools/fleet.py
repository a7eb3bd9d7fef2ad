"""`shoal bench fleet`: an IoT fleet's shape against any Kafka-compatible cluster.

Many sites, a few topics per site, partitions keyed by device, each device
quiet (about one record a second), spread over several producers as gateways
would be. What it measures is what that shape costs: throughput, produce
(send to acknowledgement) and end-to-end (send to a tailing consumer)
latency, and, when the broker runs on this machine and its pid is given, the
broker's CPU and memory read from /proc.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
import time
import uuid
from array import array
from collections.abc import Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from shoal.tools.bench import (
    MB,
    BenchError,
    LatencyStats,
    machine_info,
)
from shoal.tools.options import LIBRDKAFKA_LOG

_NS = 1_000_000_000
# Each value starts with the run's nonce and its send time (one process, one clock).
_NONCE_LEN = 8


@dataclass(frozen=True)
class FleetSpec:
    bootstrap: str
    sites: int = 20
    topics_per_site: int = 5
    partitions: int = 10
    devices_per_site: int = 50
    rate_per_device: float = 1.0
    record_size: int = 200
    duration_s: float = 30.0
    producers: int = 4
    acks: str = "all"
    linger_ms: float = 5.0
    prefix: str = ""
    broker_pid: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("sites", "topics_per_site", "partitions", "devices_per_site", "producers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.rate_per_device <= 0:
            raise ValueError(f"rate_per_device must be positive, not {self.rate_per_device}")
        if self.record_size < _NONCE_LEN + 8:
            raise ValueError(f"record_size must be at least {_NONCE_LEN + 8} bytes")
        if self.duration_s <= 0:
            raise ValueError(f"duration_s must be positive, not {self.duration_s}")

    @property
    def rate(self) -> float:
        """Records per second across the fleet."""
        return self.sites * self.devices_per_site * self.rate_per_device

    def topics(self, run: str) -> list[str]:
        prefix = self.prefix or f"fleet-{run}"
        return [
            f"{prefix}.site{s:04d}.t{t:02d}"
            for s in range(self.sites)
            for t in range(self.topics_per_site)
        ]


@dataclass
class BrokerUsage:
    """The broker's CPU over the run and its memory at the end (from /proc)."""

    pid: int
    cpu_s: float
    cpu_cores: float
    rss_mb: float
    peak_rss_mb: float


@dataclass
class FleetResult:
    spec: dict[str, Any]
    machine: dict[str, str]
    topics: int
    partitions: int
    sent: int
    delivered: int
    errors: int
    received: int
    elapsed_s: float
    records_per_s: float
    mb_per_s: float
    produce_latency: LatencyStats
    e2e_latency: LatencyStats
    error_counts: dict[str, int] = field(default_factory=dict)
    broker: BrokerUsage | None = None
    warmup_s: float = 0.0  # one record to every partition before the run
    # Sent but neither acknowledged nor failed when the drain timeout ended.
    unanswered: int = 0
    duplicates: int = 0  # records the consumer saw more than once

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def summary(self) -> list[tuple[str, str]]:
        s = self.spec
        rows = [
            ("target", str(s["bootstrap"])),
            (
                "fleet",
                f"{s['sites']} sites x {s['topics_per_site']} topics x {s['partitions']} "
                f"partitions = {self.partitions:,} partitions; "
                f"{s['sites'] * s['devices_per_site']:,} devices at {s['rate_per_device']}/s "
                f"over {s['producers']} producers",
            ),
            ("warm-up (1 record per partition)", f"{self.warmup_s:.1f} s"),
            (
                "sent / delivered / errors / unanswered",
                f"{self.sent:,} / {self.delivered:,} / {self.errors:,} / {self.unanswered:,}",
            ),
            (
                "throughput",
                f"{self.records_per_s:,.0f} records/s, {self.mb_per_s:,.3f} MB/s "
                f"over {self.elapsed_s:.1f} s",
            ),
            ("produce latency ms", _lat(self.produce_latency)),
            ("received (end to end) / duplicates", f"{self.received:,} / {self.duplicates:,}"),
            ("end-to-end latency ms", _lat(self.e2e_latency)),
        ]
        if self.error_counts:
            rows.append(
                ("error kinds", ", ".join(f"{k}={v}" for k, v in sorted(self.error_counts.items())))
            )
        if self.broker is not None:
            b = self.broker
            rows.append(
                (
                    f"broker (pid {b.pid})",
                    f"CPU {b.cpu_s:.1f} s ({b.cpu_cores:.2f} cores), "
                    f"RSS {b.rss_mb:.0f} MB (peak {b.peak_rss_mb:.0f} MB)",
                )
            )
        return rows


def _lat(s: LatencyStats) -> str:
    return (
        f"p50 {s.p50_ms:.2f}  p99 {s.p99_ms:.2f}  p999 {s.p999_ms:.2f}  "
        f"max {s.max_ms:.2f}  (n={s.count:,})"
    )


def proc_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process, from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}/stat (is the broker local?): {exc}") from exc
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MB of a process, from /proc/PID/status."""
    values = {"VmRSS:": 0, "VmHWM:": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(maxsplit=1)[0] if line else ""
            if key in values:
                values[key] = int(line.split()[1])
    except OSError as exc:
        raise BenchError(f"cannot read /proc/{pid}/status (is the broker local?): {exc}") from exc
    return values["VmRSS:"] * 1024 / MB, values["VmHWM:"] * 1024 / MB


def _client(spec: FleetSpec) -> dict[str, Any]:
    return {"bootstrap.servers": spec.bootstrap, "logger": LIBRDKAFKA_LOG, **spec.extra}


def create_topics(spec: FleetSpec, names: list[str], timeout_s: float = 120.0) -> None:
    admin = AdminClient(_client(spec))
    try:
        admin.list_topics(timeout=10)
    except KafkaException as exc:
        raise BenchError(f"cannot reach {spec.bootstrap}: {exc}") from exc
    for i in range(0, len(names), 500):
        futures = admin.create_topics(
            [NewTopic(n, spec.partitions, 1) for n in names[i : i + 500]],
            request_timeout=timeout_s,
        )
        for name, f in futures.items():
            try:
                f.result(timeout=timeout_s)
            except FutureTimeout as exc:
                raise BenchError(f"no answer creating topic {name!r}") from exc
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not (
                    isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    raise BenchError(f"cannot create topic {name!r}: {exc}") from exc


class _Tail(threading.Thread):
    """One consumer assigned every partition at its end; times our records."""

    def __init__(self, spec: FleetSpec, names: list[str], nonce: bytes) -> None:
        super().__init__(name="fleet-tail", daemon=True)
        self.consumer = Consumer(
            {
                **_client(spec),
                "group.id": f"fleet-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 100,
            }
        )
        self.names = names
        self.partitions = spec.partitions
        self.nonce = nonce
        self.latencies: array[int] = array("q")
        # A record seen again (a producer retry after a timeout, without
        # idempotence, writes it twice): counted, not timed twice.
        self.seen: set[int] = set()
        self.duplicates = 0
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            c = self.consumer
            # The run's topics are new: read them from their first offset.
            c.assign(
                [
                    TopicPartition(n, p, OFFSET_BEGINNING)
                    for n in self.names
                    for p in range(self.partitions)
                ]
            )
            c.poll(0.2)
            self.ready.set()
            while not self.stop.is_set():
                m = c.poll(0.1)
                if m is None or m.error() is not None:
                    continue
                now = time.perf_counter_ns()
                v = m.value()
                if v is not None and v[:_NONCE_LEN] == self.nonce:
                    sent = int.from_bytes(v[_NONCE_LEN : _NONCE_LEN + 8], "big")
                    if sent in self.seen:
                        self.duplicates += 1
                    else:
                        self.seen.add(sent)
                        self.latencies.append(now - sent)
        except BaseException as exc:  # surfaced by the main thread
            self.failure = exc
            self.ready.set()
        finally:
            self.consumer.close()


def _warm_up(spec: FleetSpec, names: list[str], producers: list[Producer]) -> float:
    """One unmeasured record to every partition, so the run measures the
    steady state, not the clients' first metadata requests (nor the
    broker's first write to each partition); returns the seconds it took."""
    t0 = time.monotonic()
    failed: list[str] = []

    def report(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            failed.append(err.name())

    for i, name in enumerate(names):
        prod = producers[(i // spec.topics_per_site) % spec.producers]
        for p in range(spec.partitions):
            while True:
                try:
                    prod.produce(name, b"warm-up", partition=p, on_delivery=report)
                    break
                except BufferError:
                    prod.poll(0.01)
    for prod in producers:
        prod.flush(120)
    if failed:
        raise BenchError(f"warm-up: {len(failed)} records failed ({failed[0]})")
    return time.monotonic() - t0


def run_fleet(spec: FleetSpec, *, drain_timeout_s: float = 120.0) -> FleetResult:
    """Create the fleet's topics, run it for spec.duration_s at spec.rate
    records/s, and measure. Keys are device ids, so each device's records
    stay in order on one partition of its site's topic."""
    run = uuid.uuid4().hex[:6]
    names = spec.topics(run)
    create_topics(spec, names)
    nonce = os.urandom(_NONCE_LEN)
    tail = _Tail(spec, names, nonce)
    tail.start()
    if not tail.ready.wait(60) or tail.failure is not None:
        raise BenchError(f"the tailing consumer did not start: {tail.failure}")
    producers = [
        Producer(
            {
                **_client(spec),
                "acks": spec.acks,
                "linger.ms": spec.linger_ms,
                "client.id": f"fleet-gateway-{i}",
            }
        )
        for i in range(spec.producers)
    ]
    warmup_s = _warm_up(spec, names, producers)
    latencies: array[int] = array("q")
    counts = {"delivered": 0, "errors": 0}
    error_counts: dict[str, int] = {}

    def report(sent: int, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            counts["errors"] += 1
            error_counts[err.name()] = error_counts.get(err.name(), 0) + 1
        else:
            counts["delivered"] += 1
            latencies.append(time.perf_counter_ns() - sent)

    devices = [
        (s, f"site{s:04d}-dev{d:04d}".encode())
        for d in range(spec.devices_per_site)
        for s in range(spec.sites)
    ]
    filler = b"F" * (spec.record_size - _NONCE_LEN - 8)
    interval_ns = int(_NS / spec.rate)
    cpu0 = proc_cpu_s(spec.broker_pid) if spec.broker_pid else 0.0
    start = time.perf_counter_ns()
    end = start + int(spec.duration_s * _NS)
    sent = 0
    try:
        while True:
            now = time.perf_counter_ns()
            if now >= end:
                break
            due = min((now - start) // interval_ns + 1, int(spec.duration_s * spec.rate))
            while sent < due:
                s, key = devices[sent % len(devices)]
                topic = names[
                    s * spec.topics_per_site + (sent // len(devices)) % spec.topics_per_site
                ]
                t = time.perf_counter_ns()
                value = nonce + t.to_bytes(8, "big") + filler
                prod = producers[s % spec.producers]
                try:
                    prod.produce(topic, value, key, on_delivery=functools.partial(report, t))
                except BufferError:
                    prod.poll(0.01)
                    continue
                sent += 1
            for p in producers:
                p.poll(0)
            time.sleep(min(0.001, max(0.0, (start + sent * interval_ns - now) / _NS)))
        for p in producers:
            p.flush(drain_timeout_s)
        elapsed = (time.perf_counter_ns() - start) / _NS
        deadline = time.monotonic() + drain_timeout_s
        while len(tail.latencies) < counts["delivered"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        tail.stop.set()
        tail.join(10)
    broker = None
    if spec.broker_pid:
        cpu = proc_cpu_s(spec.broker_pid) - cpu0
        rss, peak = proc_memory_mb(spec.broker_pid)
        broker = BrokerUsage(spec.broker_pid, cpu, cpu / elapsed, rss, peak)
    delivered = counts["delivered"]
    return FleetResult(
        spec={**dataclasses.asdict(spec), "extra": dict(spec.extra), "rate": spec.rate},
        machine=machine_info(),
        topics=len(names),
        partitions=len(names) * spec.partitions,
        sent=sent,
        delivered=delivered,
        errors=counts["errors"],
        unanswered=sent - delivered - counts["errors"],
        duplicates=tail.duplicates,
        received=len(tail.latencies),
        elapsed_s=elapsed,
        records_per_s=delivered / elapsed,
        mb_per_s=delivered * spec.record_size / elapsed / MB,
        produce_latency=LatencyStats.from_ns(latencies),
        e2e_latency=LatencyStats.from_ns(tail.latencies),
        error_counts=error_counts,
        broker=broker,
        warmup_s=warmup_s,
    )
