"""WAL commits on SQLite in one hop to a thread, through the sqlite3 module.

A group commit is a handful of statements (the streams' ends, the objects,
their ranges, the producers' state, aborted transactions, finished markers).
Through SQLAlchemy and aiosqlite each statement is several round trips to
aiosqlite's thread (cursor, execute, fetch, close) plus SQLAlchemy's own
work: about 3 ms of CPU per commit, and an idempotent librdkafka producer
(at most 5 requests in flight per partition) makes a commit every few
batches. Here the whole transaction runs in one call on a connection of its
own, with the same statements compiled once from the Core ones (schema.py
stays the one definition) and the same pragmas as the engine's connections.

The transaction starts with BEGIN IMMEDIATE, so it waits for SQLite's write
lock (busy_timeout) in its thread instead of failing half-way; the store's
asyncio write lock still orders it with the store's other writers. Other
write transactions can queue in the same thread (`transaction`: compaction's
range swap, sqlite_swap.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Update, bindparam, delete, insert, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from shoal.meta import schema as s
from shoal.meta.sqlite_json import columns

if TYPE_CHECKING:
    from shoal.meta.store import ObjectCommit, ProducerRow, RangeCommit

# stream id -> [epoch, first start, final end], as commit_objects builds it
Moves = dict[int, list[int]]
# stream id -> (epoch, end offset, deleted) as read inside a failed commit
StreamRows = dict[int, tuple[int, int, bool]]

_DIALECT = sqlite.dialect(paramstyle="named")


def _sql(stmt: Any, keys: Sequence[str] | None = None) -> str:
    return str(stmt.compile(dialect=_DIALECT, column_keys=keys))


def fenced_move() -> Update:
    """Move one stream's end from :b_start to :b_end if its epoch is still
    :b_epoch, executed for many streams at once (move_params): a group
    commit's moves on SQLite, here and through the engine (store.py)."""
    st = s.streams
    return (
        update(st)
        .where(
            st.c.id == bindparam("b_sid"),
            st.c.epoch == bindparam("b_epoch"),
            st.c.end_offset == bindparam("b_start"),
            st.c.deleted.is_(False),
        )
        .values(end_offset=bindparam("b_end"))
    )


def move_params(moves: Moves) -> list[dict[str, int]]:
    """fenced_move's parameters, one set per stream."""
    return [
        {"b_sid": sid, "b_epoch": e, "b_start": a, "b_end": b} for sid, (e, a, b) in moves.items()
    ]


def producer_upsert(dialect_insert: Any) -> Any:
    """Insert or update producers' states (rows as ProducerRow.row() makes
    them), with the dialect's `insert` (both speak ON CONFLICT DO UPDATE):
    here and in MetaStore.upsert_producers, on SQLite and PostgreSQL."""
    t = s.producer_states
    ins = dialect_insert(t)
    return ins.on_conflict_do_update(
        index_elements=[t.c.stream_id, t.c.producer_id],
        set_={
            "epoch": ins.excluded.epoch,
            "batches": ins.excluded.batches,
            "last_timestamp_ms": ins.excluded.last_timestamp_ms,
            "txn_first_offset": ins.excluded.txn_first_offset,
        },
    )


def newest_producers(objects: Sequence[ObjectCommit]) -> list[ProducerRow]:
    """A group commit's producer states: a producer seen in several objects
    of the group is recorded with its newest state (both commit paths)."""
    latest = {(p.stream_id, p.producer_id): p for obj in objects for p in obj.producers}
    return list(latest.values())


def _statements() -> dict[str, str]:
    st, o, r, ps, at = (
        s.streams,
        s.objects,
        s.stream_ranges,
        s.producer_states,
        s.aborted_txns,
    )
    return {
        "move": _sql(fenced_move()),
        "stream": _sql(
            select(st.c.epoch, st.c.end_offset, st.c.deleted).where(st.c.id == bindparam("b_sid"))
        ),
        "object": _sql(insert(o), ("key", "size", "created_ms", "node_id", "kind")),
        "range": _sql(insert(r), r.c.keys()),
        "producer": _sql(producer_upsert(sqlite_insert), ps.c.keys()),
        "aborted": _sql(insert(at), ("stream_id", "producer_id", "first_offset", "last_offset")),
        "marker": _sql(delete(s.txn_markers).where(s.txn_markers.c.id == bindparam("b_id"))),
    }


T = TypeVar("T")
#: Rows above which a commit's moves and ranges go in as one JSON text
#: (sqlite_json.py), not an executemany: a group commit under load names
#: thousands of streams.
BULK_ROWS = 32

# (not a WITH: the sqlite3 module counts rows only for a statement that
# starts with INSERT, UPDATE, DELETE or REPLACE)
_BULK_MOVES = (
    "UPDATE streams SET end_offset = m.end_at FROM"
    f" (SELECT {columns(4, ('sid', 'epoch', 'start_at', 'end_at'))} FROM json_each(?)) AS m"
    " WHERE streams.id = m.sid AND streams.epoch = m.epoch"
    " AND streams.end_offset = m.start_at AND streams.deleted = 0"
)
_BULK_RANGES = (
    "INSERT INTO stream_ranges"
    " (stream_id, start_offset, end_offset, object_id, position, size, max_timestamp)"
    f" SELECT {columns(7)} FROM json_each(?)"
)


class _Fenced(Exception):
    """A stream did not move: the commit rolls back, and `rows` (the
    streams' rows as the transaction saw them) name the stream."""

    def __init__(self, rows: StreamRows) -> None:
        super().__init__("a stream did not move")
        self.rows = rows


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


