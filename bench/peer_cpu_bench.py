"""Shoal against tansu with librdkafka's own C producer: MB/s and each
broker's CPU seconds per GB produced (from /proc), in one run.

    .venv/bin/python bench/peer_cpu_bench.py --rdkafka-performance PATH \
        [--rounds 2] [--count 500000] [--no-idempotence]

rdkafka_performance (built from librdkafka's examples/) is a client that
cannot be the bottleneck; a Python load generator on the same two cores can
hide which broker is faster. 1 KiB records, acks=all, idempotent (unless
--no-idempotence), linger.ms=5,
one auto-created partition per run; Shoal on its default file store (every
acknowledged batch in the object store and SQLite), tansu 0.6 on memory.

The binary must be linked with a librdkafka that tansu accepts: Debian's
2.0.2 fails its ApiVersions exchange with tansu and retries forever; the
2.16.0 in confluent-kafka's wheel works (docs/BENCHMARKS.md, "Checked with a
C client", says how). The version the binary reports is printed first."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BrokerProcess
from security_bench import _cpu_seconds, rdkafka_performance


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rdkafka-performance", metavar="PATH", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--count", type=int, default=500_000, help="records per run")
    ap.add_argument(
        "--no-idempotence",
        action="store_true",
        help="plain acks=all producer (tansu 0.6 stalled with the idempotent one)",
    )
    a = ap.parse_args()
    gb = a.count * 1024 / 1e9
    usage = subprocess.run([a.rdkafka_performance, "-h"], capture_output=True, text=True)
    version = [x for x in (usage.stdout + usage.stderr).splitlines() if "librdkafka version" in x]
    print(version[0].strip() if version else "librdkafka version: not reported", flush=True)
    with tempfile.TemporaryDirectory(prefix="peer-cpu-") as tmp:
        for target in ("shoal", "tansu"):
            broker = BrokerProcess(Path(tmp) / target / "data", target=target).start()
            try:
                assert broker.proc is not None
                for r in range(a.rounds):
                    topic = f"peer-{target}-{r}-{os.urandom(2).hex()}"
                    cpu0 = _cpu_seconds(broker.proc.pid)
                    mbs = rdkafka_performance(
                        a.rdkafka_performance,
                        broker.bootstrap,
                        topic,
                        a.count,
                        [],
                        idempotent=not a.no_idempotence,
                    )
                    cpu = _cpu_seconds(broker.proc.pid) - cpu0
                    print(
                        f"{target} round {r + 1}: {mbs:.1f} MB/s, broker {cpu / gb:.2f} CPU s/GB",
                        flush=True,
                    )
            finally:
                broker.stop()


if __name__ == "__main__":
    main()
