"""Metadata work per commit and per batched open does not grow with the
number of streams in it (issue 13): counted as statements the store's
engine executes, on SQLite and on PostgreSQL (embedded), where each
statement is a network round trip."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from cluster_harness import new_database
from shoal.meta import schema, sqlite_commit
from shoal.meta.cluster import ClusterStore, Move
from shoal.meta.store import (
    AbortedTxn,
    MetaError,
    MetaStore,
    ObjectCommit,
    OpenedStream,
    ProducerRow,
    RangeCommit,
    StreamFenced,
)


@pytest.fixture(params=["sqlite", "sqlite-json", "sqlite-memory", "postgresql"])
async def meta(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[MetaStore]:
    """A file commits through its own connection (shoal.meta.sqlite_commit),
    an in-memory database through the engine, as PostgreSQL does.
    "sqlite-json": every commit's moves and ranges as one JSON text each, as
    a file's commits of more than BULK_ROWS rows."""
    url = {
        "sqlite": f"sqlite:///{tmp_path}/meta.db",
        "sqlite-json": f"sqlite:///{tmp_path}/meta.db",
        "sqlite-memory": "sqlite:///:memory:",
    }.get(request.param) or new_database()
    if request.param == "sqlite-json":
        monkeypatch.setattr(sqlite_commit, "BULK_ROWS", 0)
    m = await MetaStore.open(url)
    assert (m.sqlite_commits is not None) == (request.param in ("sqlite", "sqlite-json"))
    yield m
    await m.close()


class Statements:
    """Counts the statements sent to the database (an executemany is one):
    through the engine, and on SQLite also those of the WAL commits' own
    connection (shoal.meta.sqlite_commit)."""

    def __init__(self, meta: MetaStore) -> None:
        self._meta = meta
        self._seen_by_engine = 0
        self._base = 0
        self._engine = meta.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self._seen_by_engine += 1

    def _total(self) -> int:
        own = self._meta.sqlite_commits
        return self._seen_by_engine + (own.statements if own is not None else 0)

    @property
    def count(self) -> int:
        return self._total() - self._base

    def __enter__(self) -> Statements:
        self._base = self._total()
        return self

    def __exit__(self, *_exc: object) -> None:
        pass


@pytest.fixture
def statements(meta: MetaStore) -> Iterator[Statements]:
    counter = Statements(meta)
    yield counter
    event.remove(counter._engine, "before_cursor_execute", counter._seen)


async def streams_of(meta: MetaStore, n: int) -> list[int]:
    """A new topic's streams (its partitions are created in two statements;
    what create_topic returns must be what the store holds)."""
    topic = await meta.create_topic(f"t{uuid.uuid4().hex[:8]}", n, {})
    [stored] = [t for t in await meta.list_topics() if t.name == topic.name]
    assert stored.partitions == topic.partitions
    assert [p.partition for p in topic.partitions] == list(range(n))
    assert len({p.stream_id for p in topic.partitions}) == n
    return [p.stream_id for p in topic.partitions]


async def open_and_commit(
    meta: MetaStore, statements: Statements, n: int
) -> tuple[int, int, dict[int, OpenedStream]]:
    """Open n streams in one batch, then commit one record to each (with an
    idempotent producer's state) in one group commit of two objects; returns
    the statements each took and the streams as opened."""
    sids = await streams_of(meta, n)
    with statements:
        opened = await meta.open_streams(sids)
    opens = statements.count
    taken = {sid: res for sid, res in opened.items() if isinstance(res, OpenedStream)}
    assert len(taken) == n
    half = n // 2
    objects = [
        ObjectCommit(
            f"wal/{uuid.uuid4().hex}-{i}",
            100 * n,
            [RangeCommit(sid, taken[sid].record.epoch, 0, 1, 100 * sid, 100, sid) for sid in part],
            [ProducerRow(sid, 7, 0, "[[0, 0, 0, 0]]", 1) for sid in part],
        )
        for i, part in enumerate((sids[:half], sids[half:]))
    ]
    with statements:
        await meta.commit_objects(objects, node_id=0)
    return opens, statements.count, taken


