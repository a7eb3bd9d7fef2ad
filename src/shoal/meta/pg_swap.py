"""A range swap's statements on PostgreSQL, its parameters as arrays.

Compaction's child process (storage/rewrite.py) turns a round's swap into
columns of integers (range_swap.SwapColumns); the broker binds them as arrays that
`unnest` turns back into rows inside the server, so a swap of 300,000
ranges costs the event loop a handful of statements, not a Python dict
and a bound row per range. The swap is one transaction (SQLite's chunks
exist for its single writer; here WAL commits run beside it on other
connections) and keeps each stream all or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from shoal.meta.range_swap import SwapColumns


_OLD = "unnest(CAST(:old_sid AS INTEGER[]), CAST(:old_start AS BIGINT[])) AS old(sid, start_at)"
# Only the streams to swap: a join with their ids, not an IN list per row.
_SWAPPING = "JOIN unnest(CAST(:swapped AS INTEGER[])) AS w(sid) ON w.sid = "

# How many of each stream's old ranges are still there (with sources, still
# in one of those objects): the pairs joined on the primary key.
_PRESENT = (
    f"SELECT r.stream_id, count(*) FROM stream_ranges r JOIN {_OLD}"
    " ON r.stream_id = old.sid AND r.start_offset = old.start_at"
)
_IN_SOURCES = " AND r.object_id IN (SELECT id FROM objects WHERE key = ANY(:sources))"
_BY_STREAM = " GROUP BY r.stream_id"

_DELETE_OLD = (
    f"DELETE FROM stream_ranges r USING (SELECT old.sid, old.start_at FROM {_OLD}"
    f" {_SWAPPING}old.sid) AS gone"
    " WHERE r.stream_id = gone.sid AND r.start_offset = gone.start_at"
)

_INSERT_NEW = (
    "INSERT INTO stream_ranges"
    " (stream_id, start_offset, end_offset, object_id, position, size, max_timestamp)"
    " SELECT n.sid, n.s, n.e, :object_id, n.p, n.z, n.t FROM unnest("
    "CAST(:new_sid AS INTEGER[]), CAST(:new_start AS BIGINT[]), CAST(:new_end AS BIGINT[]),"
    " CAST(:new_position AS BIGINT[]), CAST(:new_size AS BIGINT[]),"
    f" CAST(:new_max_timestamp AS BIGINT[])) AS n(sid, s, e, p, z, t) {_SWAPPING}n.sid"
)


async def swap(
    conn: AsyncConnection, columns: SwapColumns, object_id: int, sources: Sequence[str]
) -> list[int]:
    """Inside the caller's transaction, with the object's row inserted:
    the ranges of every stream whose old ranges are all still there (and,
    with `sources`, still in those objects). Returns the streams swapped."""
    if not columns.streams:
        return []
    old: dict[str, Any] = {"old_sid": columns.old_sid, "old_start": columns.old_start}
    if sources:
        query, params = _PRESENT + _IN_SOURCES + _BY_STREAM, {**old, "sources": list(sources)}
    else:
        query, params = _PRESENT + _BY_STREAM, old
    present = {int(sid): int(n) for sid, n in await conn.execute(text(query), params)}
    swapped = [
        sid
        for sid, n in zip(columns.streams, columns.old_counts, strict=True)
        if present.get(sid, 0) == n
    ]
    if swapped:
        await conn.execute(text(_DELETE_OLD), {**old, "swapped": swapped})
        await conn.execute(
            text(_INSERT_NEW),
            {
                "object_id": object_id,
                "swapped": swapped,
                "new_sid": columns.new_sid,
                "new_start": columns.new_start,
                "new_end": columns.new_end,
                "new_position": columns.new_position,
                "new_size": columns.new_size,
                "new_max_timestamp": columns.new_max_timestamp,
            },
        )
    return swapped
