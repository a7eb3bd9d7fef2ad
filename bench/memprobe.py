"""Why does a broker's RSS grow under steady load? (issue 17, item 5)

One broker (local store, or moto S3 with SHOAL_TEST_STORE=s3) under the
soak's kind of load: two idempotent producers paced at --rate records/s, on
`fleet` (kept) and `rolling` (retention.ms=--retention-s, so retention,
compaction and object deletion run all the time), plus client churn every
--phase-s as the soak has it and more: a new idempotent producer (new
producer id, new client id, new connection) writing for the phase, a
consumer in a new group reading `fleet` and committing, an admin client
listing topics.

The broker runs with SHOAL_MEMDEBUG_DIR (src/shoal/broker/memdebug.py):
tracemalloc on, and every --report-s a SIGUSR1 makes it write its heap
snapshot and a report (RSS, traced heap, malloc's view, object counts by
type, task counts, cache and table sizes). At the end the report after
warm-up (--warm-s) and the last one are compared: RSS, traced heap, the
allocation sites (by traceback) that grew most, the object types and tables
that grew. --no-trace runs without tracemalloc (its own overhead is RSS too)
and keeps the reports (malloc's view, objects, sizes). Each report's
malloc_info is read per arena: free bytes, and how many of them lie in
chunks of a page or more (what malloc_trim can give back). --trim-at-end
asks the broker to malloc_trim (SIGUSR2) after the last report and records
RSS before and after: whether the memory malloc keeps free is returned.

    .venv/bin/python bench/memprobe.py --minutes 15 --out bench/results/memprobe.json
    .venv/bin/python bench/memprobe.py --minutes 15 --no-trace --env SHOAL_LOG_CACHE_BYTES=8388608
    PYTHONPATH=<tree>/src .venv/bin/python bench/memprobe.py --no-trace --trim-at-end \
        --label "<tree>: what it is" --out bench/results/memprobe/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from harness import BrokerProcess
from test_cluster_failover import Load

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import FAST_STORAGE, PARTITIONS, proc_stats


class Churn:
    """One phase's short-lived clients, each with a client id of its own."""

    def __init__(self, bootstrap: str, phase: int, rate: float) -> None:
        self.bootstrap = bootstrap
        self.phase = phase
        self.rate = rate
        self.acked = 0
        self.errors = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._produce, daemon=True),
            threading.Thread(target=self._consume, daemon=True),
        ]

    def _cb(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.acked += 1
        else:
            self.errors += 1

    def _produce(self) -> None:
        p = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "client.id": f"churn-producer-{self.phase}",
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )
        start, sent = time.monotonic(), 0
        while not self._stop.is_set():
            for _ in range(10):
                p.produce("fleet", key=b"c%d" % (sent % 24), value=b"c%d-%08d" % (self.phase, sent))
                sent += 1
            p.poll(0.01)
            ahead = sent / self.rate - (time.monotonic() - start)
            if ahead > 0:
                self._stop.wait(ahead)
        p.flush(60)

    def _consume(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"churn-group-{self.phase}",
                "client.id": f"churn-consumer-{self.phase}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        try:
            consumer.subscribe(["fleet"])
            got, deadline = 0, time.monotonic() + 20
            while got < 2000 and time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is not None and not msg.error():
                    got += 1
            if got:
                consumer.commit(asynchronous=False)
        finally:
            consumer.close()
        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "client.id": f"churn-admin-{self.phase}"}
        )
        admin.list_topics(timeout=10)

    def start(self) -> Churn:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)