async def test_batched_open_and_commit_cost_the_same_for_4_or_400_streams(
    meta: MetaStore, statements: Statements
) -> None:
    small_open, small_commit, _ = await open_and_commit(meta, statements, 4)
    big_open, big_commit, taken = await open_and_commit(meta, statements, 400)
    assert small_open > 0 and small_commit > 0
    assert big_open == small_open
    assert big_commit == small_commit
    # ... and the commit did what it says: every stream moved, ranges and
    # producer state recorded, and the next open sees them.
    reopened = await meta.open_streams(list(taken))
    for sid, res in reopened.items():
        assert isinstance(res, OpenedStream)
        assert res.record.epoch == taken[sid].record.epoch + 1
        assert res.record.end_offset == 1
        assert [(r.start_offset, r.end_offset, r.size, r.max_timestamp) for r in res.ranges] == [
            (0, 1, 100, sid)
        ]
        assert res.ranges[0].position == 100 * sid
        assert [(p.producer_id, p.batches) for p in res.producers] == [(7, "[[0, 0, 0, 0]]")]


async def test_a_group_commit_with_one_stale_stream_changes_nothing(meta: MetaStore) -> None:
    sids = await streams_of(meta, 50)
    opened = await meta.open_streams(sids)
    epochs = {sid: res.record.epoch for sid, res in opened.items() if isinstance(res, OpenedStream)}
    await meta.open_streams([sids[17]])  # another writer took one stream
    ranges = [RangeCommit(sid, epochs[sid], 0, 1, 0, 100, 1) for sid in sids]
    with pytest.raises(StreamFenced) as info:
        await meta.commit_objects([ObjectCommit("wal/stale", 5000, ranges)], node_id=0)
    assert info.value.stream_id == sids[17]
    for sid in sids:
        assert (await meta.read_stream(sid)).end_offset == 0
    assert await meta.load_ranges(sids[0]) == []
    assert "wal/stale" not in await meta.object_keys()


async def test_a_producer_in_several_objects_of_a_group_keeps_its_newest_state(
    meta: MetaStore,
) -> None:
    [sid] = await streams_of(meta, 1)
    opened = (await meta.open_streams([sid]))[sid]
    assert isinstance(opened, OpenedStream)
    epoch = opened.record.epoch
    objects = [
        ObjectCommit(
            f"wal/p{i}",
            100,
            [RangeCommit(sid, epoch, i, i + 1, 0, 100, 1)],
            [ProducerRow(sid, 7, 0, f"[[{i}, {i}, {i}, {i}]]", 1000 + i)],
        )
        for i in range(3)
    ]
    await meta.commit_objects(objects, node_id=0)
    assert await meta.load_producers(sid) == [ProducerRow(sid, 7, 0, "[[2, 2, 2, 2]]", 1002)]


async def test_a_commit_keeps_keys_and_producer_states_verbatim(meta: MetaStore) -> None:
    """A commit binds its rows as arrays (pg_commit.py) or JSON texts
    (sqlite_commit.py): a key or a producer's state holding what those forms
    quote (commas, braces, quotes, backslashes, spaces, the word NULL) comes
    back as it was sent."""
    sids = await streams_of(meta, 3)
    opened = await meta.open_streams(sids)
    epochs = {sid: res.record.epoch for sid, res in opened.items() if isinstance(res, OpenedStream)}
    states = ['[[1, 2, 3, 4]], {"a": "b,c"}', "NULL", 'x\\"y\\\\z} {w']
    keys = ['wal/a,b{c}"d', "wal/NULL", "wal/e f\\g"]
    objects = [
        ObjectCommit(
            key,
            100,
            [RangeCommit(sid, epochs[sid], 0, 1, 0, 100, 1)],
            [ProducerRow(sid, 7, 0, state, 1000)],
        )
        for key, sid, state in zip(keys, sids, states, strict=True)
    ]
    await meta.commit_objects(objects, node_id=0)
    for key, sid, state in zip(keys, sids, states, strict=True):
        assert await meta.load_producers(sid) == [ProducerRow(sid, 7, 0, state, 1000)]
        [r] = await meta.load_ranges(sid)
        assert (r.object_key, r.start_offset, r.end_offset) == (key, 0, 1)
    assert set(keys) <= set(await meta.object_keys())


