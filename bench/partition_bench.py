"""Partition bench (issue 17, items 2 and 3): network faults on a cluster of
brokers in network namespaces (tests/netns.py) under an idempotent producer's
load, each ending with the exactly-once tally over every acknowledged record.
Needs root and `ip netns`.

    .venv/bin/python bench/partition_bench.py [--cut-s 15] [--only pg-cut,zone]

Scenarios (three brokers; lease and heartbeat as given, by default the
broker defaults of 6 s and 1 s):
  pg-cut        b2 <-> PostgreSQL cut both ways (clients still reach b2)
  s3-cut        b2 <-> S3 cut both ways
  brokers       b2 cut from b1 and b3 both ways (brokers never talk: nothing
                should change)
  to-pg         b2 -> PostgreSQL only (its queries vanish, PostgreSQL's
                packets still arrive)
  from-pg       PostgreSQL -> b2 only (queries arrive and commit, answers vanish)
  flap          b2 <-> PostgreSQL cut and healed every --flap-s
  s3-flap       b2 <-> S3 cut and healed every --flap-s
  zone          six brokers in zones a, b, c; both brokers of zone a killed
                with SIGKILL at once; a consumer in zone a reads afterwards

For each: acknowledged, lost, duplicated, phantom (read, never acknowledged),
the longest pause in acknowledgements of the partitions the faulty broker
owned, and when partitions moved. Results as JSON lines on stdout and in
bench/results/partitions.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


from confluent_kafka import Producer

from cluster_harness import wait_for
from netns import NetCluster, unavailable
from test_cluster_failover import Load, create_topic, view
from test_partitions import read_back

PARTITIONS = 6


def owners_agreed(c: NetCluster, topic: str, nodes: set[int]) -> dict[int, int] | None:
    views = [view(c.brokers[n].bootstrap, topic) for n in sorted(nodes)]
    first = views[0]
    if any(v != first for v in views) or first[0] != nodes:
        return None
    if len(first[1]) != PARTITIONS or any(o not in nodes for o in first[1].values()):
        return None
    return first[1]


def tally(load: Load, got: list[tuple[int, int, bytes]]) -> dict[str, Any]:
    acked = {v for _p, _o, v in load.acked}
    values = [v for _p, _o, v in got]
    read = set(values)
    order_ok = True
    by_part: dict[int, list[int]] = {}
    for p, o, _v in got:
        by_part.setdefault(p, []).append(o)
    order_ok = all(offs == sorted(offs) for offs in by_part.values())
    return {
        "acknowledged": len(acked),
        "lost": len(acked - read),
        "duplicated": len(values) - len(read),
        "phantom": len(read - acked),
        "in_order": order_ok,
        "producer_errors": len(load.errors),
    }


def max_gap(load: Load, parts: list[int], start: float, end: float) -> float:
    """The longest pause between acknowledgements of `parts` in [start, end+)."""
    worst = 0.0
    for p in parts:
        times = [t for t in load.ack_times.get(p, []) if t >= start - 1]
        after = [t for t in times if t > end]
        times = [t for t in times if t <= end] + after[:1]
        for a, b in itertools.pairwise(times):
            worst = max(worst, b - a)
    return round(worst, 2)


def lease_losses(c: NetCluster, node: int) -> int:
    return c.brokers[node].log().count("lost its lease")


def run(
    name: str,
    fault: Callable[[NetCluster, dict[int, int], Load], dict[str, Any]],
    env: dict[str, str],
    size: int = 3,
    racks: list[str] | None = None,
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"shoal-partition-{name}-"))
    c = NetCluster(root, size=size, env=env, racks=racks)
    try:
        c.start()
        nodes = set(range(1, size + 1))
        create_topic(c, name)
        owners = wait_for(lambda: owners_agreed(c, name, nodes), 60, "agreement")
        load = Load(c.bootstrap, name)
        if name == "zone":
            ClientLog().attach(load, c.bootstrap, name)
        load.start()
        wait_for(lambda: len(load.acked) > 2000, 60, "initial load")
        notes = fault(c, owners, load)
        alive = {n for n, b in c.brokers.items() if b.proc and b.proc.poll() is None}
        wait_for(lambda: owners_agreed(c, name, alive), 90, "agreement after the fault")
        before = len(load.acked)
        wait_for(lambda: len(load.acked) > before + 1000, 60, "load after the fault")
        load.stop()
        got = read_back(c.bootstrap, name, len(load.acked))
        return {"scenario": name, **tally(load, got), **notes}
    finally:
        c.close()


def moved_after(c: NetCluster, topic: str, parts: list[int], wall0: float) -> float | None:
    """Seconds from wall0 until the last of `parts` was taken by another
    broker (from the brokers' "now owns" log lines), or None."""
    first: dict[int, float] = {}
    for t, m in log_times(c, OWNS, wall0):
        if m["topic"] == topic and int(m["part"]) in parts:
            first.setdefault(int(m["part"]), t)
    if set(first) != set(parts):
        return None
    return max(first.values())


OWNS = re.compile(
    r"^(?P<ts>\S+ \S+) INFO shoal.cluster: node \d+ now owns (?P<topic>.+)-(?P<part>\d+) "
)


def _cut_and_heal(
    cuts: list[tuple[str, str]], seconds: float, watched: int
) -> Callable[[NetCluster, dict[int, int], Load], dict[str, Any]]:
    def fault(c: NetCluster, owners: dict[int, int], load: Load) -> dict[str, Any]:
        parts = [p for p, o in owners.items() if o == watched]
        losses = lease_losses(c, watched)
        t0, wall0 = time.monotonic(), time.time()
        for a, b in cuts:
            c.net.cut(a, b)
        time.sleep(seconds)
        healed = time.monotonic()
        c.net.heal_all()
        wait_for(
            lambda: all(any(t > healed for t in load.ack_times.get(p, [])) for p in parts),
            60,
            "writes after heal",
        )
        wait_for(lambda: lease_losses(c, watched) > losses or time.monotonic() > healed + 5, 10, "")
        return {
            "cut_s": seconds,
            "partitions_moved_after_s": moved_after(c, load.topic, parts, wall0),
            "longest_ack_pause_s": max_gap(load, parts, t0, healed),
            "lease_losses": lease_losses(c, watched) - losses,
        }

    return fault


def _flap(
    pair: tuple[str, str], seconds: float, period: float, watched: int
) -> Callable[[NetCluster, dict[int, int], Load], dict[str, Any]]:
    def fault(c: NetCluster, owners: dict[int, int], load: Load) -> dict[str, Any]:
        parts = [p for p, o in owners.items() if o == watched]
        losses = lease_losses(c, watched)
        t0, wall0 = time.monotonic(), time.time()
        flips = 0
        while time.monotonic() - t0 < seconds:
            if flips % 2 == 0:
                c.net.partition(*pair)
            else:
                c.net.heal_all()
            flips += 1
            time.sleep(period)
        c.net.heal_all()
        return {
            "partitions_moved_after_s": moved_after(c, load.topic, parts, wall0),
            "flaps": flips // 2,
            "period_s": period,
            "longest_ack_pause_s": max_gap(load, parts, t0, time.monotonic()),
            "lease_losses": lease_losses(c, watched) - losses,
        }

    return fault


def log_times(c: NetCluster, pattern: re.Pattern[str], wall0: float) -> list[tuple[float, Any]]:
    """(seconds after wall0, match) of every broker log line matching."""
    out = []
    for b in c.brokers.values():
        for line in b.log().splitlines():
            m = pattern.search(line)
            if m is None:
                continue
            when = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if when >= wall0:
                out.append((round(when - wall0, 2), m))
    return sorted(out, key=lambda x: x[0])


EXPIRED = re.compile(
    r"^(?P<ts>\S+ \S+) WARNING shoal.controller: broker (?P<node>\d+) lease expired"
)
MOVE = re.compile(
    r"^(?P<ts>\S+ \S+) INFO shoal.controller: partition \d+/(?P<part>\d+): owner "
    r"(?P<old>\S+) -> (?P<new>\d+)"
)


class ClientLog(logging.Handler):
    """librdkafka's own log lines (debug "topic") with their times: when the
    producer learned of a new leader for each partition."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((time.monotonic(), record.getMessage()))

    def attach(self, load: Load, bootstrap: str, name: str) -> None:
        """Give `load` a producer configured as Load's, plus this log."""
        logger = logging.getLogger(f"rdkafka.{name}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(self)
        load.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 5,
                "message.timeout.ms": 60000,
                "topic.metadata.refresh.interval.ms": 1000,
                "debug": "topic",
                "logger": logger,
            }
        )
        load.client_log = self  # type: ignore[attr-defined]

    def first(
        self,
        pattern: re.Pattern[str],
        t0: float,
        accept: Callable[[re.Match[str]], bool] = lambda m: True,
    ) -> dict[int, float]:
        out: dict[int, float] = {}
        for t, line in self.lines:
            m = pattern.search(line)
            if m is not None and t > t0 and accept(m):
                out.setdefault(int(m["part"]), round(t - t0, 2))
        return out


