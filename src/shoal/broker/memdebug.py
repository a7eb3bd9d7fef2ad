"""A memory probe inside the broker, off unless SHOAL_MEMDEBUG_DIR is set.

RSS alone cannot tell a leak from a cache filling or from malloc keeping
freed pages, so bench/memprobe.py asks the broker itself: with the variable
set, tracemalloc traces from the start (SHOAL_MEMDEBUG_FRAMES frames, 8 by
default) and each SIGUSR1 writes, into that directory, a tracemalloc
snapshot (`<pid>-<n>.tracemalloc`, compared by traceback offline) and a JSON
report (`<pid>-<n>.json`): RSS, the traced heap, malloc's own view, object
counts by type, live asyncio tasks by coroutine, the sizes of the
broker's caches and per-client tables, and the metadata store's distinct SQL
texts and cached statements. SHOAL_MEMDEBUG_FRAMES=0 leaves
tracemalloc off (its own overhead is RSS too) and keeps the reports. Each
SIGUSR2 calls malloc_trim(0) off the loop and writes `<pid>-trim-<n>.json`
(RSS and malloc's view before and after, the call's milliseconds): whether
the memory malloc keeps free goes back to the kernel when asked. Debugging
only: tracing slows the broker by a good part and walking every object
blocks the loop briefly.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import logging
import os
import signal
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from shoal import native_memory

if TYPE_CHECKING:
    from shoal.broker.broker import Broker

log = logging.getLogger("shoal.memdebug")

ENV_DIR = "SHOAL_MEMDEBUG_DIR"
ENV_FRAMES = "SHOAL_MEMDEBUG_FRAMES"


def start_tracing() -> Path | None:
    """Start tracemalloc if the probe is on (call before anything big is
    allocated); the report directory, or None when off."""
    where = os.environ.get(ENV_DIR)
    if not where:
        return None
    frames = int(os.environ.get(ENV_FRAMES) or 8)
    if frames > 0:
        tracemalloc.start(frames)
    path = Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path


def install(broker: Broker, where: Path) -> None:
    """Write a report on each SIGUSR1, trim and report on each SIGUSR2."""
    count = [0, 0]  # reports, trims
    trims: set[asyncio.Task[None]] = set()
    texts = SqlTexts()
    event.listen(broker.meta.engine.sync_engine, "before_cursor_execute", texts.seen)

    def dump() -> None:
        count[0] += 1
        stem = where / f"{os.getpid()}-{count[0]}"
        report = _report(broker)
        report["sql"] = {"texts": len(texts.counts), **_statement_caches(broker)}
        report["sql_families"] = texts.families()
        if tracemalloc.is_tracing():
            tracemalloc.take_snapshot().dump(f"{stem}.tracemalloc")
        native_memory.write_malloc_info(f"{stem}.malloc.xml")
        tmp = stem.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.rename(stem.with_suffix(".json"))  # the probe waits for this name
        log.info("memory report %s written", stem.with_suffix(".json"))

    def trim() -> None:
        count[1] += 1
        task = asyncio.create_task(_trim(where / f"{os.getpid()}-trim-{count[1]}"))
        trims.add(task)  # kept until done: the loop holds tasks weakly
        task.add_done_callback(trims.discard)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, dump)
    loop.add_signal_handler(signal.SIGUSR2, trim)
    log.warning("memory probe on: tracemalloc running, SIGUSR1 writes reports to %s", where)


class SqlTexts:
    """Distinct SQL texts the metadata store ran: each is an entry in every
    pooled connection's statement cache that runs it, so their number
    should stop growing after warm-up (shoal.meta.params)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.counts[statement] += 1

    def families(self, top: int = 12) -> dict[str, int]:
        """Texts per statement (told apart by their first 100 characters and
        their last 60): the ones with many are the caches' churn."""
        fam = collections.Counter(
            " ".join((t[:100] + " .. " + t[-60:]).split()) for t in self.counts
        )
        return dict(fam.most_common(top))


