"""How long a broker's lease renewal (ClusterStore.renew) takes on the
embedded PostgreSQL, alone and beside a stream of write transactions (the
broker's WAL commits and the like, which hold MetaStore's write lock); see
docs/RELIABILITY.md, "What we found and fixed", item 6. Run it with the
sources of two commits to compare:

    git archive 7efbc3f src | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/lease_renewal.py
    PYTHONPATH=src .venv/bin/python bench/lease_renewal.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sqlalchemy import text

from cluster_harness import new_database
from shoal.meta.cluster import ClusterStore
from shoal.meta.store import MetaStore


async def renewals(cs: ClusterStore, inc: int, n: int) -> list[float]:
    took = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert await cs.renew(1, inc, 6000)
        took.append((time.perf_counter() - t0) * 1000)
    return took


def summary(took: list[float]) -> dict[str, float]:
    took = sorted(took)
    return {
        "median_ms": round(statistics.median(took), 3),
        "p99_ms": round(took[int(len(took) * 0.99) - 1], 3),
    }


async def main(n: int, writers: int) -> dict[str, object]:
    meta = await MetaStore.open(new_database())
    cs = ClusterStore(meta)
    inc = await cs.register(1, "h", 1, None, 6000)
    for node in range(2, 2 + writers):
        await cs.register(node, "h", 1, None, 6000)
    await renewals(cs, inc, 50)  # warm: statements prepared, pool filled
    alone = await renewals(cs, inc, n)
    stop = asyncio.Event()

    async def write(node: int) -> None:
        # a write transaction of a few statements, as the broker's many are
        while not stop.is_set():
            async with meta.transaction() as conn:
                await conn.execute(text("SELECT pg_sleep(0.002)"))
                await conn.execute(text("SELECT 1"))
            await cs.set_draining(node, False)

    tasks = [asyncio.create_task(write(node)) for node in range(2, 2 + writers)]
    busy = await renewals(cs, inc, n)
    stop.set()
    await asyncio.gather(*tasks)
    await meta.close()
    return {
        "renewals": n,
        "alone": summary(alone),
        f"beside_{writers}_writers": summary(busy),
        "load_average": os.getloadavg()[0],
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--renewals", type=int, default=500)
    ap.add_argument("--writers", type=int, default=4)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.renewals, args.writers)), indent=1))