def _zone(c: NetCluster, owners: dict[int, int], load: Load) -> dict[str, Any]:
    """Kill both brokers of zone a (nodes 1 and 4) at once; the timeline of
    every moved partition: lease expiry, move, new owner's open, the
    producer's leader change, first acknowledged write."""
    zone_a = [1, 4]
    parts = [p for p, o in owners.items() if o in zone_a]
    t0, wall0 = time.monotonic(), time.time()
    for n in zone_a:
        proc = c.brokers[n].proc
        assert proc is not None
        proc.kill()
    for n in zone_a:
        c.brokers[n].kill()
    survivor = c.brokers[2].bootstrap
    moved = wait_for(
        lambda: all(view(survivor, load.topic)[1].get(p) not in zone_a for p in parts),
        60,
        "zone a's partitions to move",
    )
    moved_at = time.monotonic() - t0
    wait_for(
        lambda: all(any(t > t0 for t in load.ack_times.get(p, [])) for p in parts),
        60,
        "writes on the moved partitions",
    )
    first = {p: round(min(t for t in load.ack_times[p] if t > t0) - t0, 2) for p in parts}
    expired = [t for t, _m in log_times(c, EXPIRED, wall0)]
    moves = {int(m["part"]): t for t, m in log_times(c, MOVE, wall0) if int(m["part"]) in parts}
    opened = {int(m["part"]): t for t, m in log_times(c, OWNS, wall0) if int(m["part"]) in parts}
    client: ClientLog | None = getattr(load, "client_log", None)
    alive = lambda m: int(m["new"]) not in zone_a  # noqa: E731
    learned = client.first(LEADER, t0, alive) if client is not None else {}
    leaderless = client.first(NO_LEADER, t0) if client is not None else {}
    if client is not None:
        dump = Path(__file__).parent / "results" / "zone-client.txt"
        dump.write_text(
            "".join(f"{t - t0:8.3f} {line}\n" for t, line in client.lines if t > t0 - 1)
        )
    # A consumer in zone a: its preferred replicas are gone, reads go elsewhere.
    read = len(read_back(survivor, load.topic, 1000, rack="a"))
    return {
        "zone_killed": "a",
        "brokers_killed": len(zone_a),
        "partitions_moved": len(parts),
        "partitions_moved_after_s": round(moved_at, 2),
        "failover_s": max(first.values()),
        "timeline_s": {
            "lease_expired": expired[:2],
            "moved": moves,
            "opened_by_new_owner": opened,
            "producer_saw_no_leader": {p: t for p, t in leaderless.items() if p in parts},
            "producer_learned_leader": {p: t for p, t in learned.items() if p in parts},
            "first_ack": first,
        },
        "zone_a_consumer_read": read,
        "_moved": bool(moved),
    }


