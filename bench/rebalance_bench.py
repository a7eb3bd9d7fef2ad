"""Rebalance bench (issue 14): how long each member of a 10-member group stops
consuming when an 11th member joins, under the classic protocol (librdkafka's
default eager `range,roundrobin`, and `cooperative-sticky`) and under the
consumer protocol (KIP-848), one broker, same run.

    .venv/bin/python bench/rebalance_bench.py [--partitions 20] [--rate 300]

A producer writes `--rate` records/s spread evenly over the partitions for the
whole scenario. Ten members (threads, one confluent-kafka Consumer each,
client defaults otherwise: classic heartbeats every 3 s; consumer-protocol
heartbeats every 5 s, the broker's `group.consumer.heartbeat.interval.ms`
default) consume until the group is steady, then an 11th joins. Per original
member, its **pause** is the longest gap between two records it received in the
window from the join until 15 s after the 11th member's first record; the
same gap measured over the steady period before the join is the baseline.
Per partition, its **handoff** is the longest gap between two receipts of it
by anyone in the window (a moved partition's handoff includes its revocation).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from harness import BrokerProcess

STEADY_S = 8.0
AFTER_S = 15.0
SCENARIOS: dict[str, dict[str, Any]] = {
    "classic, eager (librdkafka default range,roundrobin)": {},
    "classic, cooperative-sticky": {"partition.assignment.strategy": "cooperative-sticky"},
    "consumer (KIP-848), uniform assignor": {"group.protocol": "consumer"},
}


@dataclass
class Member:
    bootstrap: str
    group: str
    topic: str
    conf: dict[str, Any]
    receipts: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Member:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        c = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.group,
                "auto.offset.reset": "latest",
                "log_level": 3,
                **self.conf,
            }
        )
        c.subscribe([self.topic])
        while not self.stop.is_set():
            for m in c.consume(500, 0.1):
                if not m.error():
                    self.receipts.append((time.monotonic(), m.partition()))
        c.close()

    def max_gap(self, start: float, end: float) -> float:
        times = [start] + [t for t, _ in self.receipts if start <= t <= end] + [end]
        return max(b - a for a, b in itertools.pairwise(times))


def produce_loop(
    bootstrap: str, topic: str, partitions: int, rate: int, stop: threading.Event
) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    interval = 1.0 / rate
    next_at = time.monotonic()
    i = 0
    while not stop.is_set():
        p.produce(topic, value=b"x" * 100, partition=i % partitions)
        p.poll(0)
        i += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    left = p.flush(10)
    if left:
        print(f"producer fell behind: {left} records unsent", file=sys.stderr)


def wait_for(cond: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def scenario(bootstrap: str, partitions: int, rate: int, conf: dict[str, Any]) -> dict[str, Any]:
    topic = f"rb-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[
        topic
    ].result(30)
    stop_producing = threading.Event()
    producer = threading.Thread(
        target=produce_loop, args=(bootstrap, topic, partitions, rate, stop_producing), daemon=True
    )
    producer.start()
    group = f"rb-{uuid.uuid4().hex[:8]}"
    members = [Member(bootstrap, group, topic, conf).start() for _ in range(10)]

    def seen_partitions(since: float) -> set[int]:
        return {p for m in members for t, p in list(m.receipts) if t >= since}

    try:
        t0 = time.monotonic()
        wait_for(lambda: seen_partitions(t0) == set(range(partitions)), 120, "all partitions")
        wait_for(lambda: all(m.receipts for m in members), 120, "every member consuming")
        steady_from = time.monotonic()
        time.sleep(STEADY_S)
        joined_at = time.monotonic()
        baseline = [m.max_gap(steady_from, joined_at) for m in members]
        late = Member(bootstrap, group, topic, conf).start()
        members.append(late)  # stopped with the others
        wait_for(lambda: bool(late.receipts), 120, "the 11th member's first record")
        first_record = late.receipts[0][0] - joined_at
        end = time.monotonic() + AFTER_S
        time.sleep(AFTER_S)
        pauses = [m.max_gap(joined_at, end) for m in members[:10]]
        everyone = members
        receipts = sorted((t, p) for m in everyone for t, p in m.receipts if joined_at <= t <= end)
        last: dict[int, float] = dict.fromkeys(range(partitions), joined_at)
        handoff: dict[int, float] = dict.fromkeys(range(partitions), 0.0)
        for t, p in receipts:
            handoff[p] = max(handoff[p], t - last[p])
            last[p] = t
        for p in range(partitions):
            handoff[p] = max(handoff[p], end - last[p])
        return {
            "baseline_max": max(baseline),
            "pause_median": statistics.median(pauses),
            "pause_max": max(pauses),
            "paused_1s": sum(1 for g in pauses if g >= 1.0),
            "handoff_max": max(handoff.values()),
            "partitions_paused_1s": sum(1 for g in handoff.values() if g >= 1.0),
            "first_record": first_record,
        }
    finally:
        for m in members:
            m.stop.set()
        stop_producing.set()
        for m in members:
            assert m.thread is not None
            m.thread.join(30)
        producer.join(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=20)
    ap.add_argument("--rate", type=int, default=300, help="records/s over all partitions")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix="shoal-rebalance-bench-"))
    broker = BrokerProcess(root / "data").start()
    rows = []
    try:
        for name, conf in SCENARIOS.items():
            r = scenario(broker.bootstrap, args.partitions, args.rate, conf)
            rows.append((name, r))
            print(name, {k: round(v, 2) for k, v in r.items()}, flush=True)
    finally:
        broker.stop()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print()
    print(
        f"commit {commit}; {args.partitions} partitions, {args.rate} records/s; "
        f"load average after the run {load}"
    )
    print()
    print(
        "| protocol | members paused ≥ 1 s (of 10) | pause median s | pause max s "
        "| steady max gap s | partitions paused ≥ 1 s | longest partition handoff s "
        "| 11th member's first record s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        print(
            f"| {name} | {r['paused_1s']} | {r['pause_median']:.2f} | {r['pause_max']:.2f} "
            f"| {r['baseline_max']:.2f} | {r['partitions_paused_1s']} "
            f"| {r['handoff_max']:.2f} | {r['first_record']:.2f} |"
        )


if __name__ == "__main__":
    main()
