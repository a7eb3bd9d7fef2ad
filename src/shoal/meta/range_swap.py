"""A compaction's range swap, prepared: which streams, which old ranges,
which new ones, in the shape the store's statements take.

Pure functions over tuples, so that compaction's child process
(storage/rewrite.py) can prepare a swap of hundreds of thousands of ranges
and the broker only runs it: the per-range Python (merging a stream's runs,
the JSON texts of SQLite's chunks) stays off the event loop that serves
clients.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

from shoal.meta.sqlite_swap import SwapChunk

#: a new range: start offset, end offset, position, size, max timestamp
NewRange = tuple[int, int, int, int, int]
#: a stream's swap: its id, the start offsets of its old ranges, its new ranges
Swap = tuple[int, Sequence[int], Sequence[NewRange]]


@dataclass(frozen=True, slots=True)
class SwapColumns:
    """A swap's streams, old ranges and new ranges as columns of integers,
    one element per stream or per range, in stream order: what the broker
    serves from once the swap is done (`of_streams`). A few lists,
    whatever the number of ranges: unpickled in the broker they are a few
    objects for the collector, where tuples and lists per stream and per
    range were tens of thousands per round, each one traversed by young
    collections and promoted (25-45 ms pauses, every round)."""

    streams: list[int]
    old_counts: list[int]  # each stream's number of old ranges, as `streams`
    new_counts: list[int]  # and of new ranges
    old_start: list[int]
    new_start: list[int]
    new_end: list[int]
    new_position: list[int]
    new_size: list[int]
    new_max_timestamp: list[int]

    @classmethod
    def of(cls, streams: Sequence[Swap]) -> SwapColumns:
        new = [x for _sid, _starts, news in streams for x in news]
        columns = [list(c) for c in zip(*new, strict=True)] if new else [[] for _ in range(5)]
        return cls(
            [sid for sid, _s, _n in streams],
            [len(starts) for _sid, starts, _n in streams],
            [len(news) for _sid, _s, news in streams],
            [start for _sid, starts, _n in streams for start in starts],
            *columns,
        )

    def of_streams(self, wanted: Iterable[int]) -> Iterator[tuple[int, list[int], list[NewRange]]]:
        """The swaps of the `wanted` streams (each one of `streams`), as
        (stream, old starts, new ranges)."""
        old_at = [0, *accumulate(self.old_counts)]
        new_at = [0, *accumulate(self.new_counts)]
        index = {sid: i for i, sid in enumerate(self.streams)}
        for sid in wanted:
            i = index[sid]
            a, b = new_at[i], new_at[i + 1]
            yield (
                sid,
                self.old_start[old_at[i] : old_at[i + 1]],
                list(
                    zip(
                        self.new_start[a:b],
                        self.new_end[a:b],
                        self.new_position[a:b],
                        self.new_size[a:b],
                        self.new_max_timestamp[a:b],
                        strict=True,
                    )
                ),
            )


@dataclass(frozen=True, slots=True)
class PgArrays:
    """A swap's columns as PostgreSQL array literals (`{1,2,3}`), which the
    statements cast in the server (pg_swap.py). Bound as integer lists,
    asyncpg encoded them on the broker's event loop: 55 ms of it for each
    array of 300,000 (a fleet's round), and the old ranges' two arrays are
    bound twice. A text is copied as it is; the child writes them."""

    old_sid: str
    old_start: str
    new_sid: str
    new_start: str
    new_end: str
    new_position: str
    new_size: str
    new_max_timestamp: str

    @classmethod
    def of(cls, streams: Sequence[Swap]) -> PgArrays:
        return cls(
            array_text(sid for sid, starts, _n in streams for _ in starts),
            array_text(start for _sid, starts, _n in streams for start in starts),
            array_text(sid for sid, _s, news in streams for _ in news),
            *(array_text(x[i] for _sid, _s, news in streams for x in news) for i in range(5)),
        )


def array_text(values: Iterable[int]) -> str:
    """PostgreSQL's text form of an integer array."""
    return "{" + ",".join(map(str, values)) + "}"


@dataclass(frozen=True, slots=True)
class PreparedSwap:
    """On SQLite `chunks` holds the transactions' parameters (`chunk_ranges`
    given to `prepare`); on PostgreSQL the one transaction binds `pg`.
    `columns`, on both engines, tell the broker what to serve from once
    the swap is done."""

    columns: SwapColumns
    sources: tuple[str, ...]
    chunks: list[SwapChunk]
    pg: PgArrays | None = None


def prepare(
    swaps: Iterable[Swap], sources: Sequence[str] = (), chunk_ranges: int | None = None
) -> PreparedSwap:
    """One entry per stream (compaction may hand over several runs of one),
    each stream's old starts deduplicated (the count of those still there is
    compared with their number); with `chunk_ranges`, SQLite's chunks of
    streams of at most that many old ranges (a stream with more is a chunk
    of its own), without, PostgreSQL's array texts."""
    merged: dict[int, tuple[list[int], list[NewRange]]] = {}
    for sid, old_starts, new_ranges in swaps:
        starts, news = merged.setdefault(sid, ([], []))
        starts.extend(old_starts)
        news.extend(new_ranges)
    streams: list[Swap] = [
        (sid, list(dict.fromkeys(starts)), news) for sid, (starts, news) in merged.items()
    ]
    if chunk_ranges is None:
        return PreparedSwap(SwapColumns.of(streams), tuple(sources), [], PgArrays.of(streams))
    chunks: list[SwapChunk] = []
    group: list[Swap] = []
    n = 0
    for x in streams:
        if group and n + len(x[1]) > chunk_ranges:
            chunks.append(SwapChunk.of(group, sources))
            group, n = [], 0
        group.append(x)
        n += len(x[1])
    chunks.append(SwapChunk.of(group, sources))
    return PreparedSwap(SwapColumns.of(streams), tuple(sources), chunks)
