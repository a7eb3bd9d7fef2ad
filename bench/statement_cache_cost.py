"""What a connection's statement cache costs when IN-list lengths vary
(issue 17, item 5; shoal.meta.params).

One metadata store (SQLite file, or the embedded PostgreSQL with --pg), one
pooled connection: `--rounds` look-ups of objects by key with a random
number of keys from 1 to `--lengths`, first with the list as it comes (one
SQL text per length, as the cleaner's and compaction's statements were),
then padded to a power of two (what the store does now), each in a fresh
process so the two do not share a heap. Prints RSS after malloc_trim,
malloc's in-use bytes and the Python heap (tracemalloc) before and after,
and the number of distinct SQL texts.

    .venv/bin/python bench/statement_cache_cost.py --pg --lengths 300
    .venv/bin/python bench/statement_cache_cost.py --lengths 300
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


async def measure(url: str, lengths: int, rounds: int, padded: bool) -> dict[str, Any]:
    from sqlalchemy import event, select

    from shoal import native_memory
    from shoal.meta import schema as s
    from shoal.meta.params import in_
    from shoal.meta.store import MetaStore

    store = await MetaStore.open(url)
    texts: set[str] = set()
    event.listen(store.engine.sync_engine, "before_cursor_execute", lambda *a: texts.add(a[2]))
    rng = random.Random(17)

    async def look_up(n: int) -> None:
        keys = [f"wal/{i}.wal" for i in range(n)]
        where = in_(s.objects.c.key, keys) if padded else s.objects.c.key.in_(keys)
        async with store.engine.connect() as conn:
            await conn.execute(select(s.objects.c.id).where(where))

    await look_up(1)
    gc.collect()
    native_memory.trim()
    rss0, mall0 = native_memory.rss_bytes(), native_memory.mallinfo()
    tracemalloc.start(1)
    for _ in range(rounds):
        await look_up(rng.randint(1, lengths))
    gc.collect()
    native_memory.trim()
    rss1, mall1 = native_memory.rss_bytes(), native_memory.mallinfo()
    traced = tracemalloc.get_traced_memory()[0]
    await store.close()
    mib = 2**20
    return {
        "backend": url.split(":")[0],
        "padded": padded,
        "distinct_texts": len(texts),
        "rss_mib": [round(rss0 / mib, 1), round(rss1 / mib, 1)],
        "rss_growth_mib": round((rss1 - rss0) / mib, 2),
        "malloc_in_use_growth_mib": round((mall1["in_use"] - mall0["in_use"]) / mib, 2),
        "python_heap_growth_mib": round(traced / mib, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", action="store_true", help="the embedded PostgreSQL (else SQLite)")
    ap.add_argument("--lengths", type=int, default=300, help="IN lists of 1..N values")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # child: url,padded
    args = ap.parse_args()
    if args.one:
        url, padded = args.one.rsplit(",", 1)
        result = asyncio.run(measure(url, args.lengths, args.rounds, padded == "1"))
        print(json.dumps(result))
        return
    if args.pg:
        from cluster_harness import new_database

        urls = [new_database(), new_database()]
    else:
        root = Path(tempfile.mkdtemp(prefix="shoal-stmt-"))
        urls = [f"sqlite:///{root}/a.db", f"sqlite:///{root}/b.db"]
    for url, padded in zip(urls, ("0", "1"), strict=True):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--lengths",
                str(args.lengths),
                "--rounds",
                str(args.rounds),
                "--one",
                f"{url},{padded}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
