#!/usr/bin/env python3
"""CPU of one WAL cycle on a local store (issue 13): the per-commit cost alone.

librdkafka sends one ProduceRequest per partition and only a few at a time,
so on a file store each WAL object holds a handful of appends and the fixed
cost of a cycle (seal, object build, PUT, SQLite commit, waking the waiters)
decides the broker's CPU per request. This drives that cycle in process, with
no client or sockets: a StreamEngine on a file store and a SQLite metadata
file (as `shoal serve` makes them, eager WAL), K appends of one 200-byte
record to K different streams, wait for their commit, repeat; process CPU
(utime + stime) per cycle and per append. `--src` puts another tree's
sources first (A/B in the same minutes).

    PYTHONPATH=src:tests .venv/bin/python bench/wal_cycle_cost.py [--appends 3] [--cycles 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path


def threads_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process, by Python thread name (tokio's
    and other native threads by their kernel name)."""
    names = {t.native_id: t.name.split("_")[0] for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{task}/stat").read_text()
            comm = Path(f"/proc/self/task/{task}/comm").read_text().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        name = names.get(int(task), comm)
        out[name] = out.get(name, 0.0) + cpu
    return out


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    from shoal.meta.store import MetaStore
    from shoal.protocol.records import validate_batches
    from shoal.storage.objectstore import ObjectStore
    from shoal.storage.streams import EngineConfig, StreamEngine
    from shoal.storage.wal import WalConfig
    from wire import make_batch

    meta = await MetaStore.open(f"sqlite:///{tmp}/meta.db")
    store = ObjectStore((tmp / "objects").as_uri())
    cfg = EngineConfig(wal=WalConfig(eager=True), log_cache_bytes=64 << 20)
    eng = StreamEngine(store, meta, cfg)
    topic = await meta.create_topic("fleet", args.streams, {})
    sids = [p.stream_id for p in topic.partitions]
    payload = os.urandom(args.size)

    async def cycle(i: int) -> None:
        futs = []
        for k in range(args.appends):
            sid = sids[(i * args.appends + k) % len(sids)]
            batches = validate_batches(make_batch([payload]), 1 << 20)
            fut = eng.append_now(sid, batches, 0)
            assert fut is not None
            futs.append(fut)
        await asyncio.gather(*futs)

    for i in range(len(sids) // args.appends + 1):  # open every stream
        await cycle(i)
    objects0 = eng.wal.objects_committed
    th0 = threads_cpu()
    c0, t0 = time.process_time(), time.monotonic()
    for i in range(args.cycles):
        await cycle(i)
    c1, t1 = time.process_time(), time.monotonic()
    th1 = threads_cpu()
    per_thread = {
        k: round((v - th0.get(k, 0.0)) / args.cycles * 1e6) for k, v in sorted(th1.items())
    }
    objects = eng.wal.objects_committed - objects0
    await eng.close()
    await meta.close()
    return {
        "label": args.label,
        "appends_per_cycle": args.appends,
        "cycles": args.cycles,
        "objects": objects,
        "cpu_us_per_cycle": round((c1 - c0) / args.cycles * 1e6, 1),
        "cpu_us_per_append": round((c1 - c0) / (args.cycles * args.appends) * 1e6, 1),
        "wall_us_per_cycle": round((t1 - t0) / args.cycles * 1e6, 1),
        "thread_cpu_us_per_cycle": {k: v for k, v in per_thread.items() if v > 0},
        "load1": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--appends", type=int, default=3, help="appends per cycle (one object)")
    ap.add_argument("--cycles", type=int, default=3000)
    ap.add_argument("--streams", type=int, default=250)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--src", help="import shoal from this tree's src/ (A/B)")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(args, Path(tmp)))), flush=True)


if __name__ == "__main__":
    main()
