"""The async repository over the metadata schema.

Every multi-row change is one transaction. Stream commits are fenced with
`UPDATE ... WHERE epoch = :epoch AND end_offset = :start` and a row-count check,
so a writer that lost its stream, or a commit out of order, changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

from sqlalchemy import (
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.expression import Exists

from shoal.meta import pg_commit, pg_swap, range_swap, sqlite_swap
from shoal.meta import schema as s
from shoal.meta.checkpoint import Checkpointer
from shoal.meta.params import in_
from shoal.meta.range_rows import RangeRows
from shoal.meta.range_swap import PreparedSwap, Swap
from shoal.meta.sqlite_commit import (
    SqliteCommitter,
    StreamRows,
    fenced_move,
    move_params,
    newest_producers,
    producer_upsert,
)
from shoal.meta.sqlite_swap import SwapChunk
from shoal.values import value

# Key of the PostgreSQL advisory lock held while the schema is created or migrated.
MIGRATION_LOCK = 0x5E0A1_5C4E


class MetaError(Exception):
    pass


class InvalidMetadataURL(MetaError):
    pass


class SchemaMissing(MetaError):
    """A read-only open found no Shoal metadata where it looked."""


class TopicExists(MetaError):
    pass


class TopicNotFound(MetaError):
    pass


class StreamFenced(MetaError):
    """The stream's epoch or end offset is not what the committer expected."""

    def __init__(self, stream_id: int, message: str) -> None:
        super().__init__(message)
        self.stream_id = stream_id


log = logging.getLogger("shoal.meta")

# range_rows on PostgreSQL (meta/range_rows.py): the objects' ids, their
# ranges' streams, and the ranges, every column an integer, through COPY.
_OBJECT_IDS = text("SELECT id, key FROM objects WHERE key = ANY(:keys)")
_RANGE_STREAMS = text(
    "SELECT coalesce(CAST(json_agg(DISTINCT stream_id) AS TEXT), '[]')"
    " FROM stream_ranges WHERE object_id = ANY(:ids)"
)
_RANGES_COPY = (
    "SELECT stream_id, start_offset, end_offset, object_id, position, size, max_timestamp"
    " FROM stream_ranges WHERE object_id = ANY($1::INTEGER[])"
)


@dataclass(frozen=True, slots=True)
class PartitionRecord:
    partition: int
    stream_id: int
    leader_epoch: int
    owner: int | None = None  # cluster mode: the broker that writes it


@dataclass(frozen=True, slots=True)
class TopicRecord:
    id: int
    name: str
    topic_uuid: uuid.UUID
    configs: dict[str, str]
    partitions: list[PartitionRecord] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CatalogRead:
    """What `MetaStore.topics_if_changed` read, in one snapshot. `sums` is
    each topic's own digest by id (PostgreSQL; empty on SQLite). When
    `partial`, `topics` holds only the topics new or changed since the
    digests the caller knew: any other topic in `sums` is as it was, and
    one not in `sums` is gone."""

    digest: str | None
    topics: list[TopicRecord]
    sums: dict[int, str] = field(default_factory=dict)
    partial: bool = False


@dataclass(frozen=True, slots=True)
class StreamRecord:
    id: int
    epoch: int
    start_offset: int
    end_offset: int


class RangeRecord(NamedTuple):
    """A stream's range: which offsets, in which object, where."""

    stream_id: int
    start_offset: int
    end_offset: int
    object_key: str
    position: int
    size: int
    max_timestamp: int


#: A RangeRecord's fields in a plain tuple: how compaction hands the engine a
#: swap's new ranges (a RangeRecord is one too). The engine keeps a stream's
#: ranges as columns, not tuples (storage/rangeindex.py).
Range = tuple[int, int, int, str, int, int, int]
R_START: Final = 1  # its start offset's index


@dataclass(frozen=True, slots=True)
class ObjectUsage:
    """A compacted object and how much of it ranges still refer to."""

    key: str
    size: int
    live: int  # bytes of the ranges that refer to it


@value
class RangeCommit:
    """One stream's part of a WAL object, to commit."""

    stream_id: int
    epoch: int
    start_offset: int
    end_offset: int
    position: int
    size: int
    max_timestamp: int

    def row(self, object_id: int) -> dict[str, Any]:
        """Its stream_ranges row (both commit paths write the same)."""
        return {
            "stream_id": self.stream_id,
            "start_offset": self.start_offset,
            "end_offset": self.end_offset,
            "object_id": object_id,
            "position": self.position,
            "size": self.size,
            "max_timestamp": self.max_timestamp,
        }


@dataclass(frozen=True, slots=True)
class NewObject:
    """An object's row to insert: one the metadata did not know (recovery.py),
    or a compaction's new one (sqlite_swap.py)."""

    key: str
    size: int
    created_ms: int
    node_id: int
    kind: str  # "wal", or a compacted kind: "set", "stream", "cleaned"


@dataclass(frozen=True, slots=True)
class ProducerRow:
    """One producer's state on one stream, as of a commit."""

    stream_id: int
    producer_id: int
    epoch: int
    batches: str
    last_timestamp_ms: int
    #: first offset of the producer's open transaction on the stream, -1 if none
    txn_first_offset: int = -1

    def row(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "producer_id": self.producer_id,
            "epoch": self.epoch,
            "batches": self.batches,
            "last_timestamp_ms": self.last_timestamp_ms,
            "txn_first_offset": self.txn_first_offset,
        }


@dataclass(frozen=True, slots=True)
class AbortedTxn:
    """An aborted transaction's span on one stream, from its first record to
    its abort marker: what read_committed fetches list so clients drop it."""

    stream_id: int
    producer_id: int
    first_offset: int
    last_offset: int

    def row(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "producer_id": self.producer_id,
            "first_offset": self.first_offset,
            "last_offset": self.last_offset,
        }


@dataclass(frozen=True, slots=True)
class OpenedStream:
    """A stream just taken, with what its writer needs to serve it."""

    record: StreamRecord
    ranges: list[RangeRecord] = field(default_factory=list)
    producers: list[ProducerRow] = field(default_factory=list)
    #: aborted transactions ending at or after the stream's start, in marker order
    aborted: list[AbortedTxn] = field(default_factory=list)


@value
class ObjectCommit:
    """One uploaded object, its stream ranges and producer state, to commit."""

    key: str
    size: int
    ranges: list[RangeCommit]
    producers: list[ProducerRow] = field(default_factory=list)
    aborted: list[AbortedTxn] = field(default_factory=list)
    #: txn_markers rows whose markers this object holds: deleted with the commit
    markers_done: list[int] = field(default_factory=list)


