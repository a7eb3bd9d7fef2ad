"""A fleet's sustained load with librdkafka's C client: records at a fixed
rate spread over many partitions, each acknowledged with acks=all, and the
time from its production to its acknowledgement (issue 13's "10,000
partitions at 1 record/s, p99 ≤ 50 ms").

rdkafka_performance -P -l stamps each record with the time it was produced
and, with -A FILE, writes each delivery's latency (µs) to FILE; -r sets the
rate. 200-byte records, null keys spread at random over one topic
(`sticky.partitioning.linger.ms=0`), linger.ms=5. Against Shoal (file store)
and then tansu 0.6 (memory) in the same run; per round: the
acknowledgements per second achieved, latency percentiles, and the broker's
CPU from /proc (and the client's, which on two cores shares them).

    PYTHONPATH=src .venv/bin/python bench/fleet_rdkafka.py \
        --rdkafka-performance /tmp/rdk216/rdkafka_performance \
        [--partitions 10000] [--rate 10000] [--seconds 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from partitions_rdkafka import fleet_brokers, produce_cmd
from security_bench import _cpu_seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rdkafka-performance", required=True, metavar="PATH")
    ap.add_argument("--partitions", type=int, default=10_000)
    ap.add_argument("--rate", type=int, default=10_000, help="records per second, in all")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long each round sends")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--targets", default="shoal,tansu")
    a = ap.parse_args()
    count = int(a.rate * a.seconds)
    with tempfile.TemporaryDirectory(prefix="fleet-rdkafka-") as tmp:
        for broker in fleet_brokers(tmp, a.targets.split(","), a.partitions):
            assert broker.proc is not None
            for r in range(a.rounds):
                lat = Path(tmp) / f"{broker.target}-{r}.latency"
                cmd = produce_cmd(a.rdkafka_performance, broker.bootstrap, count)
                cmd += ["-r", str(a.rate), "-l", "-A", str(lat)]
                cpu0, t0 = _cpu_seconds(broker.proc.pid), time.monotonic()
                client0 = os.times()
                subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
                wall = time.monotonic() - t0
                cpu = _cpu_seconds(broker.proc.pid) - cpu0
                client1 = os.times()
                client = (client1.children_user - client0.children_user) + (
                    client1.children_system - client0.children_system
                )
                us = sorted(int(x) for x in lat.read_text().split())
                n = len(us)
                if n == 0:
                    raise SystemExit(f"{broker.target}: no delivery latency recorded")

                def pct(q: float, us: list[int] = us, n: int = n) -> float:
                    return us[min(n - 1, int(n * q))] / 1000

                print(
                    f"{broker.target} round {r + 1}: {n} of {count} acknowledged in "
                    f"{wall:.1f} s ({n / wall:.0f}/s), latency p50 {pct(0.5):.1f} ms, "
                    f"p99 {pct(0.99):.1f}, p99.9 {pct(0.999):.1f}, max {us[-1] / 1000:.1f}; "
                    f"broker {cpu:.1f} CPU s ({cpu / wall:.2f} cores, "
                    f"{cpu / n * 1e6:.0f} µs per record), client {client / wall:.2f} cores",
                    flush=True,
                )


if __name__ == "__main__":
    main()