def _statement_caches(broker: Broker) -> dict[str, int]:
    """Statements held in the pooled connections' caches: asyncpg's prepared
    statements (SQLAlchemy's per-connection LRU) or, for SQLite, the
    sqlite3 statements alive (its cache is not exposed)."""
    pool = broker.meta.engine.sync_engine.pool
    queue: Any = getattr(pool, "_pool", None)  # QueuePool's idle connections
    idle = getattr(queue, "queue", None)  # a thread Queue's deque
    if idle is None:  # AsyncAdaptedQueue: an asyncio.Queue's deque
        idle = getattr(getattr(queue, "_queue", None), "_queue", None)
    records = list(idle or ())
    cached = 0
    for rec in records:
        cache = getattr(getattr(rec, "dbapi_connection", None), "_prepared_statement_cache", None)
        cached += len(cache) if cache is not None else 0
    return {"pooled_connections": len(records), "prepared_cached": cached}


async def _trim(stem: Path) -> None:
    """malloc_trim on request, with what it gave back."""
    before = {"rss_kib": native_memory.rss_bytes() >> 10, "malloc": native_memory.mallinfo()}
    native_memory.write_malloc_info(f"{stem}.before.malloc.xml")
    start = time.perf_counter()
    await asyncio.to_thread(native_memory.trim)
    ms = (time.perf_counter() - start) * 1000
    rss = native_memory.rss_bytes()
    after = {"rss_kib": rss >> 10, "malloc": native_memory.mallinfo()}
    out = {"time": time.time(), "trim_ms": round(ms, 2), "before": before, "after": after}
    tmp = stem.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.rename(stem.with_suffix(".json"))
    log.info(
        "malloc_trim on request: RSS %d -> %d KiB in %.1f ms", before["rss_kib"], rss >> 10, ms
    )


def _maps() -> dict[str, int]:
    """Resident KiB by kind of mapping (/proc/self/smaps): the main heap
    (brk), anonymous mappings (other malloc arenas, pymalloc's arenas, big
    blocks), file-backed (code, libraries) and the rest."""
    out = {"heap": 0, "anon": 0, "file": 0, "other": 0}
    kind = "other"
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                first = line.split(maxsplit=6)
                if not first:
                    continue
                if first[0].endswith(":"):
                    if first[0] == "Rss:":
                        out[kind] += int(first[1])
                    continue
                name = first[5].strip() if len(first) > 5 else ""
                kind = (
                    "heap"
                    if name == "[heap]"
                    else "anon"
                    if not name
                    else "file"
                    if name.startswith("/")
                    else "other"
                )
    except OSError:
        return {}
    return out


def _sizes(broker: Broker) -> dict[str, int]:
    """Entries of the tables that grow with data or with clients."""
    engine = broker.engine
    streams = list(engine._streams.values())
    lc = engine.log_cache
    return {
        "log_cache_bytes": lc.size,
        "log_cache_entries": len(lc),
        "log_cache_order": len(lc._order),
        "log_cache_streams": len(lc._streams),
        "block_cache_bytes": engine.block_cache.size,
        "block_cache_blocks": len(engine.block_cache._blocks),
        "streams": len(streams),
        "stream_ranges": sum(len(st.ranges) for st in streams),
        "stream_producers": sum(len(st.producers) for st in streams),
        "stream_aborted": sum(len(st.aborted) for st in streams),
        "readers": len(engine._readers),
        "labels": len(engine._labels),
        "fetch_sessions": len(broker.fetch_sessions),
        "groups": len(broker.groups.groups),
        "group_members": sum(len(getattr(g, "members", ())) for g in broker.groups.groups.values()),
        "txn_ids": len(broker.txn._txns),
        "txn_locks": len(broker.txn._locks),
    }


def _report(broker: Broker) -> dict[str, Any]:
    gc.collect()
    # The census counts start-up's heap too, which gc_policy froze out of
    # gc.get_objects(): thawed for the count, frozen again with the rest.
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    try:
        types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    finally:
        if frozen:
            gc.freeze()
    tasks = collections.Counter(
        getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks()
    )
    current, peak = tracemalloc.get_traced_memory()
    return {
        "time": time.time(),
        "rss_kib": native_memory.rss_bytes() >> 10,
        "fds": len(os.listdir("/proc/self/fd")),
        "traced_bytes": current,
        "traced_peak_bytes": peak,
        "tracemalloc_overhead_bytes": tracemalloc.get_tracemalloc_memory(),
        "malloc": native_memory.mallinfo(),
        "maps_kib": _maps(),
        "gc_objects": sum(types.values()),
        "types": dict(types.most_common(60)),
        "tasks": dict(tasks),
        "sizes": _sizes(broker),
    }