async def test_a_commit_out_of_order_or_failing_half_way_changes_nothing(meta: MetaStore) -> None:
    """A range that does not start at the stream's end is refused as fenced;
    a statement failing after the ends moved (a key already recorded) rolls
    the whole commit back."""
    sids = await streams_of(meta, 3)
    opened = await meta.open_streams(sids)
    epochs = {sid: res.record.epoch for sid, res in opened.items() if isinstance(res, OpenedStream)}
    first = [RangeCommit(sid, epochs[sid], 0, 5, 0, 100, 1) for sid in sids]
    await meta.commit_objects([ObjectCommit("wal/first", 300, first)], node_id=0)
    skipping = [
        RangeCommit(sid, epochs[sid], 5 if sid != sids[1] else 6, 9, 0, 100, 1) for sid in sids
    ]
    with pytest.raises(StreamFenced, match="end 5, expected 6") as info:
        await meta.commit_objects([ObjectCommit("wal/skip", 300, skipping)], node_id=0)
    assert info.value.stream_id == sids[1]
    again = [RangeCommit(sid, epochs[sid], 5, 9, 0, 100, 1) for sid in sids]
    with pytest.raises((sqlite3.IntegrityError, IntegrityError)):
        await meta.commit_objects([ObjectCommit("wal/first", 300, again)], node_id=0)
    for sid in sids:
        assert (await meta.read_stream(sid)).end_offset == 5
        assert [(r.start_offset, r.object_key) for r in await meta.load_ranges(sid)] == [
            (0, "wal/first")
        ]
    await meta.commit_objects([ObjectCommit("wal/next", 300, again)], node_id=0)
    assert {(await meta.read_stream(sid)).end_offset for sid in sids} == {9}


async def test_postgresql_commits_a_group_in_one_statement() -> None:
    """Moves, objects, ranges and producers' states: one statement, one
    round trip, for 400 streams as for one; a stale stream in it leaves
    everything as it was, as on the transaction path."""
    meta = await MetaStore.open(new_database())
    statements = Statements(meta)
    try:
        _opens, commits, taken = await open_and_commit(meta, statements, 400)
        assert commits == 1
        assert {(await meta.read_stream(sid)).end_offset for sid in taken} == {1}
        sids = list(taken)
        await meta.open_streams([sids[3]])  # another writer took one
        ranges = [RangeCommit(sid, taken[sid].record.epoch, 1, 2, 0, 10, 1) for sid in sids]
        with pytest.raises(StreamFenced, match="is stale") as info:
            await meta.commit_objects([ObjectCommit("wal/late", 10, ranges)], node_id=0)
        assert info.value.stream_id == sids[3]
        assert {(await meta.read_stream(sid)).end_offset for sid in sids} == {1}
        assert "wal/late" not in await meta.object_keys()
    finally:
        event.remove(statements._engine, "before_cursor_execute", statements._seen)
        await meta.close()


async def test_a_commit_records_aborted_transactions_and_drops_the_markers_written(
    meta: MetaStore,
) -> None:
    """A transaction's markers ride a WAL commit like any append: the commit
    records the aborted span and takes the marker off the list of those to
    write, in the same statement or transaction; a fenced one does neither."""
    from shoal.meta.transactions import TxnRepository

    sids = await streams_of(meta, 2)
    opened = await meta.open_streams(sids)
    epochs = {sid: res.record.epoch for sid, res in opened.items() if isinstance(res, OpenedStream)}
    txns = TxnRepository(meta)
    await txns.ask_markers("tx", 7, 0, False, sids)
    marker = {m.stream_id: m.id for m in await txns.pending_markers()}
    stale = ObjectCommit(
        "wal/stale",
        10,
        [RangeCommit(sids[0], epochs[sids[0]] + 1, 0, 3, 0, 10, 1)],
        aborted=[AbortedTxn(sids[0], 7, 0, 2)],
        markers_done=[marker[sids[0]]],
    )
    with pytest.raises(StreamFenced):
        await meta.commit_objects([stale], node_id=0)
    assert await meta.load_aborted(sids[0]) == []
    assert await txns.markers_left("tx") == 2
    done = ObjectCommit(
        "wal/abort",
        10,
        [RangeCommit(sids[0], epochs[sids[0]], 0, 3, 0, 10, 1)],
        aborted=[AbortedTxn(sids[0], 7, 0, 2)],
        markers_done=[marker[sids[0]]],
    )
    await meta.commit_objects([done], node_id=0)
    assert await meta.load_aborted(sids[0]) == [AbortedTxn(sids[0], 7, 0, 2)]
    assert [m.stream_id for m in await txns.pending_markers()] == [sids[1]]