#: A PostgreSQL connection whose sent data stays unacknowledged this long is
#: dropped (both ends). Longer than the part of its lease a broker trusts
#: (0.75 of broker.session.timeout.ms, 6 s by default), so by the time a
#: cut broker's query fails it has already stopped acknowledging writes.
PG_TCP_USER_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 5.0
#: PostgreSQL 17+ ends a session whose transaction is this old. A broker cut
#: off in the middle of a request (part of a Parse/Bind/Execute pipeline
#: arrived, its Sync did not) leaves a backend that is "active" in
#: ClientRead, not idle: idle_in_transaction_session_timeout never fires and
#: its row locks (a WAL commit's streams rows) block the controller's moves
#: for as long as the connection lives. Far above any transaction of a
#: running broker; `shoal meta rebuild` lifts it for its one long one.
PG_TRANSACTION_TIMEOUT_MS = 30_000


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***: for every message and log line."""
    return re.sub(r"(://[^/@:]*:)[^/]*@", r"\1***@", url)


def engine_url(url: str, create: bool = True) -> str:
    """Map user URLs (sqlite:///path, postgresql://...) to async drivers;
    with `create`, make the SQLite file's directory."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise InvalidMetadataURL(f"invalid metadata URL {redact_url(url)!r}: {exc}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
        if create and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    elif backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise InvalidMetadataURL(
            f"unsupported metadata URL {redact_url(url)!r}: use sqlite:///PATH or postgresql://..."
        )
    return parsed.render_as_string(hide_password=False)


def now_ms() -> int:
    return int(time.time() * 1000)


def _referenced() -> Exists:
    """True for an object some range still refers to: what scheduling,
    the cleaner's last check and forgetting a deleted object all ask."""
    o, r = s.objects, s.stream_ranges
    return select(r.c.object_id).where(r.c.object_id == o.c.id).exists()


class MetaStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        # SQLite has one writer; serialising here avoids "database is locked".
        self._write_lock = asyncio.Lock()
        #: what rewrites or deletes ranges (a range swap, a trim, a topic's
        #: deletion) holds this for its whole run, before the write lock; a
        #: PostgreSQL swap holds it alone, so WAL commits go on beside it
        self._ranges_lock = asyncio.Lock()
        self.delete_grace_ms = 60_000  # how long replaced objects stay readable
        #: SQLite: most old ranges one transaction of a range swap replaces;
        #: every WAL commit waiting behind one (8,192: 35-77 ms, 2,048:
        #: about 10 ms, under a fleet's load)
        self.swap_chunk_ranges = 2048
        self._swapping: set[int] = set()  # objects of swaps still in progress
        self.checkpointer: Checkpointer | None = None
        self._producer_upsert: Any = None  # see upsert_producers
        #: WAL commits in one thread hop (SQLite files; see sqlite_commit.py)
        self.sqlite_commits: SqliteCommitter | None = None
        #: the same pool, its connections in autocommit (see _statements)
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @classmethod
    async def open(cls, url: str, *, create: bool = True) -> MetaStore:
        """Open, creating or migrating the schema. With create=False (read-only
        commands) nothing is created: a missing SQLite file or a database
        without Shoal's schema raises SchemaMissing naming what is missing."""
        connect_args: dict[str, Any] = {}
        target = make_url(engine_url(url, create))
        if not create and target.get_backend_name() == "sqlite":
            path = target.database
            exists = bool(path) and await asyncio.to_thread(Path(str(path)).is_file)
            if not exists:
                raise SchemaMissing(f"no metadata database at {path} (no Shoal data there)")
        if target.get_backend_name() == "postgresql":
            # A broker paused (SIGSTOP) inside a transaction must not hold row
            # locks that the controller needs to fence it: PostgreSQL ends
            # such sessions, and the paused commit then fails.
            # A link cut silently (no reset, packets vanish) must not hang a
            # session for TCP's retransmission backoff (minutes): data
            # unacknowledged for PG_TCP_USER_TIMEOUT_MS ends the connection,
            # on the server (its locks go) and on the broker (its query
            # fails and the next one reconnects), and a connect gives up
            # after PG_CONNECT_TIMEOUT_S.
            connect_args["server_settings"] = {
                "idle_in_transaction_session_timeout": "2000",
                "application_name": "shoal",
                "tcp_user_timeout": str(PG_TCP_USER_TIMEOUT_MS),
            }
            connect_args["timeout"] = PG_CONNECT_TIMEOUT_S
        engine = create_async_engine(target, connect_args=connect_args)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            event.listen(engine.sync_engine, "connect", _pg_session)
        store = cls(engine)
        try:
            if create:
                await store.migrate()
            else:
                await store._check_schema(url)
        except MetaError:
            await engine.dispose()
            raise
        except Exception as exc:
            await engine.dispose()
            raise MetaError(
                f"cannot open metadata store {redact_url(url)!r}: {redact_url(str(exc))}"
            ) from exc
        path = target.database
        if store.is_sqlite and path and path != ":memory:" and not path.startswith("file:"):
            store.sqlite_commits = SqliteCommitter(path, _sqlite_pragmas)
            if create:
                store.checkpointer = Checkpointer(path)
                store.checkpointer.start()
        return store

    async def close(self) -> None:
        if self.checkpointer is not None:
            await self.checkpointer.stop()
        if self.sqlite_commits is not None:
            async with self._write_lock:  # a commit in its thread finishes first
                await asyncio.to_thread(self.sqlite_commits.close)
        await self.engine.dispose()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def _ranges_tx(self) -> AsyncIterator[AsyncConnection]:
        """`_tx` for what deletes ranges: after any swap under way."""
        async with self._ranges_lock, self._tx() as conn:
            yield conn

    @asynccontextmanager
    async def _statements(self, write: bool) -> AsyncIterator[AsyncConnection]:
        """A connection for operations made of statements that each stand
        alone (the lease's renewal and compare-and-sets, reads of one
        table): on PostgreSQL each statement commits by itself, so no
        transaction stays open while the task waits for the event loop. A
        loop stalled past idle_in_transaction_session_timeout (a loaded
        machine) got the server to end such a session between BEGIN and the
        next statement; asyncpg, idle, read the FATAL and the heartbeat
        failed with "cannot switch to state 11; another operation (2) is in
        progress". Also one round trip instead of three, and no wait for the
        write lock (it orders SQLite's writers; PostgreSQL orders these
        itself). SQLite is unchanged: writes in a transaction under the
        write lock, reads on a plain connection."""
        if self.is_sqlite:
            async with self._tx() if write else self.engine.connect() as conn:
                yield conn
            return
        async with self._autocommit.connect() as conn:
            yield conn

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """One write transaction, serialised with the WAL's commits: for the
        few writers of many rows at once outside this module (adopting
        objects at start, `shoal meta rebuild`)."""
        return self._tx()

    async def migrate(self) -> int:
        """Create or upgrade the schema; returns the version now in place.

        Brokers of a new cluster start together: on PostgreSQL a transaction
        advisory lock makes them migrate one after another (concurrent CREATE
        TABLEs collide on PostgreSQL's catalog, not on our tables)."""
        async with self._tx() as conn:
            if not self.is_sqlite:
                await conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK)))
            await conn.run_sync(s.metadata.create_all)
            await conn.run_sync(_add_missing_columns)
            version = (await conn.execute(select(s.schema_version.c.version))).scalar()
            if version is None:
                await conn.execute(insert(s.schema_version).values(version=s.SCHEMA_VERSION))
                version = s.SCHEMA_VERSION
            elif version > s.SCHEMA_VERSION:
                raise MetaError(
                    f"metadata schema v{version} is newer than this Shoal (v{s.SCHEMA_VERSION})"
                )
            cid = (
                await conn.execute(select(s.cluster.c.value).where(s.cluster.c.key == "cluster_id"))
            ).scalar()
            if cid is None:
                await conn.execute(
                    insert(s.cluster).values(key="cluster_id", value=uuid.uuid4().hex[:22])
                )
        return int(version)

    async def _check_schema(self, url: str) -> None:
        def has_schema(conn: Any) -> bool:
            return bool(inspect(conn).has_table(s.schema_version.name))

        async with self.engine.connect() as conn:
            if not await conn.run_sync(has_schema):
                raise SchemaMissing(
                    f"no Shoal schema in {redact_url(url)} (no schema_version table: "
                    "no broker has run on this database)"
                )
            version = (await conn.execute(select(s.schema_version.c.version))).scalar()
        if version is not None and version > s.SCHEMA_VERSION:
            raise MetaError(
                f"metadata schema v{version} is newer than this Shoal (v{s.SCHEMA_VERSION})"
            )

    async def cluster_id(self) -> str:
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(select(s.cluster.c.value).where(s.cluster.c.key == "cluster_id"))
            ).scalar_one()
        return str(value)

    # topics -------------------------------------------------------------

    async def create_topic(
        self, name: str, num_partitions: int, configs: dict[str, str]
    ) -> TopicRecord:
        return (await self.create_topics([(name, num_partitions, configs)]))[0]

    async def create_topics(
        self, specs: Sequence[tuple[str, int, dict[str, str]]]
    ) -> list[TopicRecord]:
        """Create every topic of `specs` (name, partitions, configs) in one
        transaction, with a few statements for all of them: a CreateTopics
        of 500 topics was 500 transactions of five statements, each a round
        trip on PostgreSQL. TopicExists if any name is taken (none is
        created)."""
        if not specs:
            return []
        t = s.topics
        uuids = [uuid.uuid4() for _ in specs]
        try:
            async with self._tx() as conn:
                created = now_ms()
                # RETURNING without sort_by_parameter_order: on SQLite that
                # option makes SQLAlchemy insert one row per statement (3,000
                # statements for 500 topics of 5 partitions); the rows are
                # matched by name instead.
                result = await conn.execute(
                    insert(t).returning(t.c.id, t.c.name),
                    [
                        {"name": name, "topic_uuid": str(u), "created_ms": created}
                        for (name, _n, _c), u in zip(specs, uuids, strict=True)
                    ],
                )
                by_name = {row.name: int(row.id) for row in result}
                ids = [by_name[name] for name, _n, _c in specs]
                configs = [
                    {"topic_id": tid, "key": k, "value": v}
                    for tid, (_name, _n, cfg) in zip(ids, specs, strict=True)
                    for k, v in cfg.items()
                ]
                if configs:
                    await conn.execute(insert(s.topic_configs), configs)
                parts = await self._add_partitions_many(
                    conn, [(tid, 0, n) for tid, (_name, n, _c) in zip(ids, specs, strict=True)]
                )
        except IntegrityError as exc:
            raise TopicExists(", ".join(name for name, _n, _c in specs)) from exc
        return [
            TopicRecord(tid, name, u, dict(cfg), p)
            for tid, (name, _n, cfg), u, p in zip(ids, specs, uuids, parts, strict=True)
        ]

    async def _add_partitions(
        self, conn: AsyncConnection, topic_id: int, first: int, count: int
    ) -> list[PartitionRecord]:
        return (await self._add_partitions_many(conn, [(topic_id, first, count)]))[0]

    async def _add_partitions_many(
        self, conn: AsyncConnection, todo: Sequence[tuple[int, int, int]]
    ) -> list[list[PartitionRecord]]:
        """New partitions for each (topic id, first partition, count): two
        statements in all, not two per partition or per topic."""
        total = sum(count for _t, _f, count in todo)
        if total <= 0:
            return [[] for _ in todo]
        st = s.streams
        # The new streams are alike, so any of them may go to any partition:
        # no need for RETURNING in parameter order (see create_topics).
        result = await conn.execute(
            insert(st).returning(st.c.id),
            [{"epoch": 0, "start_offset": 0, "end_offset": 0, "deleted": False}] * total,
        )
        stream_ids = iter(sorted(int(row.id) for row in result))
        out = [
            [PartitionRecord(index, next(stream_ids), 0) for index in range(first, first + count)]
            for _t, first, count in todo
        ]
        await conn.execute(
            insert(s.partitions),
            [
                {
                    "topic_id": topic_id,
                    "partition": p.partition,
                    "stream_id": p.stream_id,
                    "leader_epoch": 0,
                }
                for (topic_id, _f, _c), parts in zip(todo, out, strict=True)
                for p in parts
            ],
        )
        return out

    async def add_partitions(self, name: str, new_total: int) -> TopicRecord:
        return (await self.add_partitions_many([(name, new_total)]))[0]

    async def add_partitions_many(self, wanted: Sequence[tuple[str, int]]) -> list[TopicRecord]:
        """Grow each (topic, new total) in one transaction, with a few
        statements for all of them; TopicNotFound if any is missing (none
        grown). A CreatePartitions of 500 topics was 500 transactions."""
        async with self._tx() as conn:
            topics = {t.name: t for t in await self._load_topics(conn, [n for n, _ in wanted])}
            missing = [n for n, _ in wanted if n not in topics]
            if missing:
                raise TopicNotFound(", ".join(missing))
            grown = [topics[n] for n, _ in wanted]
            added = await self._add_partitions_many(
                conn,
                [
                    (t.id, len(t.partitions), total - len(t.partitions))
                    for t, (_n, total) in zip(grown, wanted, strict=True)
                ],
            )
            for t, parts in zip(grown, added, strict=True):
                t.partitions.extend(parts)
        return grown

    async def delete_topic(self, name: str) -> TopicRecord:
        """Remove the topic (TopicNotFound if there is none); see delete_topics."""
        found = await self.delete_topics([name])
        if not found:
            raise TopicNotFound(name)
        return found[0]

    async def delete_topics(self, names: Sequence[str]) -> list[TopicRecord]:
        """Remove those of these topics that exist (returned), in one
        transaction with a few statements for all of them: their streams
        are marked deleted so that their objects can be reclaimed by the
        cleaner. One topic at a time, a DeleteTopics of 500 was 500
        transactions of a dozen statements and a scan of the objects each."""
        async with self._ranges_tx() as conn:
            topics = await self._load_topics(conn, names)
            if not topics:
                return []
            ids = [p.stream_id for t in topics for p in t.partitions]
            for chunk in _id_chunks(ids):
                await conn.execute(
                    update(s.streams).where(in_(s.streams.c.id, chunk)).values(deleted=True)
                )
                await conn.execute(
                    delete(s.stream_ranges).where(in_(s.stream_ranges.c.stream_id, chunk))
                )
                await conn.execute(
                    delete(s.producer_states).where(in_(s.producer_states.c.stream_id, chunk))
                )
            await self._schedule_unreferenced(conn, self.delete_grace_ms)
            for chunk in _id_chunks([t.id for t in topics]):
                await conn.execute(delete(s.partitions).where(in_(s.partitions.c.topic_id, chunk)))
                await conn.execute(
                    delete(s.topic_configs).where(in_(s.topic_configs.c.topic_id, chunk))
                )
                await conn.execute(delete(s.topics).where(in_(s.topics.c.id, chunk)))
        return topics

    async def set_topic_configs(
        self, name: str, set_: dict[str, str], remove: Iterable[str] = (), replace: bool = False
    ) -> dict[str, str]:
        return (await self.set_topic_configs_many([(name, set_, list(remove), replace)]))[0]

    async def set_topic_configs_many(
        self, changes: Sequence[tuple[str, dict[str, str], Sequence[str], bool]]
    ) -> list[dict[str, str]]:
        """Change many topics' configs (name, set, remove, replace all) in one
        transaction with a few statements; each one's configs now.
        TopicNotFound if any is missing (none changed). One topic at a time,
        an AlterConfigs of 500 topics was 500 transactions."""
        async with self._tx() as conn:
            topics = {t.name: t for t in await self._load_topics(conn, [c[0] for c in changes])}
            missing = [c[0] for c in changes if c[0] not in topics]
            if missing:
                raise TopicNotFound(", ".join(missing))
            now: dict[str, dict[str, str]] = {}  # a later change of a topic builds on this
            out: list[dict[str, str]] = []
            for name, set_, remove, replace in changes:
                cfg = {} if replace else dict(now.get(name, topics[name].configs))
                for key in remove:
                    cfg.pop(key, None)
                cfg.update(set_)
                now[name] = cfg
                out.append(cfg)
            for chunk in _id_chunks(sorted(topics[name].id for name in now)):
                await conn.execute(
                    delete(s.topic_configs).where(in_(s.topic_configs.c.topic_id, chunk))
                )
            rows = [
                {"topic_id": topics[name].id, "key": k, "value": v}
                for name, cfg in now.items()
                for k, v in cfg.items()
            ]
            if rows:
                await conn.execute(insert(s.topic_configs), rows)
        return out

    async def _topic(self, conn: AsyncConnection, name: str) -> TopicRecord:
        topics = await self._load_topics(conn, [name])
        if not topics:
            raise TopicNotFound(name)
        return topics[0]

    async def find_topics(self, names: Sequence[str]) -> list[TopicRecord]:
        """Those of these topics that exist."""
        async with self.engine.connect() as conn:
            return await self._load_topics(conn, names)

    async def list_topics(self) -> list[TopicRecord]:
        async with self.engine.connect() as conn:
            return await self._load_topics(conn, None)

    async def topics_if_changed(
        self, digest: str | None, known: Mapping[int, str] | None = None
    ) -> CatalogRead | None:
        """The topics, unless the catalog still has `digest`: then None.

        A cluster's brokers reload the catalog 4 times a second to see new
        topics and owners; with 2,000 topics and 10,000 partitions each load
        cost 44 ms of the event loop, mostly to find nothing had changed. On
        PostgreSQL the server digests the rows instead, in the same snapshot
        as the read (so a digest always matches what was read, and a change
        made and undone since still counts as no change). When it changed,
        the server digests each topic too, and given the caller's `known`
        digests only the topics whose digest differs are read: while topics
        are being made, each refresh read every topic again (50 ms for
        10,000 partitions, up to 4 times a second). SQLite has no cluster
        and no digest: always read every topic (digest None)."""
        if self.is_sqlite:
            return CatalogRead(None, await self.list_topics())
        async with self.engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            now = (await conn.execute(_CATALOG_DIGEST)).scalar_one()
            if digest is not None and now == digest:
                return None
            # Three arrays in one row: with 20,000 topics, a row per topic
            # cost 48 ms of the event loop to build, the arrays 5.
            ids, names, digests = ((x or []) for x in (await conn.execute(_TOPIC_DIGESTS)).one())
            sums = dict(zip(ids, digests, strict=True))
            if not known:
                return CatalogRead(now, await self._load_topics(conn, None), sums)
            changed = [n for i, n, d in zip(ids, names, digests, strict=True) if known.get(i) != d]
            topics = await self._load_topics(conn, changed) if changed else []
            return CatalogRead(now, topics, sums, partial=True)

    async def _load_topics(
        self, conn: AsyncConnection, names: Sequence[str] | None
    ) -> list[TopicRecord]:
        """These topics (those that exist), or every topic (None)."""
        if names is None:
            return await self._load_topic_rows(conn, None)
        out: list[TopicRecord] = []
        for chunk in _id_chunks(sorted(set(names))):
            out.extend(await self._load_topic_rows(conn, chunk))
        return out

    async def _load_topic_rows(
        self, conn: AsyncConnection, names: list[str] | None
    ) -> list[TopicRecord]:
        q = select(s.topics)
        if names is not None:
            q = q.where(in_(s.topics.c.name, names))
        rows = (await conn.execute(q.order_by(s.topics.c.name))).all()
        if not rows:
            return []
        ids = [r.id for r in rows]
        cfgs: dict[int, dict[str, str]] = {i: {} for i in ids}
        parts: dict[int, list[PartitionRecord]] = {i: [] for i in ids}
        configs = select(s.topic_configs)
        partitions = select(s.partitions).order_by(
            s.partitions.c.topic_id, s.partitions.c.partition
        )
        # For every topic (names None) the tables are read whole: an IN list of
        # every topic's id was rendered on the event loop at each refresh of a
        # cluster's catalog (2,000 topics: 50 -> 44 ms each).
        if names is not None:
            configs = configs.where(in_(s.topic_configs.c.topic_id, ids))
            partitions = partitions.where(in_(s.partitions.c.topic_id, ids))
        for r in await conn.execute(configs):
            if r.topic_id in cfgs:  # a topic created since the first read: next time
                cfgs[r.topic_id][r.key] = r.value
        for r in await conn.execute(partitions):
            if r.topic_id not in parts:
                continue
            parts[r.topic_id].append(
                PartitionRecord(r.partition, r.stream_id, r.leader_epoch, r.owner_node)
            )
        return [
            TopicRecord(r.id, r.name, uuid.UUID(r.topic_uuid), cfgs[r.id], parts[r.id])
            for r in rows
        ]

    # streams ------------------------------------------------------------

    async def open_stream(self, stream_id: int, owner: int | None = None) -> StreamRecord:
        """Take the stream: bump its epoch so any previous writer is fenced.

        In cluster mode `owner` is this broker's node id, and the stream is
        taken only while its partition is assigned to that node, so a broker
        with a stale view cannot fence the rightful owner (StreamFenced).
        """
        st, p = s.streams, s.partitions
        async with self._tx() as conn:
            q = update(st).where(st.c.id == stream_id)
            if owner is not None:
                q = q.where(
                    select(p.c.stream_id)
                    .where(p.c.stream_id == stream_id, p.c.owner_node == owner)
                    .exists()
                )
            res = await conn.execute(q.values(epoch=st.c.epoch + 1))
            row = (await conn.execute(select(st).where(st.c.id == stream_id))).one_or_none()
        if row is None:
            raise MetaError(f"stream {stream_id} does not exist")
        if res.rowcount != 1:
            raise StreamFenced(stream_id, f"stream {stream_id} is not assigned to node {owner}")
        return StreamRecord(row.id, row.epoch, row.start_offset, row.end_offset)

    async def open_streams(
        self, stream_ids: Sequence[int], owner: int | None = None
    ) -> dict[int, OpenedStream | MetaError]:
        """Take many streams at once (see open_stream), with their ranges and
        producer state: three statements per chunk of ids for the whole batch,
        not three round trips per stream (a broker's first writes after a
        restart touch thousands of streams). A stream that does not exist
        maps to MetaError, one assigned elsewhere to StreamFenced."""
        st, p, r, o, ps = s.streams, s.partitions, s.stream_ranges, s.objects, s.producer_states
        out: dict[int, OpenedStream | MetaError] = {}
        async with self._tx() as conn:
            for chunk in _id_chunks(stream_ids):
                q = update(st).where(in_(st.c.id, chunk))
                if owner is not None:
                    q = q.where(
                        select(p.c.stream_id)
                        .where(p.c.stream_id == st.c.id, p.c.owner_node == owner)
                        .exists()
                    )
                taken = {
                    row.id: OpenedStream(
                        StreamRecord(row.id, row.epoch, row.start_offset, row.end_offset)
                    )
                    for row in await conn.execute(
                        q.values(epoch=st.c.epoch + 1).returning(
                            st.c.id, st.c.epoch, st.c.start_offset, st.c.end_offset
                        )
                    )
                }
                if taken:
                    ids = list(taken)
                    for row in await conn.execute(
                        select(r, o.c.key)
                        .join(o, o.c.id == r.c.object_id)
                        .where(in_(r.c.stream_id, ids))
                        .order_by(r.c.stream_id, r.c.start_offset)
                    ):
                        opened = taken[row.stream_id]
                        if row.end_offset > opened.record.start_offset:
                            opened.ranges.append(
                                RangeRecord(
                                    row.stream_id,
                                    row.start_offset,
                                    row.end_offset,
                                    row.key,
                                    row.position,
                                    row.size,
                                    row.max_timestamp,
                                )
                            )
                    for row in await conn.execute(select(ps).where(in_(ps.c.stream_id, ids))):
                        taken[row.stream_id].producers.append(
                            ProducerRow(
                                row.stream_id,
                                row.producer_id,
                                row.epoch,
                                row.batches,
                                row.last_timestamp_ms,
                                row.txn_first_offset,
                            )
                        )
                    at = s.aborted_txns
                    for row in await conn.execute(
                        select(at).where(in_(at.c.stream_id, ids)).order_by(at.c.last_offset)
                    ):
                        opened = taken[row.stream_id]
                        if row.last_offset >= opened.record.start_offset:
                            opened.aborted.append(
                                AbortedTxn(
                                    row.stream_id,
                                    row.producer_id,
                                    row.first_offset,
                                    row.last_offset,
                                )
                            )
                out.update(taken)
                left = [sid for sid in chunk if sid not in taken]
                if left:
                    exists = {
                        row.id
                        for row in await conn.execute(select(st.c.id).where(in_(st.c.id, left)))
                    }
                    for sid in left:
                        out[sid] = (
                            StreamFenced(sid, f"stream {sid} is not assigned to node {owner}")
                            if sid in exists
                            else MetaError(f"stream {sid} does not exist")
                        )
        return out

    async def read_stream(self, stream_id: int) -> StreamRecord:
        """The stream's committed bounds, without taking it (read replicas)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(s.streams).where(s.streams.c.id == stream_id))
            ).one_or_none()
        if row is None:
            raise MetaError(f"stream {stream_id} does not exist")
        return StreamRecord(row.id, row.epoch, row.start_offset, row.end_offset)

    async def load_ranges(self, stream_id: int, from_offset: int = 0) -> list[RangeRecord]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(s.stream_ranges, s.objects.c.key)
                .join(s.objects, s.objects.c.id == s.stream_ranges.c.object_id)
                .where(
                    s.stream_ranges.c.stream_id == stream_id,
                    s.stream_ranges.c.end_offset > from_offset,
                )
                .order_by(s.stream_ranges.c.start_offset)
            )
            return [
                RangeRecord(
                    r.stream_id,
                    r.start_offset,
                    r.end_offset,
                    r.key,
                    r.position,
                    r.size,
                    r.max_timestamp,
                )
                for r in rows
            ]

    async def commit_objects(
        self,
        objects: Sequence[ObjectCommit],
        node_id: int,
        before: Callable[[], None] | None = None,
    ) -> None:
        """Record uploaded objects and advance each stream's end, atomically
        (a group commit of several WAL objects, in order). `before`, if
        given, runs first in a worker thread and its error fails the commit:
        the WAL writes small objects to a local store there (on a SQLite file,
        in the commit's own thread: one hop for object and metadata).

        Raises StreamFenced (and changes nothing) if any stream's epoch or end
        offset is not what the writer expects. On a SQLite file the same
        statements run in one call on a connection of their own
        (sqlite_commit.py): through the engine they cost ~3 ms of CPU per
        commit, paid every few batches by an idempotent producer.
        """
        # One end-offset move per stream across the whole group.
        moves: dict[int, list[int]] = {}  # stream -> [epoch, first start, final end]
        for obj in objects:
            for r in obj.ranges:
                m = moves.get(r.stream_id)
                if m is None:
                    moves[r.stream_id] = [r.epoch, r.start_offset, r.end_offset]
                elif m[2] == r.start_offset:
                    m[2] = r.end_offset
                else:
                    raise StreamFenced(r.stream_id, f"stream {r.stream_id}: ranges not contiguous")
        created = now_ms()
        if self.sqlite_commits is not None:
            async with self._write_lock:
                seen = await self.sqlite_commits.commit(moves, objects, node_id, created, before)
            if seen is not None:
                raise _fenced(moves, seen)
            return
        if before is not None:
            await asyncio.to_thread(before)
        if not self.is_sqlite:
            # One statement, one round trip, no write lock: PostgreSQL
            # orders writers itself (pg_commit.py).
            bound = pg_commit.params(moves, objects, newest_producers(objects), node_id, created)
            async with self._autocommit.connect() as conn:
                if await pg_commit.commit(conn, bound):
                    return
                found = await self._stream_rows(conn, list(moves))
            raise _fenced(moves, found, moved=False)
        async with self._tx() as conn:
            if moves and not await self._move_ends(conn, moves):
                await self._raise_fenced(conn, moves)
            ids = await self._insert_objects(conn, objects, node_id, created)
            rows = [r.row(ids[obj.key]) for obj in objects for r in obj.ranges]
            if rows:
                await conn.execute(insert(s.stream_ranges), rows)
            latest = newest_producers(objects)
            if latest:
                await self.upsert_producers(conn, latest)
            aborted = [a.row() for obj in objects for a in obj.aborted]
            if aborted:
                await conn.execute(insert(s.aborted_txns), aborted)
            done = [m for obj in objects for m in obj.markers_done]
            if done:
                await conn.execute(delete(s.txn_markers).where(in_(s.txn_markers.c.id, done)))

    async def _insert_objects(
        self, conn: AsyncConnection, objects: Sequence[ObjectCommit], node_id: int, created: int
    ) -> dict[str, int]:
        """Rows for a group commit's WAL objects on an in-memory SQLite
        database (a file commits in sqlite_commit.py, PostgreSQL in
        pg_commit.py); key -> id."""
        o = s.objects
        rows = [
            {
                "key": obj.key,
                "size": obj.size,
                "created_ms": created,
                "node_id": node_id,
                "kind": "wal",
            }
            for obj in objects
        ]
        stmt = insert(o).values(rows).returning(o.c.id, o.c.key)
        return {row.key: int(row.id) for row in await conn.execute(stmt)}

    async def _move_ends(self, conn: AsyncConnection, moves: dict[int, list[int]]) -> bool:
        """Advance every stream's end offset, fenced by epoch and expected
        end, on an in-memory SQLite database (one executemany; its row
        counts are exact). True if every stream moved."""
        res = await conn.execute(fenced_move(), move_params(moves))
        return bool(res.rowcount == len(moves))

    async def _raise_fenced(self, conn: AsyncConnection, moves: dict[int, list[int]]) -> None:
        """Find which stream a group commit could not move, then abort. Runs
        after the moves inside their transaction: a stream that moved is at
        its new end, so one that is not is the one that was fenced."""
        raise _fenced(moves, await self._stream_rows(conn, list(moves)))

    async def _stream_rows(self, conn: AsyncConnection, ids: list[int]) -> StreamRows:
        """Epoch, end and deleted flag of these streams."""
        st = s.streams
        rows: StreamRows = {}
        for chunk in _id_chunks(ids):
            for row in await conn.execute(
                select(st.c.id, st.c.epoch, st.c.end_offset, st.c.deleted).where(
                    in_(st.c.id, chunk)
                )
            ):
                rows[row.id] = (row.epoch, row.end_offset, bool(row.deleted))
        return rows

    async def commit_object(
        self,
        key: str,
        size: int,
        node_id: int,
        ranges: Sequence[RangeCommit],
        producers: Sequence[ProducerRow] = (),
    ) -> None:
        """Commit one object (see commit_objects)."""
        await self.commit_objects([ObjectCommit(key, size, list(ranges), list(producers))], node_id)

    async def upsert_producers(self, conn: AsyncConnection, rows: list[ProducerRow]) -> None:
        """Insert or update producer states: one INSERT ... ON CONFLICT DO
        UPDATE for all of them (both SQLite and PostgreSQL speak it)."""
        stmt = self._producer_upsert
        if stmt is None:
            # Built once: `excluded` and the statement's construction cost
            # about 1 ms of CPU per commit when made anew each time.
            stmt = self._producer_upsert = producer_upsert(
                sqlite_insert if self.is_sqlite else pg_insert
            )
        await conn.execute(stmt, [p.row() for p in rows])

    async def load_producers(self, stream_id: int) -> list[ProducerRow]:
        t = s.producer_states
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(t).where(t.c.stream_id == stream_id))
            return [
                ProducerRow(
                    r.stream_id,
                    r.producer_id,
                    r.epoch,
                    r.batches,
                    r.last_timestamp_ms,
                    r.txn_first_offset,
                )
                for r in rows
            ]

    async def load_aborted(self, stream_id: int, from_offset: int = 0) -> list[AbortedTxn]:
        """Aborted transactions of a stream that end at or after `from_offset`,
        in marker order."""
        t = s.aborted_txns
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(t)
                .where(t.c.stream_id == stream_id, t.c.last_offset >= from_offset)
                .order_by(t.c.last_offset)
            )
            return [
                AbortedTxn(r.stream_id, r.producer_id, r.first_offset, r.last_offset) for r in rows
            ]

    async def expire_producers(self, older_than_ms: int) -> int:
        """Forget producers idle since before the cut-off
        (producer.id.expiration.ms), except those in an open transaction."""
        t = s.producer_states
        async with self._tx() as conn:
            res = await conn.execute(
                delete(t).where(t.c.last_timestamp_ms < older_than_ms, t.c.txn_first_offset < 0)
            )
        return int(res.rowcount or 0)

    async def allocate_counter(self, name: str, count: int) -> int:
        """Reserve `count` values of a named counter; returns the first."""
        async with self._tx() as conn:
            value = await self.bump_counter(conn, name, count)
        return value - count

    async def read_counter(self, name: str, conn: AsyncConnection | None = None) -> int:
        """A named counter's value (0 before its first bump): the version
        counters brokers poll to reload ACLs, quotas and credentials."""
        t = s.counters
        query = select(t.c.value).where(t.c.name == name)
        if conn is not None:
            return int((await conn.execute(query)).scalar() or 0)
        async with self.engine.connect() as own:
            return int((await own.execute(query)).scalar() or 0)

    async def bump_counter(self, conn: AsyncConnection, name: str, count: int) -> int:
        """Add `count` to a named counter (created at 0) inside `conn`'s
        transaction; returns the new value. The row is created with ON
        CONFLICT DO NOTHING: brokers starting together would otherwise both
        insert it and one would fail on the primary key."""
        t = s.counters
        dialect_insert = sqlite_insert if self.is_sqlite else pg_insert
        await conn.execute(
            dialect_insert(t)
            .values(name=name, value=0)
            .on_conflict_do_nothing(index_elements=[t.c.name])
        )
        await conn.execute(update(t).where(t.c.name == name).values(value=t.c.value + count))
        value = (await conn.execute(select(t.c.value).where(t.c.name == name))).scalar_one()
        return int(value)

    async def trim_stream(self, stream_id: int, new_start: int, grace_ms: int = 0) -> int:
        """Move a stream's start offset forward (never back); returns it.

        Ranges wholly below the new start go, and objects left without any
        range are scheduled for deletion after the grace period.
        """
        async with self._ranges_tx() as conn:
            await conn.execute(
                update(s.streams)
                .where(s.streams.c.id == stream_id, s.streams.c.start_offset < new_start)
                .values(start_offset=new_start)
            )
            row = (
                await conn.execute(
                    select(s.streams.c.start_offset).where(s.streams.c.id == stream_id)
                )
            ).scalar_one()
            r = s.stream_ranges
            await conn.execute(delete(r).where(r.c.stream_id == stream_id, r.c.end_offset <= row))
            a = s.aborted_txns
            await conn.execute(delete(a).where(a.c.stream_id == stream_id, a.c.last_offset < row))
            await self._schedule_unreferenced(conn, grace_ms)
        return int(row)

    async def _schedule_unreferenced(self, conn: AsyncConnection, grace_ms: int) -> None:
        """Objects no range refers to are deleted after `grace_ms`, except
        those of chunked swaps under way (replace_ranges)."""
        o = s.objects
        q = update(o).where(o.c.delete_after_ms.is_(None), ~_referenced())
        if self._swapping:
            q = q.where(o.c.id.not_in(sorted(self._swapping)))
        await conn.execute(q.values(delete_after_ms=now_ms() + grace_ms))

    async def objects_due(self, at_ms: int) -> list[str]:
        """Keys of objects scheduled for deletion whose grace period is over
        and that no range refers to: the last check before the cleaner
        deletes bytes. What writes ranges into an object keeps it from
        being scheduled first (a chunked swap, recovery), so a scheduled
        object with ranges is a bug or a hand repair somewhere; it is taken
        back (unscheduled, to be scheduled afresh once unreferenced), not
        deleted under its readers."""
        o = s.objects
        due = (o.c.delete_after_ms.is_not(None), o.c.delete_after_ms <= at_ms)
        query = select(o.c.id, o.c.key, _referenced().label("referenced")).where(*due)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        back = [int(x.id) for x in rows if x.referenced]
        if back:
            async with self._tx() as conn:
                await conn.execute(
                    update(o)
                    .where(in_(o.c.id, back), *due, _referenced())
                    .values(delete_after_ms=None)
                )
            log.warning(
                "objects %s: scheduled for deletion but ranges refer to them: taken back", back
            )
        return [str(x.key) for x in rows if not x.referenced]

    async def forget_objects(self, keys: Sequence[str]) -> None:
        """Drop the rows of objects already deleted from the store."""
        if not keys:
            return
        o = s.objects
        async with self._tx() as conn:
            await conn.execute(delete(o).where(in_(o.c.key, keys), ~_referenced()))

    async def replace_ranges(
        self,
        key: str,
        size: int,
        node_id: int,
        kind: str,
        replacements: Sequence[Replacement],
        grace_ms: int,
        sources: Sequence[str] = (),
    ) -> list[int]:
        """Swap streams' ranges for those of a compacted object, each
        stream's atomically (on SQLite, in transactions of at most
        `swap_chunk_ranges` old ranges).

        `replacements` holds (stream id, start offsets of the old ranges, new
        ranges). A stream whose old ranges are not all there any more (trimmed
        meanwhile) keeps its ranges. With `sources` (the keys of the objects
        the new one was copied from), an old range counts only while it still
        lies in one of them: a range rewritten meanwhile at the same start
        offset (key compaction) is not swapped back for the stale copy.
        Returns the stream ids swapped; objects left unreferenced are
        scheduled for deletion.
        """
        swaps: list[Swap] = [
            (
                sid,
                starts,
                [(x.start_offset, x.end_offset, x.position, x.size, x.max_timestamp) for x in news],
            )
            for sid, starts, news in replacements
        ]
        chunk_ranges = self.swap_chunk_ranges if self.is_sqlite else None
        prepared = range_swap.prepare(swaps, sources, chunk_ranges)
        return await self.swap_prepared(key, size, node_id, kind, prepared, grace_ms)

    async def swap_prepared(
        self, key: str, size: int, node_id: int, kind: str, prepared: PreparedSwap, grace_ms: int
    ) -> list[int]:
        """`replace_ranges` for a swap prepared already (meta/range_swap.py:
        compaction's child process prepares them), with its chunks on
        SQLite. Returns the stream ids swapped."""
        async with self._ranges_lock:
            if not self.is_sqlite:
                return await self._swap_pg(key, size, node_id, kind, prepared, grace_ms)
            return await self._swap_sqlite(key, size, node_id, kind, prepared, grace_ms)

    async def _swap_sqlite(
        self, key: str, size: int, node_id: int, kind: str, prepared: PreparedSwap, grace_ms: int
    ) -> list[int]:
        if not prepared.chunks:
            raise ValueError("a swap on SQLite needs its chunks (range_swap.prepare)")
        # SQLite: chunks of streams, a transaction each, so that WAL commits
        # (every produce ack) wait for one chunk, not for the whole swap: a
        # fleet's 30 s of one-record ranges is 300,000 of them. Each stream's
        # swap is still all or nothing. Until the last chunk the object is
        # kept from being scheduled for deletion while no range refers to it
        # yet (only this process writes a SQLite file).
        done: list[int] = []
        target: NewObject | int = NewObject(key, size, now_ms(), node_id, kind)
        took = 0.0
        try:
            for chunk in prepared.chunks:
                if isinstance(target, int):
                    # The writer left idle as long as the last chunk held it:
                    # the commits that queued meanwhile go first, and half
                    # the commits of a long swap find the writer free rather
                    # than all of them waiting behind a chunk.
                    await asyncio.sleep(took)
                began = time.monotonic()
                target, swapped = await self._swap_sqlite_chunk(target, chunk)
                took = time.monotonic() - began
                done.extend(swapped)
        except Exception:
            if not done:
                raise
            # Earlier chunks are committed: report them, so that readers
            # learn where those streams' ranges went; the rest wait for the
            # next round.
            log.warning(
                "range swap into %s stopped after %d streams", key, len(done), exc_info=True
            )
        finally:
            if isinstance(target, int):
                self._swapping.discard(target)
        if isinstance(target, int):
            async with self._tx() as conn:
                await self._schedule_unreferenced(conn, grace_ms)
        return done

    async def _swap_sqlite_chunk(
        self, target: NewObject | int, chunk: SwapChunk
    ) -> tuple[int, list[int]]:
        """One transaction of a SQLite swap (sqlite_swap.py): in the WAL
        committer's thread for a file, through the engine in memory. The
        object's id joins those kept from scheduling before the write lock
        is released, for replace_ranges to release when the swap is over."""
        async with self._write_lock:
            if self.sqlite_commits is not None:
                object_id, swapped = await self.sqlite_commits.transaction(
                    lambda conn: sqlite_swap.swap(conn.execute, chunk, target)
                )
            else:
                async with self.engine.begin() as conn:
                    object_id, swapped = await conn.run_sync(
                        lambda c: sqlite_swap.swap(c.exec_driver_sql, chunk, target)
                    )
            self._swapping.add(object_id)
        return object_id, swapped

    async def _swap_pg(
        self, key: str, size: int, node_id: int, kind: str, prepared: PreparedSwap, grace_ms: int
    ) -> list[int]:
        """A PostgreSQL swap, in one transaction (pg_swap.py): the object's
        row, then the streams' ranges. Not under the write lock: WAL
        commits (every produce ack) go on beside it on other connections,
        as another broker's would; they add ranges above the ones swapped
        and never touch those. What deletes ranges (trims, topic deletion)
        waits for it on the ranges lock, which swap_prepared holds. Returns
        the streams swapped."""
        columns, arrays = prepared.columns, prepared.pg
        if arrays is None:
            raise ValueError("a swap on PostgreSQL needs its arrays (range_swap.prepare)")
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert(s.objects).values(
                    key=key, size=size, created_ms=now_ms(), node_id=node_id, kind=kind
                )
            )
            object_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            swapped = await pg_swap.swap(
                conn, columns.streams, columns.old_counts, arrays, object_id, prepared.sources
            )
            await self._schedule_unreferenced(conn, grace_ms)
        return swapped

    async def wal_objects(self, node_id: int, older_than_ms: int, limit: int) -> list[str]:
        """Committed WAL objects of a node, oldest first, for compaction."""
        o = s.objects
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(o.c.key)
                .where(
                    o.c.node_id == node_id,
                    o.c.kind == "wal",
                    o.c.delete_after_ms.is_(None),
                    o.c.created_ms <= older_than_ms,
                )
                .order_by(o.c.id)
                .limit(limit)
            )
            return [row.key for row in rows]

    async def wal_nodes(self) -> set[int]:
        """Brokers that have WAL objects still awaiting compaction."""
        o = s.objects
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(o.c.node_id)
                .where(o.c.kind == "wal", o.c.delete_after_ms.is_(None))
                .distinct()
            )
            return {int(r.node_id) for r in rows}

    async def compacted_objects(self, node_id: int) -> list[ObjectUsage]:
        """A node's compacted objects not awaiting deletion, oldest first,
        with the bytes their ranges still refer to (the second compaction
        level merges the small ones and rewrites the mostly dead ones)."""
        o, r = s.objects, s.stream_ranges
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(o.c.key, o.c.size, func.coalesce(func.sum(r.c.size), 0).label("live"))
                .select_from(o.outerjoin(r, r.c.object_id == o.c.id))
                .where(
                    o.c.node_id == node_id,
                    o.c.kind != "wal",
                    o.c.delete_after_ms.is_(None),
                )
                .group_by(o.c.id, o.c.key, o.c.size)
                .order_by(o.c.id)
            )
            return [ObjectUsage(x.key, int(x.size), int(x.live)) for x in rows]

    async def object_nodes(self) -> set[int]:
        """Brokers that wrote objects still live (the controller compacts
        those of brokers that are gone)."""
        o = s.objects
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(o.c.node_id).where(o.c.delete_after_ms.is_(None)).distinct()
            )
            return {int(r.node_id) for r in rows}

    async def ranges_in_objects(self, keys: Sequence[str]) -> list[RangeRecord]:
        o, r = s.objects, s.stream_ranges
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(r, o.c.key)
                .join(o, o.c.id == r.c.object_id)
                .where(in_(o.c.key, keys))
                .order_by(r.c.stream_id, r.c.start_offset)
            )
            return [
                RangeRecord(
                    x.stream_id,
                    x.start_offset,
                    x.end_offset,
                    x.key,
                    x.position,
                    x.size,
                    x.max_timestamp,
                )
                for x in rows
            ]

    async def range_rows(self, keys: Sequence[str]) -> RangeRows:
        """The ranges in these objects, and the streams they belong to, for
        compaction's child process to parse (meta/range_rows.py: a JSON
        text on SQLite, COPY's text on PostgreSQL). A fleet's round reads
        hundreds of thousands; as Python objects on the event loop they
        stalled every client for a second."""
        if not self.is_sqlite:
            return await self._range_rows_pg(keys)
        o, r = s.objects, s.stream_ranges
        fields = (
            r.c.stream_id,
            r.c.start_offset,
            r.c.end_offset,
            o.c.key,
            r.c.position,
            r.c.size,
            r.c.max_timestamp,
        )
        rows = func.json_group_array(func.json_array(*fields))
        sids = func.json_group_array(r.c.stream_id.distinct())
        async with self.engine.connect() as conn:
            result = await conn.execute(
                select(rows, sids)
                .select_from(r.join(o, o.c.id == r.c.object_id))
                .where(in_(o.c.key, keys))
            )
            text_rows, text_sids = result.one()
        return RangeRows(str(text_rows), None, str(text_sids))

    async def _range_rows_pg(self, keys: Sequence[str]) -> RangeRows:
        """Three statements on one connection: the objects' ids, their
        streams, and the ranges through COPY, whose text arrives as a few
        hundred buffers that are only joined here."""
        async with self.engine.connect() as conn:
            found = await conn.execute(_OBJECT_IDS, {"keys": list(keys)})
            ids = {int(x.id): str(x.key) for x in found}
            if not ids:
                return RangeRows.empty()
            sids = await conn.scalar(_RANGE_STREAMS, {"ids": list(ids)})
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            buffers: list[bytes] = []

            async def take(data: bytes) -> None:
                buffers.append(data)

            await driver.copy_from_query(_RANGES_COPY, list(ids), output=take, format="text")
        return RangeRows(b"".join(buffers), ids, str(sids))

    async def storage_summary(self) -> dict[str, Any]:
        """Objects, bytes and per-topic sizes, for `shoal storage stats`."""
        o, r, p, t = s.objects, s.stream_ranges, s.partitions, s.topics
        async with self.engine.connect() as conn:
            by_kind = {
                row.kind: (int(row.n), int(row.bytes or 0))
                for row in await conn.execute(
                    select(o.c.kind, func.count().label("n"), func.sum(o.c.size).label("bytes"))
                    .where(o.c.delete_after_ms.is_(None))
                    .group_by(o.c.kind)
                )
            }
            pending_delete = (
                await conn.execute(
                    select(func.count(), func.sum(o.c.size)).where(o.c.delete_after_ms.is_not(None))
                )
            ).one()
            topics = {
                row.name: (int(row.bytes or 0), int(row.ranges))
                for row in await conn.execute(
                    select(
                        t.c.name,
                        func.sum(r.c.size).label("bytes"),
                        func.count(r.c.stream_id).label("ranges"),
                    )
                    .select_from(
                        t.join(p, p.c.topic_id == t.c.id).outerjoin(
                            r, r.c.stream_id == p.c.stream_id
                        )
                    )
                    .group_by(t.c.name)
                    .order_by(t.c.name)
                )
            }
        return {
            "objects": by_kind,
            "pending_delete": (int(pending_delete[0]), int(pending_delete[1] or 0)),
            "topics": topics,
        }

    async def object_keys(self) -> set[str]:
        async with self.engine.connect() as conn:
            return {r.key for r in await conn.execute(select(s.objects.c.key))}

    async def execute_read(self, statement: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(statement)).all())


def _add_missing_columns(conn: Any) -> None:
    """Columns added to existing tables after schema v1 (create_all adds
    only tables): ALTER TABLE ... ADD COLUMN with the column's default."""
    inspector = inspect(conn)
    for table, name, ddl in s.ADDED_COLUMNS:
        if name not in {c["name"] for c in inspector.get_columns(table)}:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")


def _pg_session(dbapi_conn: Any, record: Any) -> None:
    """Bounds on a PostgreSQL session of a broker cut off mid-request (see
    PG_TRANSACTION_TIMEOUT_MS and PG_TCP_USER_TIMEOUT_MS)."""
    _tcp_user_timeout(dbapi_conn, record)
    if dbapi_conn.driver_connection.get_server_version().major >= 17:
        cur = dbapi_conn.cursor()
        cur.execute(f"SET transaction_timeout = {PG_TRANSACTION_TIMEOUT_MS}")
        cur.close()


def _tcp_user_timeout(dbapi_conn: Any, _record: Any) -> None:
    """TCP_USER_TIMEOUT on the broker's end of a PostgreSQL connection (TCP
    only; a Unix socket has no link to lose). asyncpg (0.32) has no connect
    parameter for it (libpq's tcp_user_timeout is libpq's, and the server
    setting covers only the server's end), so the socket is reached through
    the connection's private transport; test_meta_pg.py fails if that goes."""
    transport = getattr(dbapi_conn.driver_connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if (
        sock is not None
        and sock.family in (socket.AF_INET, socket.AF_INET6)
        and hasattr(socket, "TCP_USER_TIMEOUT")
    ):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, PG_TCP_USER_TIMEOUT_MS)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA wal_autocheckpoint=0")  # see shoal.meta.checkpoint
    cur.close()


def _fenced(moves: dict[int, list[int]], rows: StreamRows, moved: bool = True) -> StreamFenced:
    """The error of a group commit that could not move every stream, from the
    streams' rows (epoch, end, deleted) as its transaction saw them after the
    moves: a stream that moved is at its new end, so one that is not is the
    one that was fenced. With `moved` False the rows were read after the
    commit was undone: a stream not fenced is still at its start."""
    for sid, (epoch, start, end) in moves.items():
        found = rows.get(sid)
        if found is None or found[2] or found[0] != epoch:
            return StreamFenced(sid, f"stream {sid}: epoch {epoch} is stale")
        if found[1] != (end if moved else start):
            return StreamFenced(sid, f"stream {sid}: end {found[1]}, expected {start}")
    sid = next(iter(moves))
    return StreamFenced(sid, f"stream {sid}: end offset moved under the writer")


_K = TypeVar("_K", int, str)
_MAX_PARAMS = 2_000  # well under SQLite's and PostgreSQL's bind-parameter limits


def _id_chunks(ids: Sequence[_K]) -> list[list[_K]]:
    """Ids (or names) in lists small enough for one statement's IN (...)."""
    items = list(ids)
    return [items[i : i + _MAX_PARAMS] for i in range(0, len(items), _MAX_PARAMS)]


# (stream id, start offsets of its old ranges, its new ranges)
Replacement = tuple[int, Sequence[int], Sequence[RangeCommit]]


# Each topic's rows, as _CATALOG_DIGEST reads them, as one md5 per topic.
_TOPIC_DIGESTS = text(
    """
    SELECT array_agg(t.id ORDER BY t.id), array_agg(t.name ORDER BY t.id),
      array_agg(md5(concat_ws('|',
        concat_ws(':', t.id, t.topic_uuid, length(t.name), t.name),
        coalesce(c.rows, ''), coalesce(p.rows, ''))) ORDER BY t.id)
    FROM topics t
    LEFT JOIN (
      SELECT topic_id, string_agg(concat_ws(':', length(key), key, length(value), value), ','
                                  ORDER BY key) AS rows
      FROM topic_configs GROUP BY topic_id) c ON c.topic_id = t.id
    LEFT JOIN (
      SELECT topic_id, string_agg(concat_ws(':', partition, stream_id, leader_epoch,
                                            coalesce(owner_node, -1)), ','
                                  ORDER BY partition) AS rows
      FROM partitions GROUP BY topic_id) p ON p.topic_id = t.id
    """
)

# Every row the catalog is made of, in key order, as one md5 (PostgreSQL).
# Free text is length-prefixed so that no two catalogs read alike.
_CATALOG_DIGEST = text(
    """
    SELECT md5(
      coalesce((SELECT string_agg(
          concat_ws(':', id, topic_uuid, length(name), name), ',' ORDER BY id)
        FROM topics), '')
      || '|' || coalesce((SELECT string_agg(
          concat_ws(':', topic_id, length(key), key, length(value), value), ','
          ORDER BY topic_id, key)
        FROM topic_configs), '')
      || '|' || coalesce((SELECT string_agg(
          concat_ws(':', topic_id, partition, stream_id, leader_epoch,
                    coalesce(owner_node, -1)), ',' ORDER BY topic_id, partition)
        FROM partitions), '')
    )
    """
)