class Probe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="shoal-memprobe-"))
        self.reports_dir = self.root / "reports"
        env = {**FAST_STORAGE, "SHOAL_BALANCER_ENABLE": "false"}
        env["SHOAL_MEMDEBUG_DIR"] = str(self.reports_dir)
        if args.no_trace:
            env["SHOAL_MEMDEBUG_FRAMES"] = "0"
        for kv in args.env:
            k, _, v = kv.partition("=")
            env[k] = v
        self.broker = BrokerProcess(self.root / "node1", env=env)
        self.samples: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []  # with "t" and "snapshot"
        self.trims: list[dict[str, Any]] = []
        self.t0 = 0.0

    def _wait(self, path: Path) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while not path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no memory report {path} after 120 s")
            time.sleep(0.2)
        rep: dict[str, Any] = json.loads(path.read_text())
        return rep

    def trim(self) -> None:
        """Ask the broker to malloc_trim and record what it gave back."""
        assert self.broker.proc is not None
        pid = self.broker.proc.pid
        path = self.reports_dir / f"{pid}-trim-{len(self.trims) + 1}.json"
        os.kill(pid, signal.SIGUSR2)
        rep = self._wait(path)
        rep["t"] = round(time.monotonic() - self.t0, 1)
        rep["arenas_before"] = arenas(path.with_suffix(".before.malloc.xml"))
        self.trims.append(rep)
        print(
            f"t={rep['t']:.0f}s malloc_trim: rss {rep['before']['rss_kib'] / 1024:.1f} -> "
            f"{rep['after']['rss_kib'] / 1024:.1f} MiB in {rep['trim_ms']} ms",
            flush=True,
        )

    def report(self) -> None:
        """Ask the broker for a report and wait until it is written."""
        assert self.broker.proc is not None
        pid = self.broker.proc.pid
        n = len(self.reports) + 1
        path = self.reports_dir / f"{pid}-{n}.json"
        os.kill(pid, signal.SIGUSR1)
        rep = self._wait(path)
        rep["t"] = round(time.monotonic() - self.t0, 1)
        rep["snapshot"] = str(path.with_suffix(".tracemalloc"))
        rep["arenas"] = arenas(path.with_suffix(".malloc.xml"))
        self.reports.append(rep)
        print(
            f"t={rep['t']:.0f}s rss={rep['rss_kib'] / 1024:.1f} MiB "
            f"traced={rep['traced_bytes'] / 2**20:.1f} MiB arenas={rep['arenas']}",
            flush=True,
        )

    def sample(self) -> None:
        assert self.broker.proc is not None
        st = proc_stats(self.broker.proc.pid)
        if st is not None:
            self.samples.append(
                {
                    "t": round(time.monotonic() - self.t0, 1),
                    "rss_mib": round(st[0] / 1024, 1),
                    "fds": st[1],
                }
            )

    def run(self) -> dict[str, Any]:
        a = self.args
        self.broker.start()
        bootstrap = self.broker.bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topics = [
            NewTopic("fleet", PARTITIONS, 1),
            NewTopic(
                "rolling",
                PARTITIONS,
                1,
                config={"retention.ms": str(int(a.retention_s * 1000))},
            ),
        ]
        for f in admin.create_topics(topics).values():
            f.result(30)
        loads = [Load(bootstrap, "fleet", rate=a.rate).start()]
        loads.append(Load(bootstrap, "rolling", rate=a.rate).start())
        self.t0 = time.monotonic()
        end = a.minutes * 60
        next_sample = next_report = next_phase = 0.0
        phase = 0
        churn: Churn | None = None
        try:
            while (now := time.monotonic() - self.t0) < end:
                if now >= next_phase:
                    if churn is not None:
                        churn.stop()
                    phase += 1
                    churn = Churn(bootstrap, phase, a.rate).start()
                    next_phase = now + a.phase_s
                if now >= next_sample:
                    self.sample()
                    next_sample = now + a.sample_s
                if now >= next_report:
                    self.report()
                    next_report = now + a.report_s
                time.sleep(0.2)
            self.sample()
            self.report()
            if a.trim_at_end:
                self.trim()
                self.sample()
        finally:
            if churn is not None:
                churn.stop()
            for ld in loads:
                ld.stop()
            self.broker.kill()
        return {
            "acked": sum(len(ld.acked) for ld in loads),
            "producer_errors": sum(len(ld.errors) for ld in loads),
            "phases": phase,
            **self.summary(),
        }

    def summary(self) -> dict[str, Any]:
        a = self.args
        warm = [s for s in self.samples if s["t"] >= a.warm_s] or self.samples[-1:]
        out: dict[str, Any] = {
            "rss_mib_warm": warm[0]["rss_mib"],
            "rss_mib_last": self.samples[-1]["rss_mib"],
            "rss_mib_per_min_after_warm": round(
                (warm[-1]["rss_mib"] - warm[0]["rss_mib"])
                / max((warm[-1]["t"] - warm[0]["t"]) / 60, 1e-9),
                3,
            ),
            "fds_warm": warm[0]["fds"],
            "fds_last": self.samples[-1]["fds"],
        }
        reps = [r for r in self.reports if r["t"] >= a.warm_s] or self.reports[-1:]
        if len(reps) < 2:
            return out
        first, last = reps[0], reps[-1]
        mib = 2**20
        out["heap"] = {
            "t": [first["t"], last["t"]],
            "rss_mib": [round(first["rss_kib"] / 1024, 1), round(last["rss_kib"] / 1024, 1)],
            "traced_mib": [
                round(first["traced_bytes"] / mib, 1),
                round(last["traced_bytes"] / mib, 1),
            ],
            "tracemalloc_overhead_mib": round(last["tracemalloc_overhead_bytes"] / mib, 1),
            "malloc_in_use_mib": [
                round(first["malloc"].get("in_use", 0) / mib, 1),
                round(last["malloc"].get("in_use", 0) / mib, 1),
            ],
            "malloc_free_mib": [
                round(first["malloc"].get("free", 0) / mib, 1),
                round(last["malloc"].get("free", 0) / mib, 1),
            ],
            "maps_kib": {
                k: [first.get("maps_kib", {}).get(k), v]
                for k, v in last.get("maps_kib", {}).items()
            },
            "gc_objects": [first["gc_objects"], last["gc_objects"]],
            "sizes": {
                k: [first["sizes"].get(k), v]
                for k, v in last["sizes"].items()
                if v != first["sizes"].get(k)
            },
            "types_grown": sorted(
                (
                    (k, v - first["types"].get(k, 0))
                    for k, v in last["types"].items()
                    if v - first["types"].get(k, 0) > 0
                ),
                key=lambda kv: -kv[1],
            )[:20],
            "arenas": [first.get("arenas"), last.get("arenas")],
            "tasks": [sum(first["tasks"].values()), sum(last["tasks"].values())],
        }
        if Path(first["snapshot"]).exists():
            out["heap"]["sites_grown"] = self.sites(first["snapshot"], last["snapshot"])
        if self.trims:
            t = self.trims[-1]
            out["trim_at_end"] = {
                "ms": t["trim_ms"],
                "rss_mib": [
                    round(t["before"]["rss_kib"] / 1024, 1),
                    round(t["after"]["rss_kib"] / 1024, 1),
                ],
                "malloc_free_mib": round(t["before"]["malloc"].get("free", 0) / mib, 1),
                "arenas_before": t["arenas_before"],
            }
        return out

    def sites(self, before: str, after: str, top: int = 15) -> list[dict[str, Any]]:
        """Allocation sites (by traceback) that grew most between two snapshots."""
        old = tracemalloc.Snapshot.load(before)
        new = tracemalloc.Snapshot.load(after)
        out = []
        for stat in new.compare_to(old, "traceback")[:top]:
            frames = [  # innermost first, the last few
                f"{f.filename.rpartition('/src/')[2].rpartition('site-packages/')[2]}:{f.lineno}"
                for f in reversed(stat.traceback)
            ][:5]
            out.append(
                {
                    "kib": round(stat.size_diff / 1024, 1),
                    "count": stat.count_diff,
                    "frames": frames,
                }
            )
        return out


