"""Storage-engine benchmarks (issue "Shared-storage log engine").

1. linger: produce latency p50/p99 against wal.linger.ms, on the file store and
   on an S3 endpoint (moto), at half of the measured maximum throughput, with
   the PUT latency of the store measured alongside.
2. catchup: read a backlog from cold caches (after compaction) while a tail
   workload produces, and compare the tail's p99 with and without the reader.
3. memory: resident memory of a broker with 1,000 partitions under load,
   against the configured cache sizes.

Run: .venv/bin/python bench/storage_bench.py [linger] [catchup] [memory]
     [--backlog-mb 2048]. Prints markdown tables for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


from harness import BrokerProcess, s3_endpoint
from shoal.tools.bench import ConsumeSpec, ProduceSpec, run_consume, run_produce

MB = 1_000_000


def broker(tmp: Path, name: str, store: str, env: dict[str, str]) -> BrokerProcess:
    args: list[str] = []
    full_env = dict(env)
    if store == "s3":
        s3 = s3_endpoint()
        full_env.update(s3)
        args = ["--objects", f"s3://{s3['SHOAL_TEST_BUCKET']}/bench-{name}-{time.time_ns()}"]
    return BrokerProcess(tmp / name, env=full_env, args=args).start()


def put_latency_ms(store: str, tmp: Path, size: int = 256 * 1024, n: int = 30) -> float:
    from shoal.storage.objectstore import ObjectStore

    if store == "s3":
        os.environ.update(s3_endpoint())
        url = f"s3://{s3_endpoint()['SHOAL_TEST_BUCKET']}/put-probe-{time.time_ns()}"
    else:
        url = (tmp / "put-probe").resolve().as_uri()

    async def probe() -> list[float]:
        s = ObjectStore(url)
        out = []
        data = os.urandom(size)
        for i in range(n):
            t = time.perf_counter()
            await s.put(f"p/{i}", data)
            out.append((time.perf_counter() - t) * 1000)
        return out

    return statistics.median(asyncio.run(probe()))


def bench_linger(tmp: Path, lingers: list[int], stores: list[str]) -> str:
    rows = []
    for store in stores:
        put_ms = put_latency_ms(store, tmp)
        for linger in lingers:
            b = broker(tmp, f"linger-{store}-{linger}", store, {"SHOAL_WAL_LINGER_MS": str(linger)})
            try:
                peak = run_produce(
                    ProduceSpec(
                        b.bootstrap,
                        f"peak-{linger}",
                        record_size=1024,
                        partitions=6,
                        duration_s=5,
                        linger_ms=5,
                    ),
                    quiet=True,
                )
                assert peak.produce is not None
                rate = peak.produce.throughput.records_per_s / 2
                # Steady state at half the peak: let the flat-out phase's work
                # settle, then warm the topic up at the rate (not measured:
                # topic creation and the first WAL objects) before measuring.
                time.sleep(5)
                for seconds in (3, 15):
                    half = run_produce(
                        ProduceSpec(
                            b.bootstrap,
                            f"half-{linger}",
                            record_size=1024,
                            partitions=6,
                            duration_s=seconds,
                            rate=rate,
                            linger_ms=5,
                        ),
                        quiet=True,
                    )
                assert half.produce is not None
                lat = half.produce.latency
                goal = linger + put_ms + 20
                rows.append(
                    f"| {store} | {linger} | {peak.produce.throughput.mb_per_s:.1f} | "
                    f"{rate:,.0f} | {lat.p50_ms:.1f} | {lat.p99_ms:.1f} | {put_ms:.1f} | "
                    f"{goal:.1f} | {'yes' if lat.p99_ms <= goal else 'no'} |"
                )
                print(rows[-1], flush=True)
            finally:
                b.stop()
    head = (
        "| store | wal.linger.ms | max MB/s | rate (rec/s) at half | p50 ms | p99 ms | "
        "PUT p50 ms | goal: linger+PUT+20 | met |\n|---|---|---|---|---|---|---|---|---|"
    )
    return head + "\n" + "\n".join(rows)


class TailLoad:
    """A fixed-rate producer whose latencies are kept, on its own thread."""

    def __init__(self, bootstrap: str, topic: str, rate: float) -> None:
        self.spec = ProduceSpec(
            bootstrap, topic, record_size=1024, partitions=6, rate=rate, duration_s=12, linger_ms=5
        )
        self.result: Any = None
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        self.result = run_produce(self.spec, quiet=True)

    def start(self) -> TailLoad:
        self.thread.start()
        return self

    def join(self) -> Any:
        self.thread.join()
        return self.result


def bench_catchup(tmp: Path, backlog_mb: int, rates: list[str]) -> str:
    """One backlog, read from cold caches once per pacing rate (MiB/s; 0 is
    unpaced, "default" is the broker's default)."""
    env = {
        "SHOAL_COMPACTION_MIN_AGE_MS": "0",
        "SHOAL_COMPACTION_INTERVAL_MS": "1000",
        "SHOAL_COMPACTION_MAX_BYTES": str(512 * 1024 * 1024),
        "SHOAL_LOG_CACHE_BYTES": str(128 * 1024 * 1024),
        "SHOAL_BLOCK_CACHE_BYTES": str(128 * 1024 * 1024),
    }
    b = broker(tmp, "catchup", "file", env)
    rows = []
    try:
        records = backlog_mb * MB // 1024
        fill = run_produce(
            ProduceSpec(
                b.bootstrap,
                "backlog",
                record_size=1024,
                partitions=6,
                duration_s=600,
                max_records=records,
                linger_ms=20,
            ),
            quiet=True,
        )
        assert fill.produce is not None
        # Let compaction rewrite the WAL objects into per-stream objects.
        wal_dir = b.data_dir / "objects" / "wal"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and any(p.is_file() for p in wal_dir.rglob("*")):
            time.sleep(1)
        for i, rate in enumerate(rates):
            b.env.pop("SHOAL_CATCHUP_READ_MAX_BYTES_PER_SEC", None)
            if rate != "default":
                b.env["SHOAL_CATCHUP_READ_MAX_BYTES_PER_SEC"] = str(int(rate) * 2**20)
            b.restart()  # cold caches
            alone = TailLoad(b.bootstrap, f"tail-alone-{i}", 2000).start().join()
            tail = TailLoad(b.bootstrap, f"tail-busy-{i}", 2000).start()
            read = run_consume(
                ConsumeSpec(
                    b.bootstrap,
                    "backlog",
                    duration_s=600,
                    max_records=records,
                    extra={
                        "fetch.max.bytes": str(64 * 1024 * 1024),
                        "max.partition.fetch.bytes": str(8 * 1024 * 1024),
                    },
                ),
                quiet=True,
            )
            busy = tail.join()
            assert read.consume is not None
            c = read.consume.throughput
            p99_alone = alone.produce.latency.p99_ms
            p99_busy = busy.produce.latency.p99_ms
            growth = (p99_busy / p99_alone - 1) * 100 if p99_alone else 0.0
            label = {"default": "default", "0": "unpaced"}.get(rate, rate)
            rows.append(
                f"| {label} | {c.mb_per_s:.1f} MB/s ({c.records:,} records in "
                f"{c.elapsed_s:.1f} s) | {p99_alone:.1f} ms | {p99_busy:.1f} ms | "
                f"{growth:+.0f} % |"
            )
    finally:
        b.stop()
    return (
        f"backlog {fill.produce.throughput.bytes / MB:,.0f} MB, filled at "
        f"{fill.produce.throughput.mb_per_s:.1f} MB/s\n\n"
        "| pacing MiB/s | catch-up read (cold, compacted) | tail p99 alone | "
        "tail p99 during catch-up | growth |\n|---|---|---|---|---|\n" + "\n".join(rows)
    )


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def bench_memory(tmp: Path, partitions: int = 1000) -> str:
    cache = 64 * 1024 * 1024
    env = {
        "SHOAL_LOG_CACHE_BYTES": str(cache),
        "SHOAL_BLOCK_CACHE_BYTES": str(cache),
        "SHOAL_WAL_BUFFER_MAX_BYTES": str(32 * 1024 * 1024),
    }
    b = broker(tmp, "memory", "file", env)
    try:
        assert b.proc is not None
        idle = rss_kb(b.proc.pid)
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.2):
                peak = max(peak, rss_kb(b.proc.pid))  # type: ignore[union-attr]

        t = threading.Thread(target=sample)
        t.start()
        result = run_produce(
            ProduceSpec(
                b.bootstrap,
                "many",
                record_size=1024,
                partitions=partitions,
                duration_s=20,
                linger_ms=5,
                key_dist="uniform",
                keys=partitions * 4,
            ),
            quiet=True,
        )
        consume = run_consume(ConsumeSpec(b.bootstrap, "many", duration_s=60), quiet=True)
        stop.set()
        t.join()
    finally:
        b.stop()
    assert result.produce is not None and consume.consume is not None
    configured = 2 * cache + 32 * 1024 * 1024
    return (
        "| partitions | produced | consumed | RSS idle | RSS peak | "
        "caches + WAL buffer configured | peak - configured |\n|---|---|---|---|---|---|---|\n"
        f"| {partitions:,} | {result.produce.throughput.bytes / MB:,.0f} MB | "
        f"{consume.consume.throughput.records:,} records | {idle / 1024:.0f} MiB | "
        f"{peak / 1024:.0f} MiB | {configured / 2**20:.0f} MiB | "
        f"{(peak * 1024 - configured) / 2**20:.0f} MiB |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="*", default=["linger", "catchup", "memory"])
    ap.add_argument("--backlog-mb", type=int, default=2048)
    ap.add_argument("--lingers", default="1,5,20,50,100")
    ap.add_argument("--stores", default="file,s3")
    ap.add_argument(
        "--catchup-rates", default="default", help="pacing rates in MiB/s: 0 unpaced, default"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as d:
        tmp = Path(d)
        if "linger" in args.which:
            print(
                bench_linger(
                    tmp, [int(x) for x in args.lingers.split(",")], args.stores.split(",")
                ),
                flush=True,
            )
        if "catchup" in args.which:
            print(bench_catchup(tmp, args.backlog_mb, args.catchup_rates.split(",")), flush=True)
        if "memory" in args.which:
            print(bench_memory(tmp), flush=True)


if __name__ == "__main__":
    main()
