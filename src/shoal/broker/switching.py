"""How often a thread waiting for the GIL may take it from the event loop.

The broker's threads (the SQLite WAL commits, file writes, TLS) each step
outside the GIL and need it back to go on. A waiter asks the running thread to
drop it only after the switch interval (CPython: 5 ms) passes with no switch
at all; but a busy event loop drops and takes it back on every iteration (its
poll for I/O), more often than that, so the waiter's timer starts over each
time and it can wait for as long as the loop stays busy. Measured here: a
3 ms SQLite statement in a thread waited up to 26 s while the loop ran 4 ms
callbacks back to back, and a compaction's range swap stalled every WAL
commit (every produce ack) behind it for seconds. At 0.5 ms the same
statement waited at most 8 ms. A waiter exists only while a thread has work,
so an idle or single-threaded broker pays nothing for the shorter interval.
"""

from __future__ import annotations

import sys

#: seconds (CPython's default: 0.005)
SWITCH_INTERVAL_S = 0.0005


def apply(interval_s: float = SWITCH_INTERVAL_S) -> None:
    """Set the interpreter's switch interval, for the whole process."""
    sys.setswitchinterval(interval_s)
