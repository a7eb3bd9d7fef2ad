"""Soak (issue 17, item 5): a week of a fleet's traffic compressed into
--minutes, against a cluster (three brokers, embedded PostgreSQL, moto S3) or
one broker on a local store (--single).

Load: an idempotent producer on topic `fleet` (kept: every acknowledged record
must read back once, in order) and one on `rolling` (retention.ms=--retention-s:
retention, WAL compaction and object deletion run all the time). Each
simulated day runs one event, in turn:

  kill      SIGKILL a broker, start it again
  replay    a consumer reads `fleet` from the start (catch-up reads)
  restart   SIGTERM a broker, start it again (graceful)
  move      move a partition with `shoal partitions move` (cluster only)
  outage    the fleet goes quiet (producers stop) for a tenth of a day,
            then comes back with two producers at once (the backlog burst)

Sampled every --sample-s: RSS and open file descriptors of every broker, of
PostgreSQL and of this process (which runs moto and the clients), and the
number of objects in the store. At the end: acknowledged, lost, duplicated,
phantom over `fleet`; `rolling`'s log start (retention ran); RSS and fd
growth of each broker process from the end of its first simulated day to its
last sample; objects in the last quarter against the first day's peak.
--memory-reports S asks every broker for a memory report every S seconds
(src/shoal/broker/memdebug.py with SHOAL_MEMDEBUG_FRAMES=0: malloc's view,
the caches' bytes, the metadata store's SQL texts and cached statements) and
adds them to the output, by broker process: what the RSS is made of.

    .venv/bin/python bench/soak.py --minutes 60
    .venv/bin/python bench/soak.py --minutes 8 --single
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster_harness import Cluster
from harness import BrokerProcess
from test_cluster_failover import Load
from test_partitions import read_back

PARTITIONS = 6


FAST_STORAGE = {
    "SHOAL_LOG_RETENTION_CHECK_INTERVAL_MS": "1000",
    "SHOAL_COMPACTION_INTERVAL_MS": "1000",
    "SHOAL_COMPACTION_MIN_AGE_MS": "2000",
    "SHOAL_OBJECT_DELETE_GRACE_MS": "2000",
    "SHOAL_OBJECT_ORPHAN_GRACE_MS": "30000",
}


def proc_stats(pid: int) -> tuple[int, int] | None:
    """(RSS KiB, open fds) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return None