def _answer(
    loop: asyncio.AbstractEventLoop,
    done: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    """Hand a job's outcome to its waiter, on the waiter's loop."""

    def settle() -> None:
        if done.done():  # cancelled meanwhile
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(result)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


class SqliteCommitter:
    """One connection, one thread: `commit` runs a whole group commit there."""

    def __init__(self, path: str, pragmas: Callable[[Any, Any], None]) -> None:
        self.path = path
        self._pragmas = pragmas
        self._sql = _statements()
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        # One thread keeps the connection on one thread (and off the default
        # executor, which file work shares); made again after a close. Jobs
        # reach it on a queue and answer with call_soon_threadsafe: half the
        # CPU of run_in_executor's hop (its concurrent Future, the chaining
        # of two futures), paid once per group commit.
        self._jobs: queue.SimpleQueue[_Job | None] | None = None
        #: statements executed (an executemany counts once), for tests
        self.statements = 0

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._jobs is not None:
                self._jobs.put(None)  # the thread ends after what is queued
                self._jobs = None

    async def commit(
        self,
        moves: Moves,
        objects: Sequence[ObjectCommit],
        node_id: int,
        created_ms: int,
        before: Callable[[], None] | None = None,
    ) -> StreamRows | None:
        """`commit_sync` in the committer's thread."""
        return await self._call(
            functools.partial(self.commit_sync, moves, objects, node_id, created_ms, before)
        )

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in a write transaction of its own, in the committer's
        thread: queued with the WAL commits, so neither waits on SQLite's
        lock (and its busy handler's sleeps) for the other."""
        return await self._call(functools.partial(self.transaction_sync, work))

    def transaction_sync(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    async def _call(self, job: Callable[[], T]) -> T:
        jobs = self._jobs
        if jobs is None:
            jobs = self._jobs = queue.SimpleQueue()
            threading.Thread(
                target=self._serve, args=(jobs,), name="shoal-sqlite-commit", daemon=True
            ).start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        jobs.put((loop, done, job))
        return await done

    def _serve(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        """The committer's thread: one job at a time, until close()."""
        while (job := jobs.get()) is not None:
            loop, done, work = job
            if done.cancelled():  # as an executor drops a job cancelled in its queue
                continue
            try:
                result = work()
            except BaseException as exc:
                _answer(loop, done, None, exc)
            else:
                _answer(loop, done, result, None)

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._pragmas(conn, None)
            self._conn = conn
        return self._conn

    def commit_sync(
        self,
        moves: Moves,
        objects: Sequence[ObjectCommit],
        node_id: int,
        created_ms: int,
        before: Callable[[], None] | None = None,
    ) -> StreamRows | None:
        """Apply the group commit; None when it is committed. When a stream
        did not move (fenced, or its end is not the expected one) nothing is
        changed and the streams' rows as the transaction saw them after the
        moves are returned, for the caller to name the stream. `before` runs
        first (the objects' files): if it raises, nothing is committed."""
        if before is not None:
            before()
        try:
            self.transaction_sync(
                lambda conn: self._apply(conn, moves, objects, node_id, created_ms)
            )
        except _Fenced as fenced:
            return fenced.rows
        return None

    def _run(self, conn: sqlite3.Connection, name: str, rows: list[dict[str, Any]]) -> int:
        self.statements += 1
        if len(rows) == 1:
            return conn.execute(self._sql[name], rows[0]).rowcount
        return conn.executemany(self._sql[name], rows).rowcount

    def _apply(
        self,
        conn: sqlite3.Connection,
        moves: Moves,
        objects: Sequence[ObjectCommit],
        node_id: int,
        created_ms: int,
    ) -> None:
        if moves:
            if len(moves) > BULK_ROWS:
                self.statements += 1
                param = json.dumps([[sid, *m] for sid, m in moves.items()])
                moved = conn.execute(_BULK_MOVES, (param,)).rowcount
            else:
                moved = self._run(conn, "move", move_params(moves))
            if moved != len(moves):
                out: StreamRows = {}
                for sid in moves:
                    self.statements += 1
                    row = conn.execute(self._sql["stream"], {"b_sid": sid}).fetchone()
                    if row is not None:
                        out[sid] = (int(row[0]), int(row[1]), bool(row[2]))
                raise _Fenced(out)
        ranges: list[tuple[RangeCommit, int]] = []  # with its object's id
        for obj in objects:
            self.statements += 1
            cur = conn.execute(
                self._sql["object"],
                {
                    "key": obj.key,
                    "size": obj.size,
                    "created_ms": created_ms,
                    "node_id": node_id,
                    "kind": "wal",
                },
            )
            object_id = cur.lastrowid
            if object_id is None:  # an INSERT always has one; fail the commit if not
                raise sqlite3.DatabaseError(f"no row id for object {obj.key}")
            ranges.extend((r, object_id) for r in obj.ranges)
        if len(ranges) > BULK_ROWS:
            self.statements += 1
            param = json.dumps(
                [
                    (
                        r.stream_id,
                        r.start_offset,
                        r.end_offset,
                        i,
                        r.position,
                        r.size,
                        r.max_timestamp,
                    )
                    for r, i in ranges
                ]
            )
            conn.execute(_BULK_RANGES, (param,))
        elif ranges:
            self._run(conn, "range", [r.row(i) for r, i in ranges])
        latest = newest_producers(objects)
        if latest:
            self._run(conn, "producer", [p.row() for p in latest])
        aborted = [a.row() for obj in objects for a in obj.aborted]
        if aborted:
            self._run(conn, "aborted", aborted)
        done = [{"b_id": m} for obj in objects for m in obj.markers_done]
        if done:
            self._run(conn, "marker", done)
