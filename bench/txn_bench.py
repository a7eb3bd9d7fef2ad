#!/usr/bin/env python3
"""Transactions bench (confluent-kafka): transactional produce committing
every --commit-ms against idempotent produce, commit latency, and
read_committed consume against read_uncommitted.

(a) idempotent: one producer (enable.idempotence) sends --size-byte records
    to --partitions partitions flat out for --duration seconds; records/s
    acknowledged.
(b) transactional: one producer with a transactional.id does begin, produce
    for --commit-ms, commit_transaction, again, for --duration seconds;
    records/s committed, and each commit_transaction's latency (the flush of
    the transaction's last records, then EndTxn); with Shoal started here, also
    the broker's own time from EndTxn to every marker durable (its log line
    per transaction).
(c) consume: everything written in (a) and (b), from the beginning, by a
    read_uncommitted and by a read_committed consumer; records/s.

    .venv/bin/python bench/txn_bench.py                 # starts Shoal on SQLite
    .venv/bin/python bench/txn_bench.py --bootstrap HOST:PORT   # any Kafka
    .venv/bin/python bench/txn_bench.py --rdkafka-performance PATH  # + a C consumer

Prints a markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent


def load_harness() -> Any:
    """tests/harness.py by path: the broker launcher the test suite uses."""
    path = ROOT / "tests" / "harness.py"
    spec = importlib.util.spec_from_file_location("shoal_bench_harness", path)
    if spec is None or spec.loader is None:
        raise click.ClickException(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def idempotent(bootstrap: str, topic: str, parts: int, size: int, seconds: float) -> float:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    value = b"x" * size
    acked = 0

    def done(err: Any, _msg: Any) -> None:
        nonlocal acked
        if err is None:
            acked += 1

    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        try:
            p.produce(topic, value=value, partition=i % parts, on_delivery=done)
            i += 1
        except BufferError:
            p.poll(0.01)
        p.poll(0)
    p.flush(60)
    return acked / (time.monotonic() - start)


def transactional(
    bootstrap: str, topic: str, parts: int, size: int, seconds: float, commit_ms: float
) -> tuple[float, list[float]]:
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"bench-{uuid.uuid4().hex[:8]}",
            "linger.ms": 5,
        }
    )
    p.init_transactions(30)
    value = b"x" * size
    committed = 0
    latencies: list[float] = []
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        p.begin_transaction()
        sent = 0
        window = time.monotonic()
        while time.monotonic() - window < commit_ms / 1000:
            try:
                p.produce(topic, value=value, partition=i % parts)
                i += 1
                sent += 1
            except BufferError:
                p.poll(0.01)
            p.poll(0)
        t0 = time.monotonic()
        p.commit_transaction(60)
        latencies.append((time.monotonic() - t0) * 1000)
        committed += sent
    return committed / (time.monotonic() - start), latencies


def consume(bootstrap: str, topic: str, parts: int, isolation: str, expect: int) -> float:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(parts)])
    got = 0
    start = time.monotonic()
    deadline = start + 300
    while got < expect and time.monotonic() < deadline:
        got += sum(1 for m in c.consume(1000, 1.0) if m.error() is None)
    elapsed = time.monotonic() - start
    c.close()
    return got / elapsed


def c_consume(binary: str, bootstrap: str, topic: str, isolation: str, expect: int) -> float:
    """Records/s of librdkafka's own consumer reading `expect` records of
    `topic` from the beginning in a new group."""
    cmd = [binary, "-C", "-G", f"bench-{uuid.uuid4().hex[:8]}", "-t", topic, "-b", bootstrap]
    cmd += ["-c", str(expect), "-X", f"isolation.level={isolation}"]
    cmd += ["-X", "auto.offset.reset=earliest", "-q"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    found = re.findall(r"(\d+) msgs/s", out.stdout + out.stderr)
    if not found:
        raise SystemExit(f"rdkafka_performance printed no rate: {out.stderr[-500:]}")
    return float(found[-1])


def broker_cpu(broker: Any) -> float:
    """User + system CPU seconds of the broker started here (Linux /proc)."""
    if broker is None or broker.proc is None:
        return 0.0
    fields = Path(f"/proc/{broker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@click.command()
@click.option("--bootstrap", default=None, help="An existing cluster (else Shoal is started).")
@click.option("--duration", default=15.0, show_default=True, help="Seconds per produce phase.")
@click.option("--commit-ms", default=100.0, show_default=True, help="Transaction length.")
@click.option("--partitions", default=3, show_default=True)
@click.option("--size", default=100, show_default=True, help="Record value bytes.")
@click.option(
    "--rdkafka-performance",
    "rdk",
    default=None,
    metavar="PATH",
    help="Also consume with librdkafka's C rdkafka_performance (-C -G), each "
    "isolation level 5 times, alternating: no Python loop in the consumer.",
)
def main(
    bootstrap: str | None,
    duration: float,
    commit_ms: float,
    partitions: int,
    size: int,
    rdk: str | None,
) -> None:
    broker = None
    if bootstrap is None:
        harness = load_harness()
        broker = harness.BrokerProcess(Path(tempfile.mkdtemp(prefix="txn-bench-")) / "data")
        broker.start()
        bootstrap = broker.bootstrap
    try:
        idem_topic, txn_topic = f"idem-{uuid.uuid4().hex[:6]}", f"txn-{uuid.uuid4().hex[:6]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for f in admin.create_topics(
            [NewTopic(t, partitions, 1) for t in (idem_topic, txn_topic)]
        ).values():
            f.result(30)
        idem_rate = idempotent(bootstrap, idem_topic, partitions, size, duration)
        txn_rate, lat = transactional(bootstrap, txn_topic, partitions, size, duration, commit_ms)
        expect = int(txn_rate * duration * 0.99)
        cpu0 = broker_cpu(broker)
        uncommitted = consume(bootstrap, txn_topic, partitions, "read_uncommitted", expect)
        cpu1 = broker_cpu(broker)
        committed = consume(bootstrap, txn_topic, partitions, "read_committed", expect)
        cpu2 = broker_cpu(broker)
        c_rates: dict[str, list[float]] = {"read_uncommitted": [], "read_committed": []}
        for _ in range(5 if rdk else 0):
            for isolation in c_rates:
                assert rdk is not None
                c_rates[isolation].append(c_consume(rdk, bootstrap, txn_topic, isolation, expect))
    finally:
        if broker is not None:
            broker.stop()
    markers = [
        float(m.group(1))
        for m in re.finditer(
            r"committed \(producer .*?, ([0-9.]+) ms\)", broker.log() if broker else ""
        )
    ]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"commit {commit}, load average {load}, {os.cpu_count()} cores (shared machine)")
    print()
    print("| measure | value |")
    print("| --- | --- |")
    print(f"| idempotent produce, records/s | {idem_rate:,.0f} |")
    print(
        f"| transactional produce (commit every {commit_ms:.0f} ms), records/s | {txn_rate:,.0f} |"
    )
    print(f"| transactional / idempotent | {txn_rate / idem_rate:.2f} |")
    print(
        f"| commit_transaction latency p50 / p99 (ms, {len(lat)} commits) | "
        f"{statistics.median(lat):.1f} / {pct(lat, 0.99):.1f} |"
    )
    if markers:
        print(
            f"| EndTxn to markers durable, broker side, p50 / p99 (ms) | "
            f"{statistics.median(markers):.1f} / {pct(markers, 0.99):.1f} |"
        )
    print(f"| read_uncommitted consume, records/s | {uncommitted:,.0f} |")
    print(f"| read_committed consume, records/s | {committed:,.0f} |")
    print(f"| read_committed / read_uncommitted | {committed / uncommitted:.2f} |")
    if rdk:
        u, c = (statistics.median(c_rates[k]) for k in ("read_uncommitted", "read_committed"))
        print(
            "| rdkafka_performance consume, records/s, median of 5: read_uncommitted / "
            f"read_committed | {u:,.0f} / {c:,.0f} ({c / u:.2f}) |"
        )
    if broker is not None:
        # The broker's share: a consumer on the same two cores can be the
        # bottleneck (librdkafka's read_committed path does more per record).
        per_m = 1e6 / expect
        print(
            f"| broker CPU s per million records consumed, read_uncommitted / read_committed | "
            f"{(cpu1 - cpu0) * per_m:.2f} / {(cpu2 - cpu1) * per_m:.2f} |"
        )


if __name__ == "__main__":
    main()
