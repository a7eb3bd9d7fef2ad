"""Bound a process's native memory, the gateway's and the broker's (glibc
only; nothing elsewhere).

The gateway's peak RSS grew with its backlog in native memory that
tracemalloc never sees (docs/RELIABILITY.md): obstore's Tokio threads and
librdkafka's threads each get a glibc malloc arena of their own, and memory
freed there stays in the arena as its high-water mark. Two things bound it:
fewer arenas (M_ARENA_MAX, as MALLOC_ARENA_MAX=2 does: 61-84 MiB less in the
drain bench), set before those threads first allocate; and malloc_trim(0),
which hands the free pages of every arena back to the kernel: at once when
much is free after a burst, and on a slow timer when a little is (TrimPolicy).

The slow rule is for a broker's steady load: the event loop's long-lived
allocations (cached batches, range records) land between its short-lived
ones (requests, responses), and the holes they leave below the heap's top
grew the main arena's free memory by ~2 MiB a minute, which glibc never
returns by itself (it only shrinks the top); malloc_trim gives those holes'
whole pages back (docs/RELIABILITY.md, Soak).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import time
from dataclasses import dataclass

log = logging.getLogger("shoal.memory")

M_ARENA_MAX = -8  # mallopt parameter, glibc's malloc.h
ARENAS = 2
TRIM_CHECK_S = 5.0
TRIM_FREE_ABOVE = 32 * 1024 * 1024
TRIM_SLOW_S = 60.0
TRIM_SLOW_FREE_ABOVE = 4 * 1024 * 1024


@dataclass(frozen=True)
class TrimPolicy:
    """When trim_loop calls malloc_trim, decided from numbers alone.

    At once when malloc holds `free_above` bytes free and the process grew
    as much since the last trim (after a burst or a drain); otherwise at
    most once every `slow_s` when both reach `slow_free_above` (the slow
    creep of fragmentation). Both ask for growth since the last trim:
    malloc still counts the pages it gave back as free, so without it the
    loop would redo the walk for nothing."""

    free_above: int = TRIM_FREE_ABOVE
    slow_free_above: int = TRIM_SLOW_FREE_ABOVE
    slow_s: float = TRIM_SLOW_S

    def due(self, free: int | None, grown: int, since_s: float) -> bool:
        """`free`: bytes malloc holds free (None where unknown: growth alone
        decides); `grown`: RSS gained since the last trim; `since_s`: seconds
        since the last trim (or the start)."""
        held = grown if free is None else free
        if held >= self.free_above and grown >= self.free_above:
            return True
        return (
            since_s >= self.slow_s
            and held >= self.slow_free_above
            and grown >= self.slow_free_above
        )


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, once: find_library runs `ldconfig -p` in a subprocess
    and libc_ver reads the interpreter's binary, too slow for trim_loop's
    check on the event loop every few seconds."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    if hasattr(libc, "mallinfo2"):
        libc.mallinfo2.restype = _Mallinfo2
    libc.fopen.restype = ctypes.c_void_p  # FILE *, for malloc_info
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    if hasattr(libc, "malloc_info"):
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return libc


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas, unless MALLOC_ARENA_MAX already did (the
    operator's choice wins). Call before the storage and Kafka client
    threads start. True if set; the caller logs it once it is up (a start
    that fails must print its reason alone)."""
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(libc.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(arenas)))


def trim() -> bool:
    """Give free heap pages back to the kernel; True if any were."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(ctypes.c_size_t(0)))


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def mallinfo() -> dict[str, int]:
    """glibc's totals over all arenas (2.33+'s mallinfo2): in use, free but
    kept, mmapped, and the main arena's size; empty where unknown."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return {}
    m = libc.mallinfo2()
    return {"in_use": m.uordblks, "free": m.fordblks, "mmapped": m.hblkhd, "arena": m.arena}


def write_malloc_info(path: str) -> bool:
    """glibc's per-arena statistics (malloc_info's XML) into `path`: which
    arenas hold the memory malloc keeps free. False where unknown."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "malloc_info"):
        return False
    fp = libc.fopen(path.encode(), b"w")
    if not fp:
        return False
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    return True


def free_in_heap() -> int | None:
    """Bytes malloc holds free in its arenas, or None where unknown."""
    return mallinfo().get("free")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed_trim() -> tuple[float, int]:
    """malloc_trim, then (its milliseconds, RSS after); blocking: run it in
    a thread."""
    start = time.perf_counter()
    trim()
    return (time.perf_counter() - start) * 1000, rss_bytes()


async def trim_loop(interval_s: float = TRIM_CHECK_S, policy: TrimPolicy | None = None) -> None:
    """Hand freed heap pages back to the kernel instead of keeping them as
    the process's high-water mark: every interval, malloc_trim if `policy`
    says so (off the event loop: it walks every arena)."""
    if _glibc() is None:
        return
    policy = policy or TrimPolicy()
    floor = 0  # RSS right after the last trim
    last = time.monotonic()
    while True:
        await asyncio.sleep(interval_s)
        free = free_in_heap()
        rss = await asyncio.to_thread(rss_bytes)
        if policy.due(free, rss - floor, time.monotonic() - last):
            ms, floor = await asyncio.to_thread(timed_trim)
            last = time.monotonic()
            log.info(  # at most once a minute but for bursts: seldom
                "malloc_trim: %.1f MiB free, RSS %.1f -> %.1f MiB in %.1f ms",
                (free or 0) / 2**20,
                rss / 2**20,
                floor / 2**20,
                ms,
            )


class TrimService:
    """trim_loop as a service of `shoal serve` (started with the broker,
    stopped before it closes; the gateway runs trim_loop among its own
    tasks). It logs the arena cap `serve` set before the broker started, once
    the broker is up: a start that fails prints its reason alone."""

    def __init__(self, capped: bool, free_above: int) -> None:
        if capped:
            log.info("malloc arenas capped at %d (glibc M_ARENA_MAX)", ARENAS)
        self._task = asyncio.create_task(
            trim_loop(policy=TrimPolicy(free_above=free_above)), name="malloc-trim"
        )

    @classmethod
    async def start(
        cls, _broker: object, capped: bool = False, free_above: int = TRIM_FREE_ABOVE
    ) -> TrimService:
        return cls(capped, free_above)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
