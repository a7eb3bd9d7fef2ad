"""The gateway's native-memory bound (native_memory.py, shared with the broker): on glibc the malloc
arena cap is applied, seen in glibc's own per-arena statistics of a process
whose threads allocate; elsewhere it is a no-op."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shoal import native_memory as memory

pytestmark = pytest.mark.skipif(memory._glibc() is None, reason="glibc's malloc only")

PROGRAM = """
import ctypes, sys, threading
from shoal import native_memory as memory
if sys.argv[1] == "cap":
    assert memory.limit_arenas(1)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
go = threading.Barrier(6)
def work():
    go.wait()  # all at once: glibc gives contending threads arenas of their own
    for _ in range(2000):
        libc.malloc(200)
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
memory.trim()  # with threads about: no crash
libc.malloc_stats()
"""


def arenas(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"},
    )
    return out.stderr.count("Arena ")


def test_arena_cap_is_applied() -> None:
    capped, free = arenas("cap"), arenas("free")
    print(f"arenas: {capped} capped, {free} by default")
    assert capped == 1, capped
    assert free > capped, (free, capped)


def test_operators_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_arenas() is False


TRIM_PROGRAM = """
import ctypes
from shoal import native_memory as memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
blocks = [libc.malloc(100_000) for _ in range(400)]  # 40 MB in the arena
for b in blocks:
    ctypes.memset(b, 1, 100_000)
pin = libc.malloc(60_000)  # from the top, above them: the top cannot shrink
for b in blocks:
    libc.free(ctypes.c_void_p(b))
free, before = memory.free_in_heap(), memory.rss_bytes()
assert memory.trim()
print(free, before, memory.rss_bytes())
"""


def test_trim_gives_free_heap_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", TRIM_PROGRAM], capture_output=True, text=True, check=True
    )
    free, before, after = map(int, out.stdout.split())
    assert free >= 30_000_000, free
    assert before - after >= 30_000_000, (before, after)
