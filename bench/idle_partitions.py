#!/usr/bin/env python3
"""100,000 idle partitions on one broker (issue 13): start-up and memory.

1. Writes T topics x P partitions straight into a new data directory's
   metadata store (SQLite), as a broker's CreateTopics would, without a Kafka
   client: librdkafka asks for the metadata of every topic it knows, and
   that is a different cost (see docs/BENCHMARKS.md).
2. Starts `shoal serve` on it (tests/harness.py) and times start-up to
   "ready"; reads its resident memory, against an empty broker's.
3. In this process: opens every stream at once through a StreamEngine over
   the same metadata (the batched open a broker's first writes make) and
   measures the time and the memory it holds per opened, idle stream
   (tracemalloc).

    .venv/bin/python bench/idle_partitions.py --topics 2000 --partitions 50
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import click

from shoal.meta.store import MetaStore
from shoal.storage.objectstore import ObjectStore
from shoal.storage.streams import EngineConfig, StreamEngine

ROOT = Path(__file__).resolve().parent.parent


def load_harness() -> Any:
    path = ROOT / "tests" / "harness.py"
    spec = importlib.util.spec_from_file_location("shoal_bench_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def create(data: Path, topics: int, partitions: int) -> list[int]:
    meta = await MetaStore.open(f"sqlite:///{data / 'meta.db'}")  # makes the directory
    sids: list[int] = []
    for i in range(topics):
        t = await meta.create_topic(f"fleet-{i:06d}", partitions, {})
        sids.extend(p.stream_id for p in t.partitions)
    await meta.close()
    return sids


async def open_all(data: Path, sids: list[int]) -> dict[str, float]:
    meta = await MetaStore.open(f"sqlite:///{data / 'meta.db'}")
    engine = StreamEngine(ObjectStore(f"file://{data / 'objects'}"), meta, EngineConfig())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    t0 = time.monotonic()
    await asyncio.gather(*(engine.open(sid) for sid in sids))
    elapsed = time.monotonic() - t0
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    await engine.close()
    await meta.close()
    return {"open_all_s": round(elapsed, 2), "bytes_per_open_stream": round(held / len(sids))}


@click.command()
@click.option("--topics", default=2000, show_default=True)
@click.option("--partitions", default=50, show_default=True)
def main(topics: int, partitions: int) -> None:
    harness = load_harness()
    tmp = Path(tempfile.mkdtemp(prefix="idle-partitions-"))
    out: dict[str, Any] = {
        "topics": topics,
        "partitions": topics * partitions,
        "load_before": os.getloadavg()[0],
    }
    t0 = time.monotonic()
    sids = asyncio.run(create(tmp / "data", topics, partitions))
    out["create_s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    empty = harness.BrokerProcess(tmp / "empty").start(timeout=120)
    out["empty_startup_to_ready_s"] = round(time.monotonic() - t0, 2)
    out["empty_ready_rss_kib"] = rss_kib(empty.proc.pid)
    empty.stop()
    broker = harness.BrokerProcess(tmp / "data")
    t0 = time.monotonic()
    broker.start(timeout=600)
    out["startup_to_ready_s"] = round(time.monotonic() - t0, 2)
    out["ready_rss_kib"] = rss_kib(broker.proc.pid)
    out["catalog_kib_per_partition"] = round(
        (out["ready_rss_kib"] - out["empty_ready_rss_kib"]) / len(sids), 3
    )
    broker.stop(timeout=120)
    out.update(asyncio.run(open_all(tmp / "data", sids)))
    out["load_after"] = os.getloadavg()[0]
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
