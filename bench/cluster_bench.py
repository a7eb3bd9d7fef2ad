"""Cluster bench (issue 5): time from kill -9 to the first acknowledged produce
on each moved partition, and partition move time, with three brokers on one
embedded PostgreSQL and one moto S3 bucket, default lease settings.

    .venv/bin/python bench/cluster_bench.py [--session-ms 6000]
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
from test_cluster_failover import Load, agreed, create_topic, view


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--session-ms", default="6000")
    ap.add_argument("--heartbeat-ms", default="1000")
    args = ap.parse_args()
    env = {
        "SHOAL_BROKER_SESSION_TIMEOUT_MS": args.session_ms,
        "SHOAL_BROKER_HEARTBEAT_INTERVAL_MS": args.heartbeat_ms,
        "SHOAL_CLUSTER_REFRESH_INTERVAL_MS": "250",
    }
    root = Path(tempfile.mkdtemp(prefix="shoal-cluster-bench-"))
    c = Cluster(root, env=env).start()
    try:
        create_topic(c, "bench")
        owners = wait_for(lambda: agreed(c, "bench", {1, 2, 3}), 30, "agreement")
        load = Load(c.bootstrap, "bench").start()
        wait_for(lambda: len(load.acked) > 5000, 60, "load")
        moves = []
        for p in (0, 1, 2):
            target = 1 + (owners[p] % 3)
            t0 = time.monotonic()
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "shoal",
                    "partitions",
                    "move",
                    "bench",
                    str(p),
                    "--to",
                    str(target),
                    "--metadata",
                    c.url,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            wait_for(lambda p=p, t0=t0: any(t > t0 for t in load.ack_times.get(p, [])), 30, "write")
            first = min(t for t in load.ack_times[p] if t > t0)
            moves.append((p, out.stdout.strip(), first - t0))
        owners = wait_for(lambda: agreed(c, "bench", {1, 2, 3}), 30, "agreement")
        victim = 2
        moved = [p for p, o in owners.items() if o == victim]
        killed = time.monotonic()
        c.brokers[victim].kill()
        wait_for(
            lambda: all(any(t > killed for t in load.ack_times.get(p, [])) for p in moved),
            60,
            "moved partitions writable",
        )
        load.stop()
        print(f"session.timeout.ms={args.session_ms} heartbeat={args.heartbeat_ms}")
        for p, line, first in moves:
            print(f"move p{p}: {line}; first ack on new owner {first:.2f}s after the command")
        for p in moved:
            first = min(t for t in load.ack_times[p] if t > killed)
            print(f"kill -9: partition {p} first acknowledged produce {first - killed:.2f}s")
        print(f"records acknowledged: {len(load.acked)}, errors: {len(load.errors)}")
        _ = view
    finally:
        c.stop()


if __name__ == "__main__":
    main()
