"""Compaction's range swap (MetaStore.replace_ranges) on both engines: SQLite
looks the old ranges up through a temporary table (sqlite_swap.py; a file in
the WAL committer's thread, in memory through the engine), PostgreSQL through
two arrays, each joined on the primary key. Same cases, same answers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from faults import FaultyStore
from shoal.meta.store import MetaStore, RangeCommit
from shoal.protocol.records import read_header, validate_batches
from shoal.storage.streams import EngineConfig, StreamEngine
from shoal.storage.wal import WalConfig
from wire import make_batch


async def four_objects_per_stream(meta: MetaStore, streams: int) -> tuple[list[int], dict]:  # type: ignore[type-arg]
    """`streams` streams, each with four one-record ranges in WAL objects of
    their own; returns the stream ids and (stream, start) -> object key."""
    topic = await meta.create_topic(f"t{uuid.uuid4().hex[:6]}", streams, {})
    sids = [p.stream_id for p in topic.partitions]
    eng = StreamEngine(
        FaultyStore(), meta, EngineConfig(wal=WalConfig(linger_ms=2), log_cache_bytes=1 << 20)
    )
    for i in range(4):
        for sid in sids:
            batches = validate_batches(make_batch([b"r%d" % i]), 1 << 20)
            await (await eng.append(sid, batches, 0))
    await eng.close()
    ranges = await meta.ranges_in_objects(sorted(await meta.object_keys()))
    where = {(r.stream_id, r.start_offset): r.object_key for r in ranges}
    assert len(where) == 4 * streams
    return sids, where


def run(sid: int, starts: list[int], start: int, end: int, position: int) -> tuple:  # type: ignore[type-arg]
    return (sid, starts, [RangeCommit(sid, 0, start, end, position, 10, 0)])


async def test_swap_takes_whole_streams_and_leaves_the_rest(meta: MetaStore) -> None:
    a, b, c = (await four_objects_per_stream(meta, 3))[0]
    runs = [
        run(a, [0, 1], 0, 2, 0),
        run(a, [2, 3], 2, 4, 10),  # a second run of the same stream
        run(b, [0, 1, 2, 3], 0, 4, 20),
        run(c, [0, 1, 2, 7], 0, 4, 30),  # 7 is not there (trimmed meanwhile): c keeps its own
    ]
    done = await meta.replace_ranges("compacted/x.obj", 40, 0, "compacted", runs, 60_000)
    assert sorted(done) == sorted([a, b])
    swapped = await meta.ranges_in_objects(["compacted/x.obj"])
    assert sorted((r.stream_id, r.start_offset, r.end_offset) for r in swapped) == sorted(
        [(a, 0, 2), (a, 2, 4), (b, 0, 4)]
    )
    kept = await meta.ranges_in_objects(sorted(k for k in await meta.object_keys() if "wal" in k))
    assert sorted(r.start_offset for r in kept if r.stream_id == c) == [0, 1, 2, 3]
    assert not [r for r in kept if r.stream_id in (a, b)]
    assert await meta.replace_ranges("compacted/y.obj", 40, 0, "compacted", runs[:1], 0) == []


async def test_swap_with_sources_counts_only_ranges_still_in_them(meta: MetaStore) -> None:
    """A range rewritten meanwhile at the same start lies in another object:
    the stream is not swapped back to the stale copy."""
    (a, b), where = await four_objects_per_stream(meta, 2)
    sources = sorted({where[(a, s)] for s in range(4)} | {where[(b, 0)]})  # not b's 1..3
    runs = [run(a, [0, 1, 2, 3], 0, 4, 0), run(b, [0, 1], 0, 2, 10)]
    done = await meta.replace_ranges(
        "compacted/z.obj", 20, 0, "compacted", runs, 60_000, sources=sources
    )
    assert done == [a]
    swapped = await meta.ranges_in_objects(["compacted/z.obj"])
    assert [(r.stream_id, r.start_offset, r.end_offset) for r in swapped] == [(a, 0, 4)]
    still = await meta.ranges_in_objects([where[(b, 0)], where[(b, 1)]])
    assert sorted(r.start_offset for r in still if r.stream_id == b) == [0, 1]


@pytest.fixture
async def sqlite_meta(tmp_path: Path) -> AsyncIterator[MetaStore]:
    m = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    m.swap_chunk_ranges = 4  # a chunk per stream of four ranges
    yield m
    await m.close()


@pytest.fixture(params=["chunked", "in-memory"])
async def other_sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetaStore]:
    """A file swapping in chunks of four ranges; an in-memory database, whose
    swap's statements go through the engine."""
    if request.param == "chunked":
        m = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
        m.swap_chunk_ranges = 4
    else:
        m = await MetaStore.open("sqlite:///:memory:")
        assert m.sqlite_commits is None
    yield m
    await m.close()