async def test_batched_open_answers_each_stream(meta: MetaStore) -> None:
    """A missing stream and one assigned to another node get their own
    answer; the rest of the batch is taken."""
    topic = await meta.create_topic(f"t{uuid.uuid4().hex[:8]}", 3, {})
    sids = [p.stream_id for p in topic.partitions]
    moves = [
        Move(topic.id, p.partition, p.stream_id, None, 1 + (p.partition == 1))
        for p in topic.partitions
    ]
    assert len(await ClusterStore(meta).apply_moves(moves)) == 3
    opened = await meta.open_streams([*sids, 999_999], owner=1)
    assert isinstance(opened[999_999], MetaError)
    assert not isinstance(opened[999_999], StreamFenced)
    assert isinstance(opened[sids[1]], StreamFenced)  # assigned to node 2
    assert isinstance(opened[sids[0]], OpenedStream)
    assert isinstance(opened[sids[2]], OpenedStream)


async def test_postgresql_records_any_number_of_objects_with_one_compiled_insert() -> None:
    """A group commit's object rows go in one INSERT whose SQL does not grow
    with the number of objects (unnest arrays, compiled once: a VALUES list
    was compiled anew at every commit); each range names its own object.
    The whole commit is that one statement (pg_commit.py)."""
    meta = await MetaStore.open(new_database())
    sent: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "INSERT INTO OBJECTS" in statement.upper():
            assert "INSERT INTO STREAM_RANGES" in statement.upper()
            sent.append(statement)

    event.listen(meta.engine.sync_engine, "before_cursor_execute", seen)
    try:
        sids = await streams_of(meta, 3)
        opened = await meta.open_streams(sids)
        epochs = {s: r.record.epoch for s, r in opened.items() if isinstance(r, OpenedStream)}
        await meta.commit_objects(
            [ObjectCommit("wal/one", 100, [RangeCommit(sids[0], epochs[sids[0]], 0, 1, 0, 9, 1)])],
            node_id=4,
        )
        ends = {sid: 1 if sid == sids[0] else 0 for sid in sids}  # where each stream is
        group = [
            ObjectCommit(
                f"wal/g{i}", 200 + i, [RangeCommit(sid, epochs[sid], ends[sid], 2, i, 9, 1)]
            )
            for i, sid in enumerate(sids)
        ]
        await meta.commit_objects(group, node_id=4)
        assert len(sent) == 2 and sent[0] == sent[1], sent
        assert [(r.start_offset, r.object_key) for r in await meta.load_ranges(sids[0])] == [
            (0, "wal/one"),
            (1, "wal/g0"),
        ]
        for i, sid in enumerate(sids[1:], 1):
            [r] = await meta.load_ranges(sid)
            assert (r.object_key, r.position) == (f"wal/g{i}", i)
        o = schema.objects
        rows = await meta.execute_read(select(o.c.key, o.c.size, o.c.node_id, o.c.kind))
        assert sorted(map(tuple, rows)) == [
            ("wal/g0", 200, 4, "wal"),
            ("wal/g1", 201, 4, "wal"),
            ("wal/g2", 202, 4, "wal"),
            ("wal/one", 100, 4, "wal"),
        ]
    finally:
        event.remove(meta.engine.sync_engine, "before_cursor_execute", seen)
        await meta.close()


async def created(meta: MetaStore, statements: Statements, n: int) -> int:
    """Create n topics of 5 partitions (every other one with a config) in
    one call; check what the store holds against what it returned; the
    statements it took."""
    specs = [
        (f"c{uuid.uuid4().hex[:8]}-{i}", 5, {"retention.ms": str(1000 + i)} if i % 2 else {})
        for i in range(n)
    ]
    with statements:
        made = await meta.create_topics(specs)
    count = statements.count
    assert [(t.name, len(t.partitions), t.configs) for t in made] == specs
    stored = {t.name: t for t in await meta.list_topics()}
    for t in made:
        assert stored[t.name].id == t.id
        assert stored[t.name].topic_uuid == t.topic_uuid
        assert stored[t.name].partitions == t.partitions
        assert stored[t.name].configs == t.configs
        assert [p.partition for p in t.partitions] == list(range(5))
    sids = [p.stream_id for t in made for p in t.partitions]
    assert len(set(sids)) == 5 * n
    opened = await meta.open_streams(sids)  # every stream exists, empty
    assert all(isinstance(r, OpenedStream) and r.record.end_offset == 0 for r in opened.values())
    return count


async def test_creating_4_or_150_topics_costs_the_same_statements(
    meta: MetaStore, statements: Statements
) -> None:
    """A CreateTopics of 500 topics was 500 transactions of five statements
    each, one after another (26 s for 2,000 topics on PostgreSQL); the
    store now creates a request's topics together. (SQLAlchemy sends an
    insert's rows in pages of 1,000, so 150 topics of 5 partitions.)"""
    small = await created(meta, statements, 4)
    big = await created(meta, statements, 150)
    assert small > 0
    assert big == small