def backends_anon(postmaster: int) -> dict[str, float]:
    """PostgreSQL's backends (the postmaster's children): how many, and their
    private memory summed (RssAnon: their RSS also counts the shared buffers
    each touched). The postmaster's own RSS stays flat whatever the
    sessions hold (prepared statements, plans, caches); this does not."""
    try:
        with open(f"/proc/{postmaster}/task/{postmaster}/children") as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:
        return {}
    kib = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                kib += next(int(x.split()[1]) for x in f if x.startswith("RssAnon:"))
        except (OSError, StopIteration):
            continue
    return {"count": len(pids), "anon_mib": round(kib / 1024, 1)}


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="shoal-soak-"))
        self.day = args.minutes * 60 / 7
        env = {**FAST_STORAGE, "SHOAL_BALANCER_ENABLE": "false"}
        self.reports_dir = self.root / "memory"
        if args.memory_reports:
            env["SHOAL_MEMDEBUG_DIR"] = str(self.reports_dir)
            env["SHOAL_MEMDEBUG_FRAMES"] = "0"  # reports without tracemalloc
        self.cluster: Cluster | None = None
        if args.single:
            self.brokers = {1: BrokerProcess(self.root / "node1", env=env)}
        else:
            self.cluster = Cluster(self.root, env=env)
            self.brokers = self.cluster.brokers
        self.loads: list[Load] = []
        self.rolling: Load | None = None
        self.samples: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.t0 = 0.0
        self.t0_wall = 0.0

    @property
    def bootstrap(self) -> str:
        return ",".join(
            b.bootstrap for b in self.brokers.values() if b.proc and b.proc.poll() is None
        )

    # set-up ------------------------------------------------------------

    def load(self, topic: str, prefix: bytes = b"v") -> Load:
        return Load(self.bootstrap, topic, prefix, rate=self.args.rate)

    def start(self) -> None:
        for b in self.brokers.values():
            b.start()
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        topics = [
            NewTopic("fleet", PARTITIONS, 1),
            NewTopic(
                "rolling",
                PARTITIONS,
                1,
                config={"retention.ms": str(int(self.args.retention_s * 1000))},
            ),
        ]
        for f in admin.create_topics(topics).values():
            f.result(30)
        self.loads.append(self.load("fleet").start())
        self.rolling = self.load("rolling").start()
        self.t0 = time.monotonic()
        self.t0_wall = time.time()

    # sampling ------------------------------------------------------------

    def objects(self) -> int:
        b = next(iter(self.brokers.values()))
        try:
            return len(b.objects())
        except Exception:
            return -1

    def sample(self) -> None:
        procs: dict[str, int] = {"bench": os.getpid()}
        for n, b in self.brokers.items():
            if b.proc is not None and b.proc.poll() is None:
                procs[f"broker{n}:{b.proc.pid}"] = b.proc.pid
        if self.cluster is not None:
            from cluster_harness import postgres

            pid = postgres().get_pid()
            if pid:
                procs["postgres"] = pid
        row: dict[str, Any] = {"t": round(time.monotonic() - self.t0, 1), "objects": self.objects()}
        if "postgres" in procs:
            row["postgres_backends"] = backends_anon(procs["postgres"])
        try:  # the store's count by kind: WAL (awaiting compaction), compacted, awaiting deletion
            row["metadata"] = self.metadata_objects()
        except Exception:
            row["metadata"] = {}
        for name, pid in procs.items():
            st = proc_stats(pid)
            if st is not None:
                row[name] = {"rss_mib": round(st[0] / 1024, 1), "fds": st[1]}
        row["acked"] = sum(len(ld.acked) for ld in self.loads)
        self.samples.append(row)

    def ask_reports(self) -> None:
        """SIGUSR1 to every running broker: each writes a memory report."""
        for b in self.brokers.values():
            if b.proc is not None and b.proc.poll() is None:
                os.kill(b.proc.pid, signal.SIGUSR1)

    def memory_reports(self) -> dict[str, list[dict[str, Any]]]:
        """The brokers' reports, by process, in the order written."""
        out: dict[str, list[dict[str, Any]]] = {}
        files = sorted(
            self.reports_dir.glob("*-[0-9]*.json"),
            key=lambda f: (f.name.split("-")[0], int(f.stem.split("-")[1])),
        )
        for f in files:
            r = json.loads(f.read_text())
            mib = 2**20
            out.setdefault(f.name.split("-")[0], []).append(
                {
                    "t": round(r["time"] - self.t0_wall, 1),
                    "rss_mib": round(r["rss_kib"] / 1024, 1),
                    "fds": r["fds"],
                    "malloc_in_use_mib": round(r["malloc"].get("in_use", 0) / mib, 1),
                    "malloc_free_mib": round(r["malloc"].get("free", 0) / mib, 1),
                    "maps_mib": {k: round(v / 1024, 1) for k, v in r["maps_kib"].items()},
                    "log_cache_bytes": r["sizes"]["log_cache_bytes"],
                    "block_cache_bytes": r["sizes"]["block_cache_bytes"],
                    "streams": r["sizes"]["streams"],
                    "gc_objects": r["gc_objects"],
                    "sql": r.get("sql", {}),
                }
            )
        return out

    # events --------------------------------------------------------------

    def _victim(self, i: int) -> BrokerProcess:
        nodes = sorted(self.brokers)
        return self.brokers[nodes[i % len(nodes)]]

    def ev_kill(self, i: int) -> str:
        b = self._victim(i)
        b.kill()
        time.sleep(min(5.0, self.day / 10))
        b.start(60)
        return f"kill -9 and restart {b.data_dir.name}"

    def ev_restart(self, i: int) -> str:
        b = self._victim(i)
        b.restart(60)
        return f"graceful restart {b.data_dir.name}"

    def ev_replay(self, i: int) -> str:
        total = sum(len(ld.acked) for ld in self.loads)
        got = read_back(self.bootstrap, "fleet", total)
        return f"replay read {len(got)} records of fleet from the start"

    def ev_move(self, i: int) -> str:
        if self.cluster is None:
            return self.ev_replay(i)
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        md = admin.list_topics("fleet", timeout=10).topics["fleet"]
        p = i % PARTITIONS
        target = 1 + (md.partitions[p].leader % len(self.brokers))
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "shoal",
                "partitions",
                "move",
                "fleet",
                str(p),
                "--to",
                str(target),
                "--metadata",
                self.cluster.url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return f"move fleet-{p} to {target}: rc {out.returncode} {out.stdout.strip()[:80]}"

    def ev_outage(self, i: int) -> str:
        for ld in self.loads:
            if ld._thread.is_alive():
                ld.stop()
        time.sleep(self.day / 10)
        n = len(self.loads)
        self.loads += [
            self.load("fleet", prefix=b"v%d-" % n).start(),
            self.load("fleet", prefix=b"v%d-" % (n + 1)).start(),
        ]
        time.sleep(self.day / 10)
        self.loads[-1].stop()
        return "fleet quiet, then two producers at once"

    # run -------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        events: list[Callable[[int], str]] = [
            self.ev_kill,
            self.ev_replay,
            self.ev_restart,
            self.ev_move,
            self.ev_outage,
            self.ev_kill,
            self.ev_replay,
        ]
        next_sample = 0.0
        next_report = self.args.memory_reports or float("inf")
        for day in range(7):
            day_end = (day + 1) * self.day
            event_at = day * self.day + self.day / 2
            done = False
            while time.monotonic() - self.t0 < day_end:
                now = time.monotonic() - self.t0
                if now >= next_sample:
                    self.sample()
                    next_sample = now + self.args.sample_s
                if now >= next_report:
                    self.ask_reports()
                    next_report = now + self.args.memory_reports
                if not done and now >= event_at:
                    start = time.monotonic()
                    what = events[day](day)
                    self.events.append(
                        {
                            "day": day + 1,
                            "t": round(now, 1),
                            "event": what,
                            "took_s": round(time.monotonic() - start, 1),
                        }
                    )
                    print(f"day {day + 1}: {what}", flush=True)
                    done = True
                time.sleep(0.2)
        self.sample()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        for ld in [*self.loads, self.rolling]:
            assert ld is not None
            if ld._thread.is_alive():
                ld.stop()
        acked: dict[bytes, tuple[int, int]] = {}
        for ld in self.loads:
            for p, o, v in ld.acked:
                acked[v] = (p, o)
        got = read_back(self.bootstrap, "fleet", len(acked))
        values = [v for _p, _o, v in got]
        read = set(values)
        by_part: dict[int, list[int]] = {}
        for p, o, _v in got:
            by_part.setdefault(p, []).append(o)
        rolling_start = self._log_starts("rolling")
        return {
            "acknowledged": len(acked),
            "lost": len(set(acked) - read),
            "duplicated": len(values) - len(read),
            # the same record at two offsets (in the log twice) rather than
            # one offset read twice
            "duplicated_offsets": len({(p, o) for p, o, _v in got}) - len(read),
            "phantom": len(read - set(acked)),
            "in_order": all(o == sorted(o) for o in by_part.values()),
            "producer_errors": sum(len(ld.errors) for ld in self.loads),
            "rolling_acked": len(self.rolling.acked) if self.rolling else 0,
            "rolling_log_start": rolling_start,
            "growth": self.growth(),
            "objects": self.object_summary(),
            "store_objects_at_end": self.objects(),
            "metadata_objects_at_end": self.metadata_objects(),
            **({"memory_reports": self.memory_reports()} if self.args.memory_reports else {}),
        }

    def _log_starts(self, topic: str) -> list[int]:
        from confluent_kafka import Consumer

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "soak-wm"})
        try:
            return [
                c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0]
                for p in range(PARTITIONS)
            ]
        finally:
            c.close()

    def growth(self) -> dict[str, Any]:
        """Per process (one broker incarnation = one pid): RSS and fds at the
        end of its first simulated day of life (warm-up) and at its last
        sample; the maximum after warm-up."""
        series: dict[str, list[tuple[float, dict[str, float]]]] = {}
        for row in self.samples:
            for k, v in row.items():
                if isinstance(v, dict) and "rss_mib" in v:
                    series.setdefault(k, []).append((row["t"], v))
        out: dict[str, Any] = {}
        for name, points in series.items():
            start = points[0][0]
            warm = [p for p in points if p[0] >= start + self.day] or points[-1:]
            out[name] = {
                "life_s": round(points[-1][0] - start, 1),
                "rss_mib_warm": warm[0][1]["rss_mib"],
                "rss_mib_max": max(p[1]["rss_mib"] for p in warm),
                "rss_mib_last": points[-1][1]["rss_mib"],
                "fds_warm": warm[0][1]["fds"],
                "fds_max": max(p[1]["fds"] for p in warm),
                "fds_last": points[-1][1]["fds"],
            }
        return out

    def metadata_objects(self) -> dict[str, int]:
        """Objects the metadata store knows: referenced by ranges (live), and
        unreferenced ones waiting out the delete grace, by kind."""
        import asyncio

        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        from shoal.meta.store import engine_url

        if self.cluster is not None:
            url = self.cluster.url
        else:
            url = f"sqlite:///{self.brokers[1].data_dir.resolve() / 'meta.db'}"
        query = "select kind, delete_after_ms is null, count(*) from objects group by 1, 2"

        async def rows() -> list[Any]:
            engine = create_async_engine(engine_url(url))
            async with engine.connect() as conn:
                out = list(await conn.execute(text(query)))
            await engine.dispose()
            return out

        return {
            f"{kind}_{'live' if live else 'pending_delete'}": n
            for kind, live, n in asyncio.run(rows())
        }

    def object_summary(self) -> dict[str, int]:
        counts = [(r["t"], r["objects"]) for r in self.samples if r["objects"] >= 0]
        if not counts:
            return {}
        end = counts[-1][0]
        first_day = [n for t, n in counts if t <= self.day] or [0]
        last_quarter = [n for t, n in counts if t >= end * 0.75] or [0]
        return {
            "first_day_max": max(first_day),
            "last_quarter_max": max(last_quarter),
            "last": counts[-1][1],
            "max": max(n for _t, n in counts),
        }

    def stop(self) -> None:
        for b in self.brokers.values():
            b.kill()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--single", action="store_true", help="one broker on a local store")
    ap.add_argument("--retention-s", type=float, default=30.0)
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--out", default="")
    ap.add_argument("--rate", type=float, default=0.0, help="records/s per producer (0: unpaced)")
    ap.add_argument(
        "--memory-reports", type=float, default=0.0, help="a memory report per broker every S s"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the brokers' directories and logs afterwards"
    )
    args = ap.parse_args(argv)
    soak = Soak(args)
    try:
        soak.start()
        result = soak.run()
    finally:
        soak.stop()
        if args.keep:
            print(f"kept {soak.root}", file=sys.stderr)
        else:
            shutil.rmtree(soak.root, ignore_errors=True)  # hundreds of MB a run
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    report = {
        "commit": commit,
        "args": vars(args),
        "loadavg": os.getloadavg()[0],
        "events": soak.events,
        **result,
    }
    if args.out:
        Path(args.out).write_text(json.dumps({**report, "samples": soak.samples}, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
