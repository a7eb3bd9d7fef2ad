"""CPU cost of the consumer group protocol's state machine (issue 14), without
sockets: `shoal.group.consumer.ConsumerGroups` driven directly, as the
coordinator drives it on its event loop.

    .venv/bin/python bench/group_machine_bench.py [--members 100 1000]

Per group size N (members subscribed to one topic of 2N partitions, uniform
assignor): the time for N members to join one after another (each join bumps
the group epoch, so each computes a target assignment), then to run the
reconciliation to a stable group, then the cost of one heartbeat of a stable
member (what every member pays every heartbeat interval), and of an (N+1)th
member joining a stable group (one assignment).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
import uuid
from collections.abc import Iterable

from shoal.group.consumer import ConsumerGroupConfig, ConsumerGroups, HeartbeatRequest

G = "bench"


class OneTopic:
    def __init__(self, partitions: int) -> None:
        self.id = uuid.uuid4()
        self.partitions = partitions

    def topic(self, name: str) -> tuple[uuid.UUID, int] | None:
        return (self.id, self.partitions) if name == "t" else None

    def names(self) -> Iterable[str]:
        return ["t"]


def join(m: ConsumerGroups, member: str, now: int) -> int:
    req = HeartbeatRequest(
        G, member, 0, rebalance_timeout_ms=300_000, subscribed_topic_names=("t",), owned={}
    )
    return m.heartbeat(req, now).member_epoch


def settle(m: ConsumerGroups, now: int) -> int:
    """Heartbeat every member, reporting what it owns, until nothing changes."""
    rounds = 0
    while True:
        rounds += 1
        changed = False
        for mid, member in list(m.groups[G].members.items()):
            owned = {t: frozenset(p) for t, p in member.assigned.items()}
            r = m.heartbeat(HeartbeatRequest(G, mid, member.epoch, owned=owned), now)
            changed |= r.assignment is not None
        if not changed:
            return rounds


def run(n: int) -> dict[str, float]:
    m = ConsumerGroups(ConsumerGroupConfig(session_timeout_ms=10**9), OneTopic(2 * n))
    t0 = time.perf_counter()
    for i in range(n):
        join(m, f"m{i}", 0)
    joined = time.perf_counter() - t0
    t0 = time.perf_counter()
    rounds = settle(m, 0)
    settled = time.perf_counter() - t0
    member = m.groups[G].members["m0"]
    owned = {t: frozenset(p) for t, p in member.assigned.items()}
    req = HeartbeatRequest(G, "m0", member.epoch, owned=owned)
    reps = 2000
    t0 = time.perf_counter()
    for _ in range(reps):
        m.heartbeat(req, 0)
    beat_us = (time.perf_counter() - t0) / reps * 1e6
    t0 = time.perf_counter()
    join(m, "late", 0)
    late_ms = (time.perf_counter() - t0) * 1000
    return {
        "join_s": joined,
        "settle_s": settled,
        "rounds": rounds,
        "beat_us": beat_us,
        "late_ms": late_ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, nargs="+", default=[100, 1000])
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    rows = [(n, run(n)) for n in args.members]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"commit {commit}; load average after the run {load}\n")
    print(
        "| members | partitions | N joins, one by one s | reconcile to stable s (rounds) "
        "| stable heartbeat µs | one more member joins ms |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, r in rows:
        print(
            f"| {n} | {2 * n} | {r['join_s']:.2f} | {r['settle_s']:.2f} ({r['rounds']:.0f}) "
            f"| {r['beat_us']:.0f} | {r['late_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