async def test_a_taken_name_creates_none_of_the_topics_asked_with_it(meta: MetaStore) -> None:
    await meta.create_topic("taken", 1, {})
    before = await meta.list_topics()
    with pytest.raises(MetaError):
        await meta.create_topics([("new-a", 3, {}), ("taken", 2, {}), ("new-b", 1, {})])
    assert await meta.list_topics() == before
    made = await meta.create_topics([("new-a", 3, {}), ("new-b", 1, {})])
    assert [len(t.partitions) for t in made] == [3, 1]


async def test_moving_4_or_1000_partitions_costs_the_same_statements(
    meta: MetaStore, statements: Statements
) -> None:
    """Placing new partitions, or handing on a dead broker's, was two
    statements per partition; moves are made per (old owner, new owner)."""
    cluster = ClusterStore(meta)

    async def place(n: int) -> tuple[int, list[Move]]:
        topic = await meta.create_topic(f"m{uuid.uuid4().hex[:8]}", n, {})
        moves = [
            Move(topic.id, p.partition, p.stream_id, None, 1 + p.partition % 2)
            for p in topic.partitions
        ]
        with statements:
            done = await cluster.apply_moves(moves)
        assert done == moves
        return statements.count, moves

    small, _ = await place(4)
    big, moves = await place(1000)
    assert small > 0
    assert big == small
    owners = {(o.topic_id, o.partition): o.owner for o in await cluster.owners()}
    assert all(owners[(m.topic_id, m.partition)] == m.new_owner for m in moves)


async def test_only_moves_whose_owner_is_as_expected_are_made(meta: MetaStore) -> None:
    """Each move is fenced by its expected owner; those made bump the
    partition's leader epoch and the stream's epoch once, the others
    change nothing; a requested move made is marked moved."""
    cluster = ClusterStore(meta)
    topic = await meta.create_topic("fenced", 6, {})
    ps = topic.partitions
    await cluster.apply_moves([Move(topic.id, p.partition, p.stream_id, None, 1) for p in ps])
    await cluster.request_move("fenced", 0, 2)
    epochs = {sid: (await meta.read_stream(sid)).epoch for sid in (p.stream_id for p in ps)}
    moves = [
        Move(topic.id, 0, ps[0].stream_id, 1, 2),  # as expected
        Move(topic.id, 1, ps[1].stream_id, 3, 2),  # owner is 1, not 3
        Move(topic.id, 2, ps[2].stream_id, None, 2),  # owned already
        Move(topic.id, 3, ps[3].stream_id, 1, 3),  # as expected
    ]
    done = await cluster.apply_moves(moves, frozenset({(topic.id, 0), (topic.id, 1)}))
    assert done == [moves[0], moves[3]]
    owners = {o.partition: o.owner for o in await cluster.owners() if o.topic_id == topic.id}
    assert owners == {0: 2, 1: 1, 2: 1, 3: 3, 4: 1, 5: 1}
    after = {sid: (await meta.read_stream(sid)).epoch for sid in epochs}
    bumped = {sid for sid in epochs if after[sid] != epochs[sid]}
    assert bumped == {ps[0].stream_id, ps[3].stream_id}
    assert all(after[sid] == epochs[sid] + 1 for sid in bumped)
    [stored] = [t for t in await meta.list_topics() if t.name == "fenced"]
    assert [p.leader_epoch for p in stored.partitions] == [2, 1, 1, 2, 1, 1]
    [marked] = await cluster.reassignments()
    assert marked.partition == 0 and marked.moved_ms is not None


