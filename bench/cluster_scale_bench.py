"""Cluster bench, part two (issue 5): partition move time against partition
size, and aggregate produce throughput of 1, 2 and 3 brokers.

    .venv/bin/python bench/cluster_scale_bench.py [--sizes-mb 1,100,1024] [--brokers 1,2,3]

Brokers, PostgreSQL (embedded) and S3 (moto) all share this machine, so the
throughput figures show what one machine's cores allow, not a scaling law.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cluster_harness import Cluster, wait_for
from shoal.tools.bench import ProduceSpec, run_produce
from test_cluster_failover import create_topic, view

MB = 1_000_000


def settled(c: Cluster, topic: str, nodes: set[int], partitions: int) -> dict[int, int] | None:
    """Owners once every broker reports the same live brokers and owners."""
    views = [
        view(b.bootstrap, topic) for b in c.brokers.values() if b.proc and b.proc.poll() is None
    ]
    first = views[0]
    if any(v != first for v in views) or first[0] != nodes or len(first[1]) != partitions:
        return None
    return first[1] if all(o in nodes for o in first[1].values()) else None


def move_times(sizes_mb: list[int]) -> list[str]:
    rows = []
    root = Path(tempfile.mkdtemp(prefix="shoal-move-bench-"))
    c = Cluster(root).start()
    try:
        for size in sizes_mb:
            topic = f"size-{size}"
            create_topic(c, topic, partitions=1)
            wait_for(lambda t=topic: settled(c, t, {1, 2, 3}, 1), 30, "agreement")
            fill = run_produce(
                ProduceSpec(
                    c.bootstrap,
                    topic,
                    record_size=1024,
                    partitions=1,
                    duration_s=900,
                    max_records=size * MB // 1024,
                    linger_ms=20,
                ),
                quiet=True,
            )
            assert fill.produce is not None and fill.produce.errors == 0
            owner = view(c.bootstrap.split(",")[0], topic)[1][0]
            target = 1 + owner % 3
            t0 = time.monotonic()
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "shoal",
                    "partitions",
                    "move",
                    topic,
                    "0",
                    "--to",
                    str(target),
                    "--metadata",
                    c.url,
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            elapsed = time.monotonic() - t0
            assert out.returncode == 0, out.stderr
            rows.append(
                f"| {fill.produce.throughput.bytes / MB:,.0f} MB | {owner} → {target} | "
                f"{out.stdout.strip()} | {elapsed:.2f} s (command, incl. Python start-up) |"
            )
            print(rows[-1], flush=True)
    finally:
        c.stop()
    return rows


def throughput(counts: list[int]) -> list[str]:
    rows = []
    for n in counts:
        root = Path(tempfile.mkdtemp(prefix=f"shoal-scale-{n}-"))
        c = Cluster(root, size=n).start()
        try:
            create_topic(c, "scale", partitions=6)
            wait_for(lambda c=c, n=n: settled(c, "scale", set(range(1, n + 1)), 6), 30, "agreement")
            r = run_produce(
                ProduceSpec(
                    c.bootstrap, "scale", record_size=1024, partitions=6, duration_s=15, linger_ms=5
                ),
                quiet=True,
            )
            assert r.produce is not None
            t = r.produce.throughput
            rows.append(
                f"| {n} | {t.mb_per_s:.1f} MB/s | {t.records_per_s:,.0f} | "
                f"{r.produce.latency.p99_ms:.0f} ms | {r.produce.errors} |"
            )
            print(rows[-1], flush=True)
        finally:
            c.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mb", default="1,100,1024")
    ap.add_argument("--brokers", default="1,2,3")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes_mb.split(",") if x]
    counts = [int(x) for x in args.brokers.split(",") if x]
    if sizes:
        print("| partition size | move | command output | wall time |\n|---|---|---|---|")
        move_times(sizes)
    if counts:
        print("| brokers | produce | records/s | p99 (flat out) | errors |\n|---|---|---|---|---|")
        throughput(counts)


if __name__ == "__main__":
    main()
