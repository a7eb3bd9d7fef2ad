"""A range swap's statements on PostgreSQL, its parameters as arrays.

Compaction's child process (storage/rewrite.py) turns a round's swap into
array texts (range_swap.PgArrays); the broker binds them as text, cast to
arrays that `unnest` turns back into rows inside the server, so a swap of
300,000 ranges costs the event loop a handful of statements, not a Python
dict and a bound row per range, nor asyncpg's encoding of each integer.
The swap is one transaction (SQLite's chunks exist for its single writer;
here WAL commits run beside it on other connections) and keeps each stream
all or nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from shoal.meta.range_swap import array_text

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from shoal.meta.range_swap import PgArrays


def _array(name: str, kind: str) -> str:
    """A bound array text, cast in the server."""
    return f"CAST(CAST(:{name} AS TEXT) AS {kind}[])"


_OLD = (
    f"unnest({_array('old_sid', 'INTEGER')}, {_array('old_start', 'BIGINT')}) AS old(sid, start_at)"
)
# Only the streams to swap: a join with their ids, not an IN list per row.
_SWAPPING = f"JOIN unnest({_array('swapped', 'INTEGER')}) AS w(sid) ON w.sid = "

# Each stream's old ranges deleted (with sources, only where they still lie
# in one of those objects), counted per stream: the swap's first statement,
# under a savepoint, kept when every count is whole.
_DELETE_COUNTED = (
    f"WITH gone AS (DELETE FROM stream_ranges r USING {_OLD}"
    " WHERE r.stream_id = old.sid AND r.start_offset = old.start_at{sources}"
    " RETURNING r.stream_id)"
    " SELECT stream_id, count(*) FROM gone GROUP BY stream_id"
)
_IN_SOURCES = " AND r.object_id IN (SELECT id FROM objects WHERE key = ANY(:sources))"

# The old ranges of the streams to swap: after a first try rolled back.
_DELETE_OLD = (
    f"DELETE FROM stream_ranges r USING (SELECT old.sid, old.start_at FROM {_OLD}"
    f" {_SWAPPING}old.sid) AS gone"
    " WHERE r.stream_id = gone.sid AND r.start_offset = gone.start_at"
)

_INSERT_NEW = (
    "INSERT INTO stream_ranges"
    " (stream_id, start_offset, end_offset, object_id, position, size, max_timestamp)"
    " SELECT n.sid, n.s, n.e, :object_id, n.p, n.z, n.t FROM unnest("
    f"{_array('new_sid', 'INTEGER')}, {_array('new_start', 'BIGINT')},"
    f" {_array('new_end', 'BIGINT')}, {_array('new_position', 'BIGINT')},"
    f" {_array('new_size', 'BIGINT')}, {_array('new_max_timestamp', 'BIGINT')})"
    f" AS n(sid, s, e, p, z, t) {_SWAPPING}n.sid"
)


async def swap(
    conn: AsyncConnection,
    streams: Sequence[int],
    old_counts: Sequence[int],
    arrays: PgArrays,
    object_id: int,
    sources: Sequence[str],
) -> list[int]:
    """Inside the caller's transaction, with the object's row inserted:
    the ranges of every stream (of `streams`, with `old_counts` old ranges
    each) whose old ranges are all still there (and, with `sources`, still
    in those objects). Returns the streams swapped."""
    if not streams:
        return []
    old: dict[str, Any] = {"old_sid": arrays.old_sid, "old_start": arrays.old_start}
    query = _DELETE_COUNTED.format(sources=_IN_SOURCES if sources else "")
    params = {**old, "sources": list(sources)} if sources else old
    # Optimistic: a round's ranges are almost always all still there, and
    # checking first, then deleting, joined the 300,000 pairs of a fleet's
    # round with the table twice (0.4 s and 0.6 s of the server's core).
    savepoint = await conn.begin_nested()
    gone = {int(sid): int(n) for sid, n in await conn.execute(text(query), params)}
    whole = [sid for sid, n in zip(streams, old_counts, strict=True) if gone.get(sid, 0) == n]
    if len(whole) == len(streams):
        await savepoint.commit()
        swapped = list(streams)
    else:
        # Some stream lost a range meanwhile (trimmed, or rewritten by key
        # compaction): it keeps all of its ranges, the others are swapped.
        await savepoint.rollback()
        swapped = whole
        if swapped:
            await conn.execute(text(_DELETE_OLD), {**old, "swapped": array_text(swapped)})
    if swapped:
        ids = array_text(swapped)
        await conn.execute(
            text(_INSERT_NEW),
            {
                "object_id": object_id,
                "swapped": ids,
                "new_sid": arrays.new_sid,
                "new_start": arrays.new_start,
                "new_end": arrays.new_end,
                "new_position": arrays.new_position,
                "new_size": arrays.new_size,
                "new_max_timestamp": arrays.new_max_timestamp,
            },
        )
    return swapped
