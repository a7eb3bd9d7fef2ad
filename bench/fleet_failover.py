#!/usr/bin/env python3
"""A fleet's failover: a broker holding a third of 10,000 partitions is
killed (issue 13, item 1 in cluster mode).

Three brokers on one embedded PostgreSQL and one moto S3 server:

  create     T topics of P partitions in CreateTopics of 500 (wall time);
  warm       one record to each partition (librdkafka), so every owner has
             opened its partitions;
  kill -9    one broker; at once, one record to each of the partitions it
             led. librdkafka retries them (NOT_LEADER, metadata refresh)
             until the controller has handed them on and the new owners
             have opened them. Reported: from the kill to the last
             acknowledgement.

The lease (`broker.session.timeout.ms`) is the floor of both; the rest is
the controller's round, the new owners' opens and the client's retries.

    PYTHONPATH=src:tests .venv/bin/python bench/fleet_failover.py \
        [--topics 2000 --partitions 5] [--session-ms 6000 --heartbeat-ms 1000] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from cluster_harness import Cluster, wait_for
from fleet_batched import create_topics

ROOT = Path(__file__).resolve().parent.parent


def leaders(bootstrap: str, names: set[str]) -> dict[tuple[str, int], int]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
    return {
        (t.topic, p.id): p.leader for t in md.topics.values() if t.topic in names
        for p in t.partitions.values()
    }  # fmt: skip


def deliver(bootstrap: str, targets: list[tuple[str, int]]) -> float:
    """One record to each partition; the time from the first produce() to
    the last acknowledgement. Any failure ends the bench."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.timeout.ms": 120_000}
    )
    failed: list[str] = []

    def done(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    t0 = time.monotonic()
    for topic, p in targets:
        producer.produce(topic, b"x" * 200, partition=p, on_delivery=done)
        producer.poll(0)
    left = producer.flush(180)
    if left or failed:
        raise SystemExit(f"{left} undelivered, {len(failed)} failed: {failed[:3]}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topics", type=int, default=2000)
    ap.add_argument("--partitions", type=int, default=5)
    ap.add_argument("--session-ms", default="6000")
    ap.add_argument("--heartbeat-ms", default="1000")
    ap.add_argument("--victim", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the brokers' data and logs")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    print(f"commit {commit}, {time.strftime('%H:%M UTC', time.gmtime())}", flush=True)
    env = {
        "SHOAL_BROKER_SESSION_TIMEOUT_MS": args.session_ms,
        "SHOAL_BROKER_HEARTBEAT_INTERVAL_MS": args.heartbeat_ms,
        "SHOAL_CLUSTER_REFRESH_INTERVAL_MS": "250",
    }
    names = [f"fleet-{i:06d}" for i in range(args.topics)]
    wanted = set(names)
    root = Path(tempfile.mkdtemp(prefix="shoal-fleet-failover-"))
    c = Cluster(root, env=env).start()
    out: dict[str, Any] = {"partitions": args.topics * args.partitions, "logs": str(root)}
    try:
        t0 = time.monotonic()
        create_topics(c.bootstrap, names, args.partitions)
        out["create_s"] = round(time.monotonic() - t0, 2)
        owners = wait_for(
            lambda: (lambda o: o if len(o) == out["partitions"] and -1 not in o.values() else None)(
                leaders(c.bootstrap, wanted)
            ),
            120,
            "every partition led",
        )
        out["warm_s"] = round(deliver(c.bootstrap, sorted(owners)), 2)
        moved = sorted(tp for tp, node in owners.items() if node == args.victim)
        out["moved_partitions"] = len(moved)
        survivors = ",".join(b.bootstrap for n, b in c.brokers.items() if n != args.victim)
        killed = time.monotonic()
        c.brokers[args.victim].kill()
        out["killed_utc"] = time.strftime("%H:%M:%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]
        deliver(survivors, moved)
        out["last_ack_after_kill_s"] = round(time.monotonic() - killed, 2)
        now = leaders(survivors, wanted)
        out["led_elsewhere"] = sum(1 for tp in moved if now[tp] not in (-1, args.victim))
    finally:
        c.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            out.pop("logs")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