async def test_the_other_sqlite_swaps_give_the_same_answers(other_sqlite: MetaStore) -> None:
    await test_swap_takes_whole_streams_and_leaves_the_rest(other_sqlite)


async def test_the_other_sqlite_swaps_with_sources(other_sqlite: MetaStore) -> None:
    await test_swap_with_sources_counts_only_ranges_still_in_them(other_sqlite)


async def _delete_after(meta: MetaStore, key: str) -> list[int | None]:
    from sqlalchemy import select

    from shoal.meta import schema

    o = schema.objects
    async with meta.engine.connect() as conn:
        rows = await conn.execute(select(o.c.delete_after_ms).where(o.c.key == key))
        return [r.delete_after_ms for r in rows]


async def test_a_first_chunk_that_swaps_nothing_does_not_doom_the_object(
    sqlite_meta: MetaStore,
) -> None:
    """The object has no range after the first chunk: it must not be
    scheduled for deletion, or the later chunks' ranges would point into an
    object the cleaner deletes."""
    a, b = (await four_objects_per_stream(sqlite_meta, 2))[0]
    runs = [run(a, [0, 1, 2, 9], 0, 4, 0), run(b, [0, 1, 2, 3], 0, 4, 10)]  # a: 9 is not there
    done = await sqlite_meta.replace_ranges("compacted/c.obj", 20, 0, "compacted", runs, 60_000)
    assert done == [b]
    assert await _delete_after(sqlite_meta, "compacted/c.obj") == [None]
    # and one that ends up with no range at all is scheduled at the end
    runs = [run(a, [0, 9], 0, 4, 0), run(a, [1, 2], 0, 4, 0)]
    assert await sqlite_meta.replace_ranges("compacted/d.obj", 20, 0, "c", runs, 60_000) == []
    [after] = await _delete_after(sqlite_meta, "compacted/d.obj")
    assert after is not None


async def test_the_cleaner_never_deletes_an_object_ranges_refer_to(meta: MetaStore) -> None:
    """Due but referenced (whatever scheduled it): not handed to the
    cleaner but taken back, unscheduled; an unreferenced due object is
    handed over."""
    from sqlalchemy import update

    from shoal.meta import schema

    _sids, where = await four_objects_per_stream(meta, 1)
    await meta.replace_ranges("compacted/none.obj", 10, 0, "c", [], 0)  # scheduled, due now
    async with meta.engine.begin() as conn:
        await conn.execute(update(schema.objects).values(delete_after_ms=0))
    now = int(time.time() * 1000)
    assert await meta.objects_due(now) == ["compacted/none.obj"]
    for key in where.values():
        assert await _delete_after(meta, key) == [None]
    assert await meta.objects_due(now) == ["compacted/none.obj"]


