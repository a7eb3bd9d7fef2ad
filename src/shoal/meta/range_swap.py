"""A compaction's range swap, prepared: which streams, which old ranges,
which new ones, in the shape the store's statements take.

Pure functions over tuples, so that compaction's child process
(storage/rewrite.py) can prepare a swap of hundreds of thousands of ranges
and the broker only runs it: the per-range Python (merging a stream's runs,
the JSON texts of SQLite's chunks) stays off the event loop that serves
clients.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shoal.meta.pg_swap import SwapColumns
from shoal.meta.sqlite_swap import SwapChunk

#: a new range: start offset, end offset, position, size, max timestamp
NewRange = tuple[int, int, int, int, int]
#: a stream's swap: its id, the start offsets of its old ranges, its new ranges
Swap = tuple[int, Sequence[int], Sequence[NewRange]]


@dataclass(frozen=True, slots=True)
class PreparedSwap:
    """`swaps` has one entry per stream. On SQLite `chunks` holds the
    transactions' parameters (`chunk_ranges` given to `prepare`); on
    PostgreSQL `columns` holds the one transaction's arrays."""

    swaps: list[Swap]
    sources: tuple[str, ...]
    chunks: list[SwapChunk]
    columns: SwapColumns | None = None


def prepare(
    swaps: Iterable[Swap], sources: Sequence[str] = (), chunk_ranges: int | None = None
) -> PreparedSwap:
    """One entry per stream (compaction may hand over several runs of one),
    each stream's old starts deduplicated (the count of those still there is
    compared with their number); with `chunk_ranges`, SQLite's chunks of
    streams of at most that many old ranges (a stream with more is a chunk
    of its own); without, PostgreSQL's columns."""
    merged: dict[int, tuple[list[int], list[NewRange]]] = {}
    for sid, old_starts, new_ranges in swaps:
        starts, news = merged.setdefault(sid, ([], []))
        starts.extend(old_starts)
        news.extend(new_ranges)
    streams: list[Swap] = [
        (sid, list(dict.fromkeys(starts)), news) for sid, (starts, news) in merged.items()
    ]
    chunks: list[SwapChunk] = []
    if chunk_ranges is not None:
        group: list[Swap] = []
        n = 0
        for x in streams:
            if group and n + len(x[1]) > chunk_ranges:
                chunks.append(SwapChunk.of(group, sources))
                group, n = [], 0
            group.append(x)
            n += len(x[1])
        chunks.append(SwapChunk.of(group, sources))
        return PreparedSwap(streams, tuple(sources), chunks)
    return PreparedSwap(streams, tuple(sources), [], SwapColumns.of(streams))
