"""When the trim loop hands free heap back (native_memory.TrimPolicy, issue
17 soak): at once after a burst, and on a slow timer for the few MiB of holes
a broker's steady load leaves in the main arena, which the old rule (16 MiB
free and 16 MiB growth) never reached."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shoal import native_memory as memory
from shoal.native_memory import TrimPolicy

MIB = 2**20


def test_a_burst_is_trimmed_at_once() -> None:
    p = TrimPolicy()
    big = p.free_above
    assert p.due(free=big, grown=big, since_s=0)
    assert not p.due(free=big, grown=big - 1, since_s=0)  # not yet slow-due either
    assert p.due(free=big, grown=big - 1, since_s=p.slow_s)


def test_a_slow_creep_is_trimmed_once_a_minute_at_most() -> None:
    p = TrimPolicy()
    # the probe's main arena: 14 MiB free after 7 minutes, RSS up as much
    assert not p.due(free=14 * MIB, grown=14 * MIB, since_s=p.slow_s - 1)
    assert p.due(free=14 * MIB, grown=14 * MIB, since_s=p.slow_s)
    assert p.due(free=4 * MIB, grown=4 * MIB, since_s=600)
    assert not TrimPolicy(free_above=16 * MIB, slow_free_above=16 * MIB).due(
        free=14 * MIB, grown=14 * MIB, since_s=600
    )  # the old rule: never


def test_no_trim_without_growth_or_free_memory() -> None:
    p = TrimPolicy()
    # pages given back are still counted free: no growth, nothing to do
    assert not p.due(free=50 * MIB, grown=0, since_s=3600)
    assert not p.due(free=50 * MIB, grown=3 * MIB, since_s=3600)
    # grown, but into memory in use: nothing to give back
    assert not p.due(free=2 * MIB, grown=100 * MIB, since_s=3600)


def test_unknown_free_memory_lets_growth_decide() -> None:
    p = TrimPolicy()
    assert p.due(free=None, grown=40 * MIB, since_s=0)
    assert p.due(free=None, grown=5 * MIB, since_s=p.slow_s)
    assert not p.due(free=None, grown=1 * MIB, since_s=3600)


HOLES_PROGRAM = """
import asyncio, ctypes, json, sys
from shoal import native_memory as memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
holes, pins = [], []
for _ in range(400):  # 400 x 16 KiB, each followed by a block that stays
    b = libc.malloc(16_384)
    ctypes.memset(b, 1, 16_384)
    holes.append(b)
    pins.append(libc.malloc(2_000))  # too big for the small bins' leftovers: from the top
for b in holes:
    libc.free(ctypes.c_void_p(b))  # 6.4 MB of holes below the heap's top
free, before = memory.free_in_heap(), memory.rss_bytes()
policy = memory.TrimPolicy(slow_s=0.1)
if sys.argv[1] == "old":
    policy = memory.TrimPolicy(free_above=16 << 20, slow_free_above=16 << 20)

async def main() -> int:
    loop = asyncio.create_task(memory.trim_loop(interval_s=0.02, policy=policy))
    for _ in range(50):  # until the holes are given back, or 1 s
        await asyncio.sleep(0.02)
        if before - memory.rss_bytes() >= 4_000_000:
            break
    loop.cancel()
    return memory.rss_bytes()

print(json.dumps([free, before, asyncio.run(main())]))
"""


@pytest.mark.skipif(memory._glibc() is None, reason="glibc's malloc only")
def test_holes_below_the_top_go_back_to_the_kernel() -> None:
    def run(mode: str) -> tuple[int, int, int]:
        out = subprocess.run(
            [sys.executable, "-c", HOLES_PROGRAM, mode],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        free, before, after = json.loads(out.stdout.splitlines()[-1])
        return free, before, after

    free, before, after = run("old")
    assert free >= 6_000_000, free
    assert before - after < 1_000_000, (before, after)  # glibc alone keeps them, as the old rule
    free, before, after = run("new")
    assert free >= 6_000_000, free
    assert before - after >= 4_000_000, (before, after)
