"""A group commit on PostgreSQL in one statement and one round trip.

Through a transaction a commit was a BEGIN, one statement per table and a
COMMIT, each a round trip that waits for the event loop to come back to it:
under a fleet's load, with the loop busy answering produce requests, every
extra await adds a turn of the loop to each acknowledgement. Here the moves
of each stream's end, the objects, their ranges and the producers' states
are data-modifying CTEs of one statement, run in autocommit (a statement is
atomic on its own) with every row bound as arrays that `unnest` turns back
into rows inside the server: one statement whatever the number of streams,
prepared once per connection.

Fencing: if any stream did not move (its epoch or end is not what the
writer expects, or it was deleted), the final SELECT fails on purpose (a
cast of a non-constant text, evaluated only then), which undoes the whole
statement; the caller then reads the streams to say which one was fenced.
Transactions' commits are the same statement: the aborted transactions
their abort markers end are recorded, and the markers written are taken
off the list of those to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from shoal.meta.sqlite_commit import Moves
    from shoal.meta.store import ObjectCommit, ProducerRow

#: in the server's error when a stream did not move (see the module's text)
FENCED = "shoal: a stream of the commit was fenced"

_COMMIT = text(
    "WITH moved AS ("
    " UPDATE streams SET end_offset = m.end_at"
    " FROM unnest(CAST(:m_sid AS INTEGER[]), CAST(:m_epoch AS INTEGER[]),"
    " CAST(:m_start AS BIGINT[]), CAST(:m_end AS BIGINT[])) AS m(sid, epoch, start_at, end_at)"
    " WHERE streams.id = m.sid AND streams.epoch = m.epoch"
    " AND streams.end_offset = m.start_at AND NOT streams.deleted"
    " RETURNING streams.id),"
    " new_objects AS ("
    " INSERT INTO objects (key, size, created_ms, node_id, kind)"
    " SELECT o.key, o.size, :created_ms, :node_id, 'wal'"
    " FROM unnest(CAST(:o_key AS VARCHAR[]), CAST(:o_size AS BIGINT[])) AS o(key, size)"
    " RETURNING id, key),"
    " new_ranges AS ("
    " INSERT INTO stream_ranges"
    " (stream_id, start_offset, end_offset, object_id, position, size, max_timestamp)"
    " SELECT r.sid, r.s, r.e, new_objects.id, r.p, r.z, r.t"
    " FROM unnest(CAST(:r_sid AS INTEGER[]), CAST(:r_start AS BIGINT[]),"
    " CAST(:r_end AS BIGINT[]), CAST(:r_object AS INTEGER[]), CAST(:r_position AS BIGINT[]),"
    " CAST(:r_size AS BIGINT[]), CAST(:r_max_timestamp AS BIGINT[]))"
    " AS r(sid, s, e, k, p, z, t)"
    " JOIN new_objects ON new_objects.key = (CAST(:o_key AS VARCHAR[]))[r.k]"
    " RETURNING 1),"
    " producers AS ("
    " INSERT INTO producer_states"
    " (stream_id, producer_id, epoch, batches, last_timestamp_ms, txn_first_offset)"
    " SELECT * FROM unnest(CAST(:p_sid AS INTEGER[]), CAST(:p_pid AS BIGINT[]),"
    " CAST(:p_epoch AS INTEGER[]), CAST(:p_batches AS TEXT[]), CAST(:p_ts AS BIGINT[]),"
    " CAST(:p_txn AS BIGINT[]))"
    " ON CONFLICT (stream_id, producer_id) DO UPDATE SET epoch = excluded.epoch,"
    " batches = excluded.batches, last_timestamp_ms = excluded.last_timestamp_ms,"
    " txn_first_offset = excluded.txn_first_offset"
    " RETURNING 1),"
    " aborted AS ("
    " INSERT INTO aborted_txns (stream_id, producer_id, first_offset, last_offset)"
    " SELECT * FROM unnest(CAST(:a_sid AS INTEGER[]), CAST(:a_pid AS BIGINT[]),"
    " CAST(:a_first AS BIGINT[]), CAST(:a_last AS BIGINT[]))"
    " RETURNING 1),"
    " markers AS ("
    " DELETE FROM txn_markers WHERE id = ANY(CAST(:markers_done AS INTEGER[]))"
    " RETURNING 1)"
    " SELECT CASE WHEN (SELECT count(*) FROM moved) = :n_moves THEN 0"
    f" ELSE CAST('{FENCED}: ' || (SELECT count(*) FROM moved) AS INTEGER) END"
)


def params(
    moves: Moves,
    objects: Sequence[ObjectCommit],
    producers: Sequence[ProducerRow],
    node_id: int,
    created_ms: int,
) -> dict[str, Any]:
    """The statement's arrays: a column per field, no row objects (one
    Python step per range: what a commit records). A range names its
    object by its (1-based) place in the objects' array."""
    r_sid: list[int] = []
    r_start: list[int] = []
    r_end: list[int] = []
    r_object: list[int] = []
    r_position: list[int] = []
    r_size: list[int] = []
    r_max_timestamp: list[int] = []
    for i, obj in enumerate(objects, 1):
        for r in obj.ranges:
            r_sid.append(r.stream_id)
            r_start.append(r.start_offset)
            r_end.append(r.end_offset)
            r_object.append(i)
            r_position.append(r.position)
            r_size.append(r.size)
            r_max_timestamp.append(r.max_timestamp)
    aborted = [a for obj in objects for a in obj.aborted]
    ends = moves.values()
    return {
        "m_sid": list(moves),
        "m_epoch": [m[0] for m in ends],
        "m_start": [m[1] for m in ends],
        "m_end": [m[2] for m in ends],
        "n_moves": len(moves),
        "o_key": [obj.key for obj in objects],
        "o_size": [obj.size for obj in objects],
        "created_ms": created_ms,
        "node_id": node_id,
        "r_sid": r_sid,
        "r_start": r_start,
        "r_end": r_end,
        "r_object": r_object,
        "r_position": r_position,
        "r_size": r_size,
        "r_max_timestamp": r_max_timestamp,
        "p_sid": [p.stream_id for p in producers],
        "p_pid": [p.producer_id for p in producers],
        "p_epoch": [p.epoch for p in producers],
        "p_batches": [p.batches for p in producers],
        "p_ts": [p.last_timestamp_ms for p in producers],
        "p_txn": [p.txn_first_offset for p in producers],
        "a_sid": [a.stream_id for a in aborted],
        "a_pid": [a.producer_id for a in aborted],
        "a_first": [a.first_offset for a in aborted],
        "a_last": [a.last_offset for a in aborted],
        "markers_done": [m for obj in objects for m in obj.markers_done],
    }


async def commit(conn: AsyncConnection, bound: dict[str, Any]) -> bool:
    """Run the commit on an autocommit connection; False (and nothing
    changed) if a stream was fenced. Other errors are raised."""
    try:
        await conn.execute(_COMMIT, bound)
    except DBAPIError as exc:
        if FENCED in str(exc.orig):
            return False
        raise
    return True