def arenas(path: Path) -> list[dict[str, float]]:
    """Per arena, from glibc's malloc_info XML: MiB it holds from the
    system, MiB free in it, and MiB free in chunks of 4 KiB or more (whole
    pages malloc_trim can hand back; smaller holes it cannot)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return []
    mib = 2**20
    out = []
    for heap in root.findall("heap"):
        free = sum(int(t.get("size", 0)) for t in heap.findall("total"))
        system = next(
            (int(s.get("size", 0)) for s in heap.findall("system") if s.get("type") == "current"),
            0,
        )
        large = sum(
            int(s.get("total", 0))
            for s in heap.iter()
            if s.tag in ("size", "unsorted") and int(s.get("from", 0)) >= 4096
        )
        out.append(
            {
                "nr": int(heap.get("nr", -1)),
                "system_mib": round(system / mib, 2),
                "free_mib": round(free / mib, 2),
                "free_in_page_chunks_mib": round(large / mib, 2),
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=50.0, help="records/s per producer")
    ap.add_argument("--retention-s", type=float, default=30.0)
    ap.add_argument("--phase-s", type=float, default=60.0, help="client churn period")
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--report-s", type=float, default=120.0)
    ap.add_argument("--warm-s", type=float, default=120.0)
    ap.add_argument("--no-trace", action="store_true", help="reports without tracemalloc")
    ap.add_argument("--trim-at-end", action="store_true", help="malloc_trim at the end (SIGUSR2)")
    ap.add_argument("--label", default="", help="what code the broker runs (PYTHONPATH)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the broker")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    probe = Probe(args)
    result = probe.run()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    report = {
        "commit": commit,
        "broker_code": args.label,
        "args": vars(args),
        "store": os.environ.get("SHOAL_TEST_STORE", "file"),
        "loadavg": os.getloadavg()[0],
        **result,
    }
    print(json.dumps(report, indent=1))
    if args.out:
        full = {
            **report,
            "samples": probe.samples,
            "reports": [
                {k: v for k, v in r.items() if k not in ("types", "snapshot")}
                for r in probe.reports
            ],
            "trims": probe.trims,
        }
        Path(args.out).write_text(json.dumps(full, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
