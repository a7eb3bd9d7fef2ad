"""A stream's ranges, as columns the garbage collector has nothing to visit in.

A stream gains a range with every WAL commit that touches it, until
compaction swaps them for one: at a fleet's load that is 10,000 ranges a
second, alive 30-60 s. Kept as tuples, each range was a tracked container
of seven references (its offsets, position and timestamp distinct int
objects), and each young collection visited some 50,000 of them: 11-59 ms
of CPU with the event loop stopped, every 5 s (docs/BENCHMARKS.md, session
23). Here a stream's integers live in `array` columns of machine integers,
whose one reference is their type; the object keys (one str per WAL object,
shared by all its streams) are in one list per stream. A commit adds no
object the collector tracks.

An index is appended to in place (a commit only adds ranges after the
last) but otherwise never changed: a swap or a trim makes a new one, so a
reader holding an index across an await still sees a consistent layout.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator, Sequence

from shoal.meta.store import R_START, Range, RangeRecord

#: (object key, position): a cached block's key in the BlockCache
BlockKey = tuple[str, int]

# The columns of every empty index: an opened, idle stream with no range
# holds no arrays of its own (six empty ones were 416 bytes a stream).
# Only `append` changes a column, and it gives the index its own first.
_NO_INTS = array("q")
_NO_KEYS: list[str] = []


class RangeIndex:
    """A stream's ranges in offset order, one column per field."""

    __slots__ = ("ends", "keys", "max_timestamps", "positions", "sizes", "starts")

    def __init__(self) -> None:
        self.starts = self.ends = self.positions = self.sizes = self.max_timestamps = _NO_INTS
        self.keys = _NO_KEYS

    @classmethod
    def of(cls, ranges: Iterable[Range]) -> RangeIndex:
        """An index of `ranges` (RangeRecords or plain tuples), in the order
        given: sorted by start offset, as the metadata store returns them."""
        index = cls()
        index.extend(ranges)
        return index

    def __len__(self) -> int:
        return len(self.starts)

    def extend(self, ranges: Iterable[Range]) -> None:
        """Ranges after the last, in offset order (RangeRecords or tuples)."""
        for r in ranges:
            self.append(r[1], r[2], r[3], r[4], r[5], r[6])

    def append(
        self, start: int, end: int, key: str, position: int, size: int, max_timestamp: int
    ) -> None:
        """A range after the last (a commit's)."""
        if self.keys is _NO_KEYS:
            self._own_columns()
        self.starts.append(start)
        self.ends.append(end)
        self.keys.append(key)
        self.positions.append(position)
        self.sizes.append(size)
        self.max_timestamps.append(max_timestamp)

    def _own_columns(self) -> None:
        self.starts = array("q")
        self.ends = array("q")
        self.keys = []
        self.positions = array("q")
        self.sizes = array("q")
        self.max_timestamps = array("q")

    @property
    def end(self) -> int | None:
        """The last range's end offset (None when empty)."""
        return self.ends[-1] if self.starts else None

    def find(self, offset: int) -> int:
        """The index of the range holding `offset`, or -1."""
        i = bisect.bisect_right(self.starts, offset) - 1
        if i < 0 or self.ends[i] <= offset:
            return -1
        return i

    def record(self, stream_id: int, i: int) -> RangeRecord:
        return RangeRecord(
            stream_id,
            self.starts[i],
            self.ends[i],
            self.keys[i],
            self.positions[i],
            self.sizes[i],
            self.max_timestamps[i],
        )

    def records(self, stream_id: int, lo: int = 0, hi: int | None = None) -> list[RangeRecord]:
        """Ranges [lo, hi) as records (reads that are not a hot path)."""
        stop = len(self) if hi is None else min(hi, len(self))
        return [self.record(stream_id, i) for i in range(lo, stop)]

    def blocks(self, lo: int = 0, hi: int | None = None) -> Iterator[BlockKey]:
        """The BlockCache keys of ranges [lo, hi)."""
        return zip(self.keys[lo:hi], self.positions[lo:hi], strict=True)

    def from_offset(self, start: int) -> tuple[RangeIndex, list[BlockKey]]:
        """Without the ranges that end at or below `start` (trimmed), and the
        blocks of those: the same index when there are none."""
        ends = self.ends
        if not ends or min(ends) > start:
            return self, []
        out = RangeIndex()
        gone: list[BlockKey] = []
        for i, end in enumerate(ends):
            if end > start:
                out._append_from(self, i)
            else:
                gone.append((self.keys[i], self.positions[i]))
        return out, gone

    def _append_from(self, other: RangeIndex, i: int) -> None:
        self.append(
            other.starts[i],
            other.ends[i],
            other.keys[i],
            other.positions[i],
            other.sizes[i],
            other.max_timestamps[i],
        )

    def swapped(
        self, old_starts: Sequence[int], new: Sequence[Range]
    ) -> tuple[RangeIndex, list[BlockKey]]:
        """A new index with the ranges starting at `old_starts` swapped for
        `new`, and the blocks of those taken out. The usual swap is of
        neighbouring ranges, found by bisection and spliced column by
        column, for each of the thousands of streams a compaction round
        swaps; any other is filtered and sorted."""
        old = sorted(old_starts)
        fresh = RangeIndex.of(sorted(new, key=_start_of))
        starts = self.starts
        if old:
            lo = bisect.bisect_left(starts, old[0])
            hi = lo + len(old)
            if (
                hi <= len(starts)
                and starts[lo:hi].tolist() == old
                and (not fresh or lo == 0 or starts[lo - 1] < fresh.starts[0])
                and (not fresh or hi == len(starts) or fresh.starts[-1] < starts[hi])
            ):
                out = RangeIndex()
                for name in RangeIndex.__slots__:
                    mine = getattr(self, name)
                    setattr(out, name, mine[:lo] + getattr(fresh, name) + mine[hi:])
                return out, list(self.blocks(lo, hi))
        gone = set(old)
        kept = [i for i, s in enumerate(starts) if s not in gone]
        merged = sorted(
            [(starts[i], 0, i) for i in kept] + [(s, 1, i) for i, s in enumerate(fresh.starts)]
        )
        out = RangeIndex()
        for _s, which, i in merged:
            out._append_from(fresh if which else self, i)
        taken = [i for i, s in enumerate(starts) if s in gone]
        return out, [(self.keys[i], self.positions[i]) for i in taken]


def _start_of(r: Range) -> int:
    return r[R_START]
