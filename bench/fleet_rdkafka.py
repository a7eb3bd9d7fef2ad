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

from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BrokerProcess
from security_bench import _cpu_seconds

RECORD_BYTES = 200


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
        for target in a.targets.split(","):
            broker = BrokerProcess(Path(tmp) / target, target=target).start()
            assert broker.proc is not None
            try:
                admin = AdminClient({"bootstrap.servers": broker.bootstrap})
                new = NewTopic("fleet", a.partitions, 1)
                admin.create_topics([new], request_timeout=300)["fleet"].result(600)
                for r in range(a.rounds):
                    lat = Path(tmp) / f"{target}-{r}.latency"
                    cmd = [a.rdkafka_performance, "-P", "-t", "fleet", "-b", broker.bootstrap]
                    cmd += ["-s", str(RECORD_BYTES), "-c", str(count), "-r", str(a.rate)]
                    cmd += ["-a", "-1", "-l", "-A", str(lat), "-X", "linger.ms=5"]
                    cmd += ["-X", "sticky.partitioning.linger.ms=0"]
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
                        raise SystemExit(f"{target}: no delivery latency recorded")

                    def pct(q: float, us: list[int] = us, n: int = n) -> float:
                        return us[min(n - 1, int(n * q))] / 1000

                    print(
                        f"{target} round {r + 1}: {n} of {count} acknowledged in {wall:.1f} s "
                        f"({n / wall:.0f}/s), latency p50 {pct(0.5):.1f} ms, "
                        f"p99 {pct(0.99):.1f}, p99.9 {pct(0.999):.1f}, max {us[-1] / 1000:.1f}; "
                        f"broker {cpu:.1f} CPU s ({cpu / wall:.2f} cores, "
                        f"{cpu / n * 1e6:.0f} µs per record), client {client / wall:.2f} cores",
                        flush=True,
                    )
            finally:
                broker.stop()


if __name__ == "__main__":
    main()