#: librdkafka (debug "topic"): a partition's leader changed in its metadata,
#: to a broker, or to none (-1: no live owner)
LEADER = re.compile(r"\[(?P<part>\d+)\]: applying leader-id update -?\d+ -> (?P<new>\d+) ")
NO_LEADER = re.compile(r"\[(?P<part>\d+)\]: applying leader-id update \d+ -> -1 ")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cut-s", type=float, default=15.0)
    ap.add_argument("--flap-s", type=float, default=1.0)
    ap.add_argument("--only", default="")
    ap.add_argument("--session-ms", default="6000")
    ap.add_argument("--heartbeat-ms", default="1000")
    args = ap.parse_args()
    reason = unavailable()
    if reason:
        sys.exit(f"partition bench: {reason}")
    env = {
        "SHOAL_BROKER_SESSION_TIMEOUT_MS": args.session_ms,
        "SHOAL_BROKER_HEARTBEAT_INTERVAL_MS": args.heartbeat_ms,
    }
    cut = args.cut_s
    scenarios: dict[str, Callable[[], dict[str, Any]]] = {
        "pg-cut": lambda: run("pg-cut", _cut_and_heal([("b2", "pg"), ("pg", "b2")], cut, 2), env),
        "s3-cut": lambda: run("s3-cut", _cut_and_heal([("b2", "s3"), ("s3", "b2")], cut, 2), env),
        "brokers": lambda: run(
            "brokers",
            _cut_and_heal([("b2", "b1"), ("b1", "b2"), ("b2", "b3"), ("b3", "b2")], cut, 2),
            env,
        ),
        "to-pg": lambda: run("to-pg", _cut_and_heal([("b2", "pg")], cut, 2), env),
        "from-pg": lambda: run("from-pg", _cut_and_heal([("pg", "b2")], cut, 2), env),
        "flap": lambda: run("flap", _flap(("b2", "pg"), 2 * cut, args.flap_s, 2), env),
        "s3-flap": lambda: run("s3-flap", _flap(("b2", "s3"), 2 * cut, args.flap_s, 2), env),
        "zone": lambda: run("zone", _zone, env, size=6, racks=["a", "b", "c"]),
    }
    wanted = [s for s in args.only.split(",") if s] or list(scenarios)
    load_before = os.getloadavg()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    results = []
    for name in wanted:
        t = time.monotonic()
        res = {k: v for k, v in scenarios[name]().items() if not k.startswith("_")}
        res["wall_s"] = round(time.monotonic() - t, 1)
        res["loadavg"] = round(os.getloadavg()[0], 2)
        print(json.dumps(res), flush=True)
        results.append(res)
    name = "partitions.json" if not args.only else f"partitions-{args.only.replace(',', '-')}.json"
    out = Path(__file__).parent / "results" / name
    out.write_text(
        json.dumps(
            {
                "commit": commit,
                "loadavg_start": load_before[0],
                "args": vars(args),
                "results": results,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