async def test_deleting_4_or_150_topics_costs_the_same_statements(
    meta: MetaStore, statements: Statements
) -> None:
    """A DeleteTopics of 500 topics was 500 transactions of a dozen
    statements and a scan of the objects each; the store now deletes a
    request's topics together. What a deletion leaves behind is checked
    too: streams marked deleted, their ranges and producer states gone,
    the objects only they used scheduled for the cleaner."""

    async def delete(n: int) -> int:
        names = [f"d{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
        made = await meta.create_topics([(name, 5, {"retention.ms": "1"}) for name in names])
        sids = [p.stream_id for t in made for p in t.partitions]
        opened = await meta.open_streams(sids)
        epochs = {sid: r.record.epoch for sid, r in opened.items() if isinstance(r, OpenedStream)}
        key = f"wal/{uuid.uuid4().hex}"
        await meta.commit_objects(
            [
                ObjectCommit(
                    key,
                    100 * len(sids),
                    [
                        RangeCommit(sid, epochs[sid], 0, 1, 100 * i, 100, 1)
                        for i, sid in enumerate(sids)
                    ],
                    [ProducerRow(sid, 7, 0, "[[0, 0, 0, 0]]", 1) for sid in sids],
                )
            ],
            node_id=0,
        )
        assert key not in await meta.objects_due(2**62)
        with statements:
            gone = await meta.delete_topics([*names, "never-there"])
        count = statements.count
        assert sorted(t.name for t in gone) == sorted(names)
        assert not {t.name for t in await meta.list_topics()} & set(names)
        async with meta.engine.connect() as conn:
            flags = (
                await conn.execute(
                    select(schema.streams.c.deleted).where(schema.streams.c.id.in_(sids))
                )
            ).scalars()
            assert list(flags) == [True] * len(sids)
        for sid in sids:
            assert await meta.load_ranges(sid) == []
            assert await meta.load_producers(sid) == []
        assert key in await meta.objects_due(2**62)  # scheduled once unreferenced
        return count

    small = await delete(4)
    big = await delete(150)
    assert small > 0
    assert big == small


async def test_growing_4_or_150_topics_costs_the_same_statements(
    meta: MetaStore, statements: Statements
) -> None:
    """A CreatePartitions of 500 topics was 500 transactions; the store now
    grows a request's topics together, each from where it stood."""

    async def grow(n: int) -> int:
        names = [f"g{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
        made = await meta.create_topics([(name, 1 + i % 3, {}) for i, name in enumerate(names)])
        before = {t.name: list(t.partitions) for t in made}
        with statements:
            grown = await meta.add_partitions_many([(name, 5) for name in names])
        count = statements.count
        assert [t.name for t in grown] == names
        stored = {t.name: t for t in await meta.list_topics()}
        for t in grown:
            assert stored[t.name].partitions == t.partitions
            assert [p.partition for p in t.partitions] == list(range(5))
            assert t.partitions[: len(before[t.name])] == before[t.name]  # kept as they were
        sids = [p.stream_id for t in grown for p in t.partitions]
        assert len(set(sids)) == len(sids)
        return count

    small = await grow(4)
    big = await grow(150)
    assert small > 0
    assert big == small


async def test_growing_a_missing_topic_grows_none_of_the_others(meta: MetaStore) -> None:
    await meta.create_topic("stays", 1, {})
    with pytest.raises(MetaError):
        await meta.add_partitions_many([("stays", 3), ("gone", 2)])
    [stays] = [t for t in await meta.list_topics() if t.name == "stays"]
    assert len(stays.partitions) == 1


async def test_changing_4_or_150_topics_configs_costs_the_same_statements(
    meta: MetaStore, statements: Statements
) -> None:
    """An AlterConfigs of 500 topics was 500 transactions; the store now
    changes a request's topics together: set, remove, replace all."""

    async def change(n: int) -> int:
        names = [f"c{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
        await meta.create_topics(
            [(name, 1, {"retention.ms": "1000", "segment.ms": "2000"}) for name in names]
        )
        changes = [
            (name, {"retention.ms": str(i)}, ["segment.ms"] if i % 2 else [], i % 3 == 0)
            for i, name in enumerate(names)
        ]
        with statements:
            now = await meta.set_topic_configs_many(changes)
        count = statements.count
        expected = [
            {"retention.ms": str(i)}
            if i % 3 == 0 or i % 2
            else {"retention.ms": str(i), "segment.ms": "2000"}
            for i in range(n)
        ]
        assert now == expected
        stored = {t.name: t.configs for t in await meta.list_topics()}
        assert [stored[name] for name in names] == expected
        return count

    small = await change(4)
    big = await change(150)
    assert small > 0
    assert big == small


async def test_changing_a_missing_topics_configs_changes_none(meta: MetaStore) -> None:
    await meta.create_topic("kept", 1, {"retention.ms": "5"})
    with pytest.raises(MetaError):
        await meta.set_topic_configs_many(
            [("kept", {"retention.ms": "6"}, [], False), ("gone", {}, [], True)]
        )
    [kept] = [t for t in await meta.list_topics() if t.name == "kept"]
    assert kept.configs == {"retention.ms": "5"}