async def test_commits_go_between_chunks(
    sqlite_meta: MetaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAL commit that arrives during a swap waits for one chunk, not for
    the whole swap."""
    from shoal.meta.store import ObjectCommit

    sids, _where = await four_objects_per_stream(sqlite_meta, 3)
    other = (await sqlite_meta.create_topic(f"o{uuid.uuid4().hex[:6]}", 1, {})).partitions[0]
    order: list[str] = []
    real = sqlite_meta._swap_sqlite_chunk
    commit: list[asyncio.Task[None]] = []

    async def chunk(*args: Any) -> Any:
        order.append("chunk")
        if not commit:
            rc = RangeCommit(other.stream_id, 0, 0, 1, 0, 10, 0)
            c = sqlite_meta.commit_objects([ObjectCommit("wal/late.wal", 10, [rc])], 0)

            async def committed() -> None:
                await c
                order.append("commit")

            commit.append(asyncio.create_task(committed()))
            await asyncio.sleep(0)  # it is waiting for the write lock now
        return await real(*args)

    monkeypatch.setattr(sqlite_meta, "_swap_sqlite_chunk", chunk)
    runs = [run(sid, [0, 1, 2, 3], 0, 4, 10 * i) for i, sid in enumerate(sids)]
    done = await sqlite_meta.replace_ranges("compacted/e.obj", 40, 0, "c", runs, 60_000)
    assert sorted(done) == sorted(sids)
    await commit[0]
    assert order == ["chunk", "commit", "chunk", "chunk"]


async def test_range_rows_are_the_ranges_of_those_objects(meta: MetaStore) -> None:
    """The text compaction's child parses (JSON on SQLite, COPY's on
    PostgreSQL) holds what ranges_in_objects returns for the same objects,
    and their streams once each."""
    import json

    _sids, where = await four_objects_per_stream(meta, 3)
    keys = sorted(set(where.values()))[:5]
    found = await meta.range_rows(keys)
    expected = await meta.ranges_in_objects(keys)
    assert (found.keys is None) == meta.is_sqlite
    assert sorted(found.rows()) == sorted(
        (
            r.stream_id,
            r.start_offset,
            r.end_offset,
            r.object_key,
            r.position,
            r.size,
            r.max_timestamp,
        )
        for r in expected
    )
    assert sorted(json.loads(found.streams)) == sorted({r.stream_id for r in expected})
    nothing = await meta.range_rows(["no/such.obj"])
    assert (nothing.rows(), nothing.streams) == ([], "[]")


async def test_a_compaction_round_swaps_on_both_engines(meta: MetaStore) -> None:
    """A WAL round end to end (its rows read as JSON, planned, written and
    its swap prepared in rewrite.py, run by swap_prepared): every record
    reads back, from the compacted object, through a fresh engine."""
    from shoal.storage.compaction import CompactionConfig

    topic = await meta.create_topic(f"t{uuid.uuid4().hex[:6]}", 3, {})
    sids = [p.stream_id for p in topic.partitions]
    store = FaultyStore()
    cfg = EngineConfig(
        wal=WalConfig(linger_ms=2),
        log_cache_bytes=0,
        block_cache_bytes=0,
        compaction=CompactionConfig(min_age_ms=0, delete_grace_ms=0),
    )
    eng = StreamEngine(store, meta, cfg)
    for _ in range(4):
        for sid in sids:
            batch = validate_batches(make_batch([b"x", b"y"]), 1 << 20)
            await (await eng.append(sid, batch, 0))
    result = await eng.compactor.run_once()
    assert result.streams == 3 and result.objects_out == 1, result
    assert await meta.wal_objects(0, 1 << 62, 1000) == []
    fresh = StreamEngine(store, meta, cfg)
    for sid in sids:
        got = (await fresh.read(sid, 0, 1 << 20)).chunks
        assert [read_header(c).base_offset for c in got] == [0, 2, 4, 6]
    await eng.close()
    await fresh.close()


@pytest.fixture
async def pg_meta() -> AsyncIterator[MetaStore]:
    from cluster_harness import new_database

    m = await MetaStore.open(new_database())
    yield m
    await m.close()


async def _waiting_on_a_lock(meta: MetaStore) -> None:
    """Until a session of this database waits for a row lock."""
    from sqlalchemy import text

    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    for _ in range(600):
        async with meta.engine.connect() as conn:
            if (await conn.execute(query)).scalar_one():
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the swap never waited for the row lock")


async def test_a_postgresql_swap_does_not_hold_up_wal_commits(pg_meta: MetaStore) -> None:
    """A swap's transaction (here held open by a row lock another session
    takes on one of its old ranges) leaves WAL commits free to go, as
    another broker's are; a trim of the swapped stream waits for the swap
    and then finds the new range, not a stale one left below its start."""
    from sqlalchemy import text

    from shoal.meta.store import ObjectCommit

    (a, b), _where = await four_objects_per_stream(pg_meta, 2)
    other = (await pg_meta.create_topic(f"o{uuid.uuid4().hex[:6]}", 1, {})).partitions[0]
    blocker = await pg_meta.engine.connect()
    tx = await blocker.begin()
    # the store ends sessions idle in a transaction after 2 s; not this one
    await blocker.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
    await blocker.execute(
        text("SELECT 1 FROM stream_ranges WHERE stream_id = :a AND start_offset = 0 FOR UPDATE"),
        {"a": a},
    )
    runs = [run(a, [0, 1, 2, 3], 0, 4, 0), run(b, [0, 1, 2, 3], 0, 4, 10)]
    swap = asyncio.create_task(
        pg_meta.replace_ranges("compacted/p.obj", 20, 0, "compacted", runs, 60_000)
    )
    try:
        await _waiting_on_a_lock(pg_meta)
        rc = RangeCommit(other.stream_id, 0, 0, 1, 0, 10, 0)
        await asyncio.wait_for(
            pg_meta.commit_objects([ObjectCommit("wal/beside.wal", 10, [rc])], 0),
            20,  # under the server's 30 s transaction timeout, which would free the swap
        )
        trim = asyncio.create_task(pg_meta.trim_stream(a, 4))
        assert not swap.done()
    finally:
        await tx.rollback()
        await blocker.close()
    assert sorted(await swap) == sorted([a, b])
    assert await trim == 4
    left = await pg_meta.ranges_in_objects(sorted(await pg_meta.object_keys()))
    assert not [r for r in left if r.stream_id == a]
    assert [(r.start_offset, r.end_offset, r.object_key) for r in left if r.stream_id == b] == [
        (0, 4, "compacted/p.obj")
    ]
    assert [r.object_key for r in left if r.stream_id == other.stream_id] == ["wal/beside.wal"]


def test_prepared_columns_give_back_each_streams_swap() -> None:
    """What the broker serves from after a swap comes back from the columns
    as it went in: runs of one stream merged, old starts deduplicated, a
    stream with no new range and one with several."""
    from shoal.meta.range_swap import prepare

    swaps = [
        (7, [0, 1], [(0, 2, 0, 20, 5)]),
        (3, [0, 1, 2], []),
        (7, [2, 3, 3], [(2, 4, 20, 20, 6), (4, 5, 40, 10, 7)]),
        (9, [10], [(10, 11, 50, 10, 8)]),
    ]
    for chunk_ranges in (None, 2):
        columns = prepare(swaps, (), chunk_ranges).columns
        assert columns.streams == [7, 3, 9]
        assert list(columns.of_streams([9, 7])) == [
            (9, [10], [(10, 11, 50, 10, 8)]),
            (7, [0, 1, 2, 3], [(0, 2, 0, 20, 5), (2, 4, 20, 20, 6), (4, 5, 40, 10, 7)]),
        ]
        assert list(columns.of_streams([3])) == [(3, [0, 1, 2], [])]


def test_a_postgresql_swap_is_prepared_as_array_texts() -> None:
    """PostgreSQL's swap binds texts the server casts to arrays (asyncpg
    encoding 300,000 integers held the event loop 55 ms an array), in the
    columns' order; SQLite's is prepared as chunks and has none."""
    from shoal.meta.range_swap import PgArrays, prepare

    swaps = [
        (7, [0, 1], [(0, 2, 0, 20, 5)]),
        (3, [0, 1, 2], []),
        (7, [2], [(2, 4, 20, 20, 6)]),
    ]
    assert prepare(swaps, (), 2).pg is None
    assert prepare(swaps, (), None).pg == PgArrays(
        old_sid="{7,7,7,3,3,3}",
        old_start="{0,1,2,0,1,2}",
        new_sid="{7,7}",
        new_start="{0,2}",
        new_end="{2,4}",
        new_position="{0,20}",
        new_size="{20,20}",
        new_max_timestamp="{5,6}",
    )
    assert prepare([(1, [], [])], (), None).pg == PgArrays(*(["{}"] * 8))
