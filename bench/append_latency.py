"""One append at a time: a producer with linger.ms=0 sends one 1 KiB record
and flushes before the next, so each figure is a whole round trip through
the broker (request, append, commit, answer) with nothing to batch with.

    .venv/bin/python bench/append_latency.py [--count 3000] [--targets shoal,tansu]

Shoal on its default file store, tansu 0.6 on memory, one after the other.
The first 500 are not timed (connection, topic creation, warm caches)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import Producer

from harness import BrokerProcess

WARMUP = 500


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--targets", default="shoal,tansu")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="append-latency-") as tmp:
        for target in a.targets.split(","):
            broker = BrokerProcess(Path(tmp) / target, target=target).start()
            try:
                p = Producer(
                    {
                        "bootstrap.servers": broker.bootstrap,
                        "linger.ms": 0,
                        "acks": "all",
                        "enable.idempotence": True,
                    }
                )
                times: list[float] = []
                for i in range(a.count):
                    t0 = time.perf_counter()
                    p.produce("append-latency", b"x" * 1024)
                    if p.flush(10) != 0:
                        raise SystemExit(f"{target}: a record was not delivered in 10 s")
                    if i >= WARMUP:
                        times.append((time.perf_counter() - t0) * 1000)
                times.sort()
                n = len(times)
                print(
                    f"{target}: {n} appends one at a time, p50 {times[n // 2]:.3f} ms, "
                    f"p90 {times[n * 9 // 10]:.3f}, p99 {times[n * 99 // 100]:.3f}",
                    flush=True,
                )
            finally:
                broker.stop()


if __name__ == "__main__":
    main()
