#!/usr/bin/env python3
"""Many quiet partitions (issue 13): what the first and the next write to each cost.

Creates T topics x P partitions on a fresh broker, then, with librdkafka
(confluent-kafka), acks=all, 200-byte records:
  cold  - Shoal only: the broker is restarted, then one record goes to every
          partition (every stream is opened by its first append);
  warm  - one more record to every partition, same producer;
  start - Shoal only, with --startup: restart time to "ready" and the broker's
          resident memory before and after one record to every partition
          (memory per opened idle partition).
Each phase is timed from the first produce() to the last delivery report.

    .venv/bin/python bench/partitions_bench.py --shoal --topics 2000 --partitions 5
    .venv/bin/python bench/partitions_bench.py --tansu --topics 2000 --partitions 5
    .venv/bin/python bench/partitions_bench.py --shoal --topics 20000 --partitions 5 --startup

--shoal-arg passes an option to `shoal serve` (e.g. --shoal-arg=--metadata
--shoal-arg=postgresql://...). Results print as one JSON object.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent


def load_harness() -> Any:
    path = ROOT / "tests" / "harness.py"
    spec = importlib.util.spec_from_file_location("shoal_bench_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def create_topics(bootstrap: str, names: list[str], partitions: int) -> float:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    t0 = time.monotonic()
    for i in range(0, len(names), 500):
        futures = admin.create_topics(
            [NewTopic(n, partitions, 1) for n in names[i : i + 500]], request_timeout=300
        )
        for f in futures.values():
            f.result(timeout=600)
    return time.monotonic() - t0


def one_each(producer: Producer, names: list[str], partitions: int, size: int) -> dict[str, Any]:
    """One record to each partition; time to the last delivery report."""
    payload = b"x" * size
    errors: list[str] = []
    lat: list[float] = []
    t0 = time.monotonic()

    def done(err: Any, _msg: Any, sent: float) -> None:
        if err is not None:
            errors.append(str(err))
        lat.append(time.monotonic() - sent)

    for name in names:
        for p in range(partitions):
            sent = time.monotonic()
            while True:
                try:
                    producer.produce(
                        name, payload, partition=p, on_delivery=lambda e, m, s=sent: done(e, m, s)
                    )
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)
    left = producer.flush(600)
    elapsed = time.monotonic() - t0
    lat.sort()
    n = len(lat)
    return {
        "seconds": round(elapsed, 3),
        "records": n,
        "undelivered": left,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "latency_p50_ms": round(lat[n // 2] * 1000, 1) if n else None,
        "latency_max_ms": round(lat[-1] * 1000, 1) if n else None,
    }


@click.command()
@click.option("--shoal", "target", flag_value="shoal", default=True)
@click.option("--tansu", "target", flag_value="tansu")
@click.option("--topics", default=2000, show_default=True)
@click.option("--partitions", default=5, show_default=True)
@click.option("--size", default=200, show_default=True)
@click.option("--startup", is_flag=True, help="Restart time and memory per partition.")
@click.option("--no-warm", is_flag=True, help="Skip the warm phases (very many partitions).")
@click.option("--shoal-arg", multiple=True, help="Extra option for `shoal serve`.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option(
    "--profile",
    type=click.Path(path_type=Path),
    default=None,
    help="Run the cold and warm phases under cProfile, stats to this file.",
)
def main(
    target: str,
    topics: int,
    partitions: int,
    size: int,
    startup: bool,
    no_warm: bool,
    shoal_arg: tuple[str, ...],
    data_dir: Path | None,
    profile: Path | None,
) -> None:
    harness = load_harness()
    tmp = Path(tempfile.mkdtemp(prefix="partitions-bench-"))
    broker = harness.BrokerProcess(
        data_dir or tmp / "data", args=list(shoal_arg), target=target
    ).start(timeout=120)
    out: dict[str, Any] = {
        "target": target,
        "topics": topics,
        "partitions": partitions,
        "size": size,
        "load_before": os.getloadavg()[0],
    }
    names = [f"fleet-{i:06d}" for i in range(topics)]
    try:
        out["create_s"] = round(create_topics(broker.bootstrap, names, partitions), 2)
        if target == "shoal":
            if profile is not None:
                broker.stop()
                base = broker.command()
                broker.command = (
                    lambda: [  # type: ignore[method-assign]
                        base[0],
                        "-m",
                        "cProfile",
                        "-o",
                        str(profile),
                        *base[1:],
                    ]
                )
            t0 = time.monotonic()
            broker.restart(timeout=300)
            out["restart_to_ready_s"] = round(time.monotonic() - t0, 2)
            pid = broker.proc.pid
            out["rss_ready_kib"] = rss_kib(pid)
        pid = broker.proc.pid
        prod = Producer(
            {
                "bootstrap.servers": broker.bootstrap,
                "acks": "all",
                "queue.buffering.max.messages": 1_000_000,
                "message.timeout.ms": 600_000,
            }
        )
        cpu0 = harness.cpu_seconds(pid)
        out["cold"] = one_each(prod, names, partitions, size)
        cpu1 = harness.cpu_seconds(pid)
        out["cold"]["broker_cpu_s"] = round(cpu1 - cpu0, 2)
        out["rss_after_cold_kib"] = rss_kib(pid)
        if not no_warm:
            out["warm"] = one_each(prod, names, partitions, size)
            out["warm"]["broker_cpu_s"] = round(harness.cpu_seconds(pid) - cpu1, 2)
            out["warm2"] = one_each(prod, names, partitions, size)
            out["rss_after_warm_kib"] = rss_kib(pid)
        if "rss_ready_kib" in out:
            n = topics * partitions
            after = out.get("rss_after_warm_kib", out["rss_after_cold_kib"])
            out["rss_per_opened_partition_kib"] = round((after - out["rss_ready_kib"]) / n, 2)
        if startup and target == "shoal":
            broker.stop()
            t0 = time.monotonic()
            broker.start(timeout=300)
            out["startup_to_ready_s"] = round(time.monotonic() - t0, 2)
            out["startup_rss_kib"] = rss_kib(broker.proc.pid)
        out["load_after"] = os.getloadavg()[0]
    finally:
        broker.stop(timeout=120)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
