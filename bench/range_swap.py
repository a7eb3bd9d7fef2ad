#!/usr/bin/env python3
"""Compaction's range swap (MetaStore.replace_ranges) at a fleet's scale.

`--streams` streams each get `--ranges` one-record ranges, one WAL object
per round across every stream (a fleet at one record per partition per
second, committed once a second); then one swap replaces every stream's
ranges with a single compacted range, as a compaction round over those
objects does. On SQLite the swap runs in transactions of at most
`--chunk-ranges` old ranges under the store's write lock, which every
produce commit also takes; on PostgreSQL it is one transaction beside the
commits, which share the server's CPU with it. Either way its time, and
the commits' latencies beside it (`--busy`), are the stall a compaction
round puts on producers.

    PYTHONPATH=src .venv/bin/python bench/range_swap.py [--streams 10000 --ranges 30] \\
        [--metadata sqlite|postgresql] [--busy]

`--busy` runs the swap as a broker under load does: the event loop busy with
Python 4 ms at a time (compaction's own work beside every request), and a WAL
commit every 5 ms, whose latencies during the swap are reported: the stall
producers see.

`postgresql` starts an embedded server (tests/cluster_harness.py; add
`tests` to PYTHONPATH). Before the swap, the round's range read
(MetaStore.range_rows over the same objects) is timed too. On PostgreSQL
each step also reports the server's CPU seconds (`server_cpu_s`: its
postmaster and every process it forked, backends and background workers,
from /proc; without `--busy` for the step alone): the work a round puts on
the machine the broker shares. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time

from shoal.meta.store import MetaStore, ObjectCommit, RangeCommit


async def _hog(stop: asyncio.Event) -> None:
    """Python on the event loop, 4 ms at a time."""
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < 0.004:
            pass
        await asyncio.sleep(0)


async def _commits(meta: MetaStore, sid: int, stop: asyncio.Event, out: list[float]) -> None:
    """A one-range WAL commit every 5 ms; each one's latency into `out`."""
    i = 0
    while not stop.is_set():
        rc = RangeCommit(sid, 0, i, i + 1, 0, 100, 0)
        t = time.perf_counter()
        await meta.commit_objects([ObjectCommit(f"wal/busy-{i:06d}.wal", 100, [rc])], 0)
        out.append(time.perf_counter() - t)
        i += 1
        await asyncio.sleep(0.005)


def _server_cpu() -> float:
    """CPU seconds so far of the embedded PostgreSQL server."""
    from cluster_harness import postgres
    from harness import cpu_seconds

    return cpu_seconds(postgres().get_pid())


def _ms(values: list[float], q: float) -> float:
    return round(sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


async def main(
    streams: int, ranges: int, metadata: str, busy: bool, chunk_ranges: int | None
) -> dict[str, object]:
    if metadata == "sqlite":
        url = f"sqlite:///{tempfile.mkdtemp(prefix='range-swap-')}/meta.db"
    else:
        from cluster_harness import new_database

        url = new_database()
    meta = await MetaStore.open(url)
    if chunk_ranges is not None:
        meta.swap_chunk_ranges = chunk_ranges
    try:
        sids: list[int] = []
        for t in range((streams + 4) // 5):
            rec = await meta.create_topic(f"t{t:06d}", 5, {})
            sids += [p.stream_id for p in rec.partitions]
        sids = sids[:streams]
        for i in range(ranges):
            rs = [RangeCommit(sid, 0, i, i + 1, j * 100, 100, 0) for j, sid in enumerate(sids)]
            await meta.commit_objects([ObjectCommit(f"wal/{i:06d}.wal", 100 * len(sids), rs)], 0)
        reps = [
            (sid, list(range(ranges)), [RangeCommit(sid, 0, 0, ranges, k * 1000, 1000, 0)])
            for k, sid in enumerate(sids)
        ]
        sources = [f"wal/{i:06d}.wal" for i in range(ranges)]
        server = metadata == "postgresql"
        t0, s0 = time.perf_counter(), _server_cpu() if server else 0.0
        found = await meta.range_rows(sources)
        read_s, read_cpu = time.perf_counter() - t0, _server_cpu() - s0 if server else 0.0
        assert len(found.rows()) == streams * ranges
        busy_sid = (await meta.create_topic("busy", 1, {})).partitions[0].stream_id
        stop = asyncio.Event()
        latencies: list[float] = []
        load = (
            [
                asyncio.create_task(_hog(stop)),
                asyncio.create_task(_commits(meta, busy_sid, stop, latencies)),
            ]
            if busy
            else []
        )
        t0, c0 = time.perf_counter(), time.process_time()
        s0 = _server_cpu() if server else 0.0
        done = await meta.replace_ranges(
            "compacted/x.obj",
            1000 * len(sids),
            0,
            "set",
            reps,
            60_000,
            sources=sources,
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        swap_cpu = _server_cpu() - s0 if server else 0.0
        stop.set()
        await asyncio.gather(*load)
        assert len(done) == len(sids), (len(done), len(sids))
    finally:
        await meta.close()
    out: dict[str, object] = {
        "metadata": metadata,
        "streams": streams,
        "ranges_swapped": streams * ranges,
        "chunk_ranges": meta.swap_chunk_ranges,
        "read_s": round(read_s, 3),
        "swap_s": round(wall, 3),
        "process_cpu_s": round(cpu, 3),
    }
    if server:
        out["read_server_cpu_s"] = round(read_cpu, 2)
        out["swap_server_cpu_s"] = round(swap_cpu, 2)
    if latencies:
        out["commits_during_swap"] = len(latencies)
        out["commit_ms_p50_p99_max"] = [
            _ms(latencies, 0.5),
            _ms(latencies, 0.99),
            _ms(latencies, 1),
        ]
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=10_000)
    ap.add_argument("--ranges", type=int, default=30)
    ap.add_argument("--metadata", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--busy", action="store_true", help="an event loop busy, commits beside")
    ap.add_argument(
        "--chunk-ranges",
        type=int,
        help="SQLite: most old ranges a transaction of the swap replaces "
        "(MetaStore.swap_chunk_ranges, default 2,048); a PostgreSQL swap is one transaction",
    )
    ap.add_argument(
        "--switch-interval",
        type=float,
        default=0.0005,
        help="the GIL switch interval in seconds, as a broker sets it "
        "(shoal.broker.switching; CPython's default 0.005)",
    )
    args = ap.parse_args()
    sys.setswitchinterval(args.switch_interval)
    print(
        json.dumps(
            asyncio.run(
                main(args.streams, args.ranges, args.metadata, args.busy, args.chunk_ranges)
            )
        )
    )
