"""Where the edge gateway's Python memory goes while it replays a backlog
(issue 17, item 5): the local log engine as the gateway configures it (file
store, SQLite, 32 MiB caches, compaction), filled with N MiB of 200-byte
records over 4 partitions, then read back in order in 256 KiB chunks and
decoded record by record, as the uplink's forwarders do. tracemalloc reports
the peak of the replay phase and the largest allocation sites at that peak;
per-stream index sizes are counted directly.

    .venv/bin/python bench/gateway_memory.py --mib 64 --mib 256
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from shoal.meta.store import MetaStore
from shoal.protocol.batches import BatchBuilder, decode_records, iter_batches
from shoal.protocol.records import read_header, validate_batches
from shoal.storage.compaction import CompactionConfig
from shoal.storage.objectstore import ObjectStore
from shoal.storage.streams import EngineConfig, StreamEngine
from shoal.storage.wal import WalConfig

MIB = 1024 * 1024
PARTITIONS = 4
CHUNK = 256 * 1024


def one_batch(records: int = 100) -> bytes:
    b = BatchBuilder()
    for i in range(records):
        b.append(int(time.time() * 1000), b"device-%03d" % (i % 100), b"x" * 200, ())
    return b.build(0)


async def run(mib: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="shoal-gwmem-"))
    meta = await MetaStore.open(f"sqlite:///{root}/meta.db")
    store = ObjectStore(f"file://{root}/objects")
    cfg = EngineConfig(
        wal=WalConfig(eager=True),
        compaction=CompactionConfig(min_age_ms=0),
        log_cache_bytes=32 * MIB,
        block_cache_bytes=32 * MIB,
    )
    engine = StreamEngine(store, meta, cfg)
    topic = await meta.create_topic("backlog", PARTITIONS, {})
    sids = [p.stream_id for p in topic.partitions]
    data = one_batch()
    batches = validate_batches(data, 1 << 20)
    total = mib * MIB
    written = 0
    pending = []
    while written < total:
        for sid in sids:
            pending.append(await engine.append(sid, batches, 0))
            written += len(data)
        if len(pending) > 400:
            await asyncio.gather(*pending)
            pending.clear()
            await engine.compactor.run_once()
    await asyncio.gather(*pending)
    await engine.compactor.run_once()
    # The fill phase is over: the replay starts with cold caches.
    engine.log_cache.drop_stream(0)
    for sid in sids:
        engine.log_cache.drop_stream(sid)
    gc.collect()
    ranges = {sid: len((await engine.open(sid)).ranges) for sid in sids}
    tracemalloc.start(25)
    base = tracemalloc.get_traced_memory()[0]
    records = 0
    for sid in sids:
        offset = 0
        end = (await engine.open(sid)).end_offset
        while offset < end:
            res = await engine.read(sid, offset, CHUNK)
            for chunk in res.chunks:
                for batch in iter_batches(chunk):
                    recs = decode_records(batch)
                    records += len(recs)
                    h = read_header(batch)
                    offset = h.base_offset + h.last_offset_delta + 1
    current, peak = tracemalloc.get_traced_memory()
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    top = [
        {"site": str(s.traceback[0]), "kib": round(s.size / 1024, 1), "count": s.count}
        for s in snap.statistics("lineno")[:8]
    ]
    await engine.close()
    await meta.close()
    return {
        "backlog_mib": mib,
        "records_read": records,
        "ranges_per_stream": ranges,
        "replay_peak_mib": round((peak - base) / MIB, 1),
        "after_replay_mib": round((current - base) / MIB, 1),
        "block_cache_mib": round(engine.block_cache.size / MIB, 1),
        "top": top,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, action="append", default=[])
    args = ap.parse_args()
    for mib in args.mib or [64, 256]:
        print(json.dumps(asyncio.run(run(mib)), indent=1), flush=True)


if __name__ == "__main__":
    main()
