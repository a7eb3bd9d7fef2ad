"""The garbage collector's policy for a broker process.

A broker holds long-lived state for every partition (topics, stream states,
caches) and allocates short-lived containers by the thousand per request: a
fetch naming 10,000 partitions makes tens of thousands. With CPython's
default thresholds (700, 10, 10) such a request runs dozens of young
collections, promotes its own objects (alive until it answers) into older
generations, and so sets off collections that traverse the whole heap:
perf put a fifth of the broker's CPU in the collector in a loop of
10,000-partition fetches. Freezing what start-up loaded and collecting the
young generation less often keeps the collector's work in proportion to
garbage, not to the heap. Reference counting still frees acyclic garbage at
once; only reference cycles wait longer to be collected.
"""

from __future__ import annotations

import gc

#: Net container allocations before a young collection (CPython: 700). A
#: request's objects mostly die before this many more are made.
YOUNG_THRESHOLD = 50_000
#: Young collections per middle one, middle per full one (CPython: 10, 10).
OLDER_THRESHOLDS = (20, 20)


def settle() -> None:
    """Once start-up is done: collect, move the survivors out of the
    collector's sight for good (`gc.freeze`), and raise the thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
