"""A compaction's range swap on SQLite, each statement run whole inside SQLite.

A chunk's old (stream, start) pairs and new ranges go in as JSON texts
(sqlite_json.py), the check that each stream's old ranges are all still there
is one statement, and the streams swapped come back as one row: a fixed
number of steps per chunk, whatever its size, while it holds the write lock
that every WAL commit (so every produce ack) waits for. Row by row, an
8,192-range chunk took 0.9-12 s beside a busy event loop instead of 17 ms.
The texts are built before the transaction begins.

The statements are plain SQL over a DB-API `execute` (qmark parameters): the
WAL committer's connection runs them in its thread (sqlite_commit.py), an
in-memory database through the engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.meta.sqlite_json import columns

if TYPE_CHECKING:
    from shoal.meta.range_swap import Swap
    from shoal.meta.store import NewObject

# a DB-API execute: SQL with qmark parameters -> a cursor (fetchone, lastrowid)
Execute = Callable[[str, Sequence[Any]], Any]

_OLD_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS swap_old "
    "(sid INTEGER NOT NULL, start_at INTEGER NOT NULL, PRIMARY KEY (sid, start_at)) WITHOUT ROWID"
)
_FILL_OLD = f"INSERT OR IGNORE INTO swap_old SELECT {columns(2)} FROM json_each(?)"
# A stream keeps its ranges when one of its old ranges is gone (trimmed
# meanwhile) or, with sources, no longer lies in one of those objects (key
# compaction rewrote it): its pairs leave swap_old. The LEFT JOIN keeps
# swap_old outside, a seek into stream_ranges' primary key per pair.
_DROP_INCOMPLETE = (
    "DELETE FROM swap_old WHERE sid IN ("
    "SELECT o.sid FROM swap_old AS o LEFT JOIN stream_ranges AS r"
    " ON r.stream_id = o.sid AND r.start_offset = o.start_at{sources}"
    " WHERE r.stream_id IS NULL)"
)
_IN_SOURCES = (
    " AND r.object_id IN (SELECT id FROM objects WHERE key IN (SELECT value FROM json_each(?)))"
)
_SWAPPED = "SELECT json_group_array(DISTINCT sid) FROM swap_old"
_DELETE_OLD = (
    "DELETE FROM stream_ranges WHERE (stream_id, start_offset) IN "
    "(SELECT sid, start_at FROM swap_old)"
)
_INSERT_NEW = (
    "INSERT INTO stream_ranges"
    " (stream_id, start_offset, end_offset, position, size, max_timestamp, object_id)"
    f" SELECT {columns(6)}, ? FROM json_each(?)"
    " WHERE json_extract(value, '$[0]') IN (SELECT sid FROM swap_old)"
)
_INSERT_OBJECT = "INSERT INTO objects (key, size, created_ms, node_id, kind) VALUES (?, ?, ?, ?, ?)"


@dataclass(frozen=True, slots=True)
class SwapChunk:
    """One chunk's parameters as JSON texts, built off the write lock."""

    old: str  # [[stream, start], ...]
    new: str  # [[stream, start, end, position, size, max timestamp], ...]
    sources: str | None  # the keys of the objects the new one was copied from

    @classmethod
    def of(cls, streams: Sequence[Swap], sources: Sequence[str] = ()) -> SwapChunk:
        return cls(
            json.dumps([[sid, start] for sid, starts, _new in streams for start in starts]),
            json.dumps([[sid, *x] for sid, _starts, news in streams for x in news]),
            json.dumps(list(sources)) if sources else None,
        )


def swap(execute: Execute, chunk: SwapChunk, target: NewObject | int) -> tuple[int, list[int]]:
    """Inside the caller's write transaction: the object's row when `target`
    is a NewObject (else its id), then the ranges of every stream whose old
    ranges are all still there. Returns the object's id and the streams
    swapped, in id order."""
    if isinstance(target, int):
        object_id = target
    else:
        t = target
        object_id = int(
            execute(_INSERT_OBJECT, (t.key, t.size, t.created_ms, t.node_id, t.kind)).lastrowid
        )
    execute(_OLD_DDL, ())
    execute("DELETE FROM swap_old", ())
    execute(_FILL_OLD, (chunk.old,))
    if chunk.sources is None:
        execute(_DROP_INCOMPLETE.format(sources=""), ())
    else:
        execute(_DROP_INCOMPLETE.format(sources=_IN_SOURCES), (chunk.sources,))
    swapped = sorted(int(x) for x in json.loads(execute(_SWAPPED, ()).fetchone()[0]))
    if swapped:
        execute(_DELETE_OLD, ())
        execute(_INSERT_NEW, (object_id, chunk.new))
    execute("DELETE FROM swap_old", ())
    return object_id, swapped
