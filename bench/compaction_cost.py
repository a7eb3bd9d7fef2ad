"""The deferred CPU of a fleet's small requests: what the broker spends after
the load, compacting its many small WAL objects and deleting the replaced
ones.

At a fleet's shape (librdkafka's one request per partition, a few records
each) a local store writes a WAL object every few requests; compaction rewrites
them later, so a produce run's CPU per record leaves part of its cost out.
This sends `--records` 200-byte records at `--rate` over `--partitions` with
rdkafka_performance (as bench/fleet_rdkafka.py does), then samples the
broker's CPU from /proc every 5 s for `--watch` seconds with no client
connected. Shoal on its file store; the broker runs from the src/ first on
PYTHONPATH (A/B: a `git archive` tree's src).

    PYTHONPATH=src .venv/bin/python bench/compaction_cost.py \\
        --rdkafka-performance /tmp/rdk216/rdkafka_performance [--records 100000]
"""

from __future__ import annotations

import argparse
import itertools
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
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=5000, help="records per second, in all")
    ap.add_argument("--watch", type=int, default=60, help="seconds to watch after the load")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="compaction-cost-") as tmp:
        for broker in fleet_brokers(tmp, ["shoal"], a.partitions):
            assert broker.proc is not None
            pid = broker.proc.pid
            cpu0, t0 = _cpu_seconds(pid), time.monotonic()
            cmd = produce_cmd(a.rdkafka_performance, broker.bootstrap, a.records)
            subprocess.run([*cmd, "-r", str(a.rate)], capture_output=True, check=True)
            produced = _cpu_seconds(pid) - cpu0
            wall = time.monotonic() - t0
            before = _cpu_seconds(pid)
            steps = []
            for _ in range(max(1, a.watch // 5)):
                time.sleep(5)
                steps.append(_cpu_seconds(pid))
            after = steps[-1] - before
            per_step = [round(y - x, 2) for x, y in itertools.pairwise([before, *steps])]
            print(
                f"produce: {a.records} records in {wall:.1f} s, broker {produced:.1f} CPU s "
                f"({produced / a.records * 1e6:.0f} µs per record); after: {after:.2f} CPU s "
                f"({after / a.records * 1e6:.0f} µs per record) in {a.watch} s, by 5 s: "
                f"{per_step}",
                flush=True,
            )


if __name__ == "__main__":
    main()
