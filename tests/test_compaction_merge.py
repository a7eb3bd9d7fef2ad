"""The second compaction level (storage/merging.py, Compactor.merge_once):
small compacted objects are merged, mostly dead ones rewritten, nothing read
back changes, and a crash in the middle loses nothing."""

from __future__ import annotations

import itertools
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faults import FaultyStore
from harness import BrokerProcess
from shoal.meta.store import MetaStore, ObjectUsage
from shoal.protocol.records import read_header, validate_batches
from shoal.storage.compaction import CompactionConfig
from shoal.storage.merging import MergePolicy, plan_merge, tier
from shoal.storage.streams import EngineConfig, StreamEngine
from shoal.storage.wal import WalConfig
from test_meta_cli import shoal
from test_reliability import Load, check, create, read_everything
from wire import make_batch


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaStore]:
    m = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    yield m
    await m.close()


def engine(
    meta: MetaStore, store: FaultyStore | None = None, **compaction: int | float
) -> StreamEngine:
    cfg = EngineConfig(
        wal=WalConfig(linger_ms=2),
        log_cache_bytes=0,  # every read comes from the objects
        block_cache_bytes=0,
        compaction=CompactionConfig(
            **{"min_age_ms": 0, "block_bytes": 1024, "delete_grace_ms": 0, **compaction}  # type: ignore[arg-type]
        ),
    )
    return StreamEngine(store or FaultyStore(), meta, cfg)


async def streams(meta: MetaStore, n: int) -> list[int]:
    topic = await meta.create_topic(f"t{time.monotonic_ns()}", n, {})
    return [p.stream_id for p in topic.partitions]


async def read_all(eng: StreamEngine, sid: int) -> list[tuple[int, bytes]]:
    """(base offset, batch bytes) of every batch from the log start."""
    start, end = await eng.bounds(sid)
    out: list[tuple[int, bytes]] = []
    offset = start
    while offset < end:
        chunks = (await eng.read(sid, offset, 1 << 20)).chunks
        assert chunks, f"no batch at {offset} below the end {end}"
        for c in chunks:
            h = read_header(c)
            out.append((h.base_offset, bytes(c)))
            offset = h.base_offset + h.last_offset_delta + 1
    return out


async def compacted(meta: MetaStore) -> list[ObjectUsage]:
    return await meta.compacted_objects(0)


def test_plan_merges_full_tiers_and_mostly_dead_objects_only() -> None:
    policy = MergePolicy(target=8192, min_objects=4, max_objects=10, min_dead_bytes=1024)
    assert [tier(n, policy) for n in (8192, 8191, 2048, 2047, 512, 1)] == [0, 1, 1, 2, 2, 7]
    small = [ObjectUsage(f"s{i}", 600, 600) for i in range(3)]  # tier 2, one short of a merge
    big = ObjectUsage("big", 9000, 9000)
    assert plan_merge([*small, big], policy) == []
    fourth = ObjectUsage("s3", 700, 700)
    assert [o.key for o in plan_merge([*small, big, fourth], policy)] == [
        "s0",
        "s1",
        "s2",
        "s3",
    ]
    # Mostly dead: taken alone; a small dead part is left to the next merge.
    dead = ObjectUsage("dead", 9000, 1000)
    assert [o.key for o in plan_merge([big, dead], policy)] == ["dead"]
    assert plan_merge([big, ObjectUsage("index", 400, 100)], policy) == []
    # Bounded: most objects and live bytes per round.
    many = [ObjectUsage(f"m{i}", 100, 100) for i in range(30)]
    assert len(plan_merge(many, policy)) == 10
    assert len(plan_merge(many, MergePolicy(target=8192, min_objects=4, max_bytes=450))) == 4
    assert plan_merge(many, MergePolicy(target=8192, max_objects=0)) == []


def test_merge_defaults_are_the_config_keys_defaults() -> None:
    """Written once, in config.py: CompactionConfig and MergePolicy derive."""
    from shoal.config import BROKER_KEYS

    def key(name: str) -> object:
        return BROKER_KEYS[name].default

    policy = CompactionConfig().merge_policy
    assert policy == MergePolicy(target=key("compaction.stream.object.bytes"))
    assert policy.min_objects == key("compaction.merge.min.objects")
    assert policy.max_objects == key("compaction.merge.max.objects")
    assert policy.max_bytes == key("compaction.max.bytes")
    assert policy.rewrite_live_ratio == key("compaction.rewrite.live.ratio")
    assert policy.min_dead_bytes == key("compaction.block.bytes")
    assert CompactionConfig().delete_grace_ms == key("object.delete.grace.ms")


async def test_small_compacted_objects_merge_and_read_back_the_same(meta: MetaStore) -> None:
    sids = await streams(meta, 3)
    eng = engine(meta, stream_object_bytes=64 * 1024, merge_min_objects=4)
    for round_ in range(12):  # one compacted object per round, ~3 streams each
        for sid in sids:
            await (
                await eng.append(sid, validate_batches(make_batch([b"r%d" % round_]), 1 << 20), 0)
            )
        await eng.compactor.run_once()
    before = {sid: await read_all(eng, sid) for sid in sids}
    assert len(await compacted(meta)) == 12
    result = await eng.compactor.merge_once()
    assert result.objects_in == 12 and result.objects_out == 1, result
    await eng.cleaner.run_once(orphans=False)
    assert len(await compacted(meta)) == 1
    assert {o.key for o in await eng.store.list("")} == await meta.object_keys()
    for sid in sids:
        assert await read_all(eng, sid) == before[sid]
    cold = engine(meta, eng.store)  # type: ignore[arg-type]  # a fresh engine reads the merged object's ranges from metadata
    for sid in sids:
        assert await read_all(cold, sid) == before[sid]
    await eng.close()
    await cold.close()


async def test_a_mostly_dead_object_is_rewritten_and_deleted(meta: MetaStore) -> None:
    """A kept stream's few bytes pinned a shared object whose other stream
    retention trimmed: the live ranges move, the dead object goes."""
    kept, trimmed = await streams(meta, 2)
    eng = engine(meta, merge_min_objects=100)  # no tier merge: only the dead rule
    for i in range(3):
        await (await eng.append(kept, validate_batches(make_batch([b"k%d" % i]), 1 << 20), 0))
        big = validate_batches(make_batch([b"x" * 2000]), 1 << 20)
        await (await eng.append(trimmed, big, 0))
        await eng.compactor.run_once()
    before = await read_all(eng, kept)
    await eng.trim(trimmed, 3)
    await eng.cleaner.run_once(orphans=False)
    old = {o.key for o in await compacted(meta)}
    assert len(old) == 3, "retention alone freed the shared objects"
    result = await eng.compactor.merge_once()
    assert result.rewritten == 3 and result.objects_out == 1, result
    await eng.cleaner.run_once(orphans=False)
    left = {o.key for o in await compacted(meta)}
    assert len(left) == 1 and not left & old
    assert {o.key for o in await eng.store.list("")} == await meta.object_keys()
    [usage] = await compacted(meta)
    assert usage.size - usage.live < 200, usage  # only index, labels and footer are not live
    assert await read_all(eng, kept) == before
    await eng.close()


class CountingStore(FaultyStore):
    """Counts the object reads a merge makes (whole and ranged)."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    async def get(self, key: str) -> bytes:
        self.gets += 1
        return await super().get(key)

    async def get_range(self, key: str, start: int, end: int) -> memoryview:
        self.gets += 1
        return await super().get_range(key, start, end)


async def test_a_small_half_dead_object_is_read_in_one_get(meta: MetaStore) -> None:
    """Objects whose dead part is under a block are read whole, not a
    request per live range: merging four objects of three kept streams and
    a trimmed one takes four GETs, not twelve."""
    *kept, trimmed = await streams(meta, 4)
    store = CountingStore()
    eng = engine(meta, store, merge_min_objects=4)
    for i in range(4):
        for sid in kept:
            await (await eng.append(sid, validate_batches(make_batch([b"k%d" % i]), 1 << 20), 0))
        big = validate_batches(make_batch([b"x" * 600]), 1 << 20)
        await (await eng.append(trimmed, big, 0))
        await eng.compactor.run_once()
    before = {sid: await read_all(eng, sid) for sid in kept}
    await eng.trim(trimmed, 4)
    objects = await compacted(meta)
    assert len(objects) == 4 and all(2 * o.live < o.size for o in objects), objects
    store.gets = 0
    result = await eng.compactor.merge_once()
    assert result.objects_in == 4 and result.objects_out == 1 and result.rewritten == 0, result
    assert store.gets == 4
    for sid in kept:
        assert await read_all(eng, sid) == before[sid]
    await eng.close()


async def test_merged_key_compacted_ranges_still_cover_removed_offsets(meta: MetaStore) -> None:
    """Key compaction leaves ranges wider than their batches (offsets whose
    records went); a merge keeps every offset covered, so a read at a removed
    offset gets the next batch instead of nothing."""
    from shoal.storage.keycompaction import KeyCompactionPolicy

    sids = await streams(meta, 4)
    eng = engine(meta, stream_object_bytes=64 * 1024, merge_min_objects=4)
    for sid in sids:
        for value in (b"old", b"new"):
            batch = validate_batches(make_batch([value], keys=[b"k"]), 1 << 20)
            await (await eng.append(sid, batch, 0))
        await (await eng.append(sid, validate_batches(make_batch([b"z"], keys=[b"j"]), 1 << 20), 0))
        policy = KeyCompactionPolicy(int(time.time() * 1000) + 1000, 0, 1 << 40, 0.0, 1024)
        assert await eng.compact_keys(sid, policy)
    assert len(await compacted(meta)) == 4
    before = {sid: await read_all(eng, sid) for sid in sids}
    assert [o for o, _b in before[sids[0]]] == [1, 2]  # offset 0's record went
    result = await eng.compactor.merge_once()
    assert result.objects_in == 4 and result.objects_out == 1, result
    for sid in sids:
        ranges = await meta.load_ranges(sid)
        assert ranges[0].start_offset == 0 and ranges[-1].end_offset == 3
        assert all(a.end_offset == b.start_offset for a, b in itertools.pairwise(ranges))
        assert await read_all(eng, sid) == before[sid]
    await eng.close()


async def test_a_gone_brokers_objects_are_merged_by_another(meta: MetaStore) -> None:
    """The controller merges the compacted objects of a broker that is gone
    (merge_once(node)): the new object is its own, the reads the same."""
    import dataclasses

    [sid] = await streams(meta, 1)
    template = engine(meta, merge_min_objects=4)
    gone = StreamEngine(template.store, meta, dataclasses.replace(template.config, node_id=7))
    await template.close()
    for i in range(4):
        await (await gone.append(sid, validate_batches(make_batch([b"g%d" % i]), 1 << 20), 0))
        await gone.compactor.run_once()
    before = await read_all(gone, sid)
    await gone.close()
    assert len(await meta.compacted_objects(7)) == 4
    cfg = dataclasses.replace(gone.config, node_id=1)
    controller = StreamEngine(gone.store, meta, cfg)
    assert (await controller.compactor.merge_once()).objects_in == 0  # not its own objects
    result = await controller.compactor.merge_once(7)
    assert result.objects_in == 4 and result.objects_out == 1, result
    assert await meta.compacted_objects(7) == []
    [merged] = await meta.compacted_objects(1)
    assert merged.key.startswith("compacted/1/")
    assert await read_all(controller, sid) == before
    await controller.close()


def test_merges_under_load_survive_kill_9(fresh_broker: BrokerProcess, topic_name: str) -> None:
    """A real client's records through WAL compaction, merges and mostly-dead
    rewrites, with the broker killed (-9) three times at random moments while
    merges run: every acknowledged record reads back once at its offset, the
    objects end far fewer than compaction wrote, and the store holds no
    object the metadata does not know (orphans of a killed merge swept)."""
    b = fresh_broker
    b.env.update(
        {
            "SHOAL_LOG_RETENTION_CHECK_INTERVAL_MS": "200",
            "SHOAL_COMPACTION_INTERVAL_MS": "200",
            "SHOAL_COMPACTION_MIN_AGE_MS": "0",
            "SHOAL_COMPACTION_BLOCK_BYTES": "4096",
            "SHOAL_COMPACTION_STREAM_OBJECT_BYTES": "1048576",
            "SHOAL_COMPACTION_MERGE_MIN_OBJECTS": "2",  # a merge nearly every round
            "SHOAL_OBJECT_DELETE_GRACE_MS": "200",
            "SHOAL_OBJECT_ORPHAN_GRACE_MS": "1000",
        }
    )
    b.start()
    kept = topic_name
    create(b.bootstrap, kept, 2)
    create(b.bootstrap, f"{kept}-rolling", 2, **{"retention.ms": "1000"})
    load = Load(b.bootstrap, kept, producers=1, partitions=2).start()
    rolling = Load(b.bootstrap, f"{kept}-rolling", producers=2, partitions=2).start()
    rng = random.Random(17)
    for _ in range(3):
        _wait_for_merges(b, 3)
        time.sleep(rng.uniform(0, 0.2))  # somewhere in a round, often inside a merge
        b.kill()
        b.start()
    _wait_for_merges(b, 3)
    rolling.stop()
    load.stop()
    assert len(load.acked) > 500, f"too little load to mean anything: {len(load.acked)}"
    assert not load.errors, load.errors[:3]
    # Quiet: the last merges run, replaced objects and orphans are deleted.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        objects, known = _objects(b)
        if objects == known and len(objects) < 10:
            break
        time.sleep(0.2)
    log = b.log()
    written = sum(
        int(n) for n in re.findall(r"compacted \d+ WAL objects .* into (\d+) objects", log)
    )
    assert objects == known, f"store and metadata differ: {sorted(objects ^ known)[:5]}"
    assert len(objects) < 10 < written, f"{len(objects)} objects left of {written} compacted"
    assert re.search(r"[1-9]\d* mostly dead", log), "no mostly dead object was rewritten"
    check(load, read_everything(b.bootstrap, kept, 2))
    # Ranges line up with the merged objects' indexes: no gap, no overlap.
    b.stop()
    args = ["meta", "check", "--data-dir", str(b.data_dir)]
    if "--objects" in b.args:  # SHOAL_TEST_STORE=s3
        args += ["--objects", b.args[b.args.index("--objects") + 1]]
    result = shoal(*args, env=b.env)
    assert result.exit_code == 0, result.output


def _wait_for_merges(b: BrokerProcess, more: int) -> None:
    seen = b.log().count("merged ")
    deadline = time.monotonic() + 60
    while b.log().count("merged ") < seen + more:
        assert time.monotonic() < deadline, f"fewer than {more} merge rounds in 60 s"
        time.sleep(0.05)


def _objects(b: BrokerProcess) -> tuple[set[str], set[str]]:
    """Keys in the store, and keys the metadata (SQLite) names."""
    import sqlite3

    # An upload to a file store cut by kill -9 (a WAL one, nearly always,
    # under this load) leaves obstore's staging file KEY#N behind, which the
    # orphan sweep removes only after its 10-minute grace: not counted here.
    in_store = {k for k in b.objects() if not re.search(r"#\d+$", k)}
    with sqlite3.connect(b.data_dir / "meta.db") as db:
        known = {key for (key,) in db.execute("select key from objects")}
    return in_store, known


async def test_blocks_of_swapped_out_and_deleted_objects_leave_the_block_cache(
    meta: MetaStore,
) -> None:
    """Blocks of an object merged away, of trimmed ranges, and of an object
    another broker's cleaner deleted can never be read again: they leave the
    cache at once instead of pushing live blocks out."""
    import dataclasses

    from test_caches import block_accounting

    sids = await streams(meta, 2)
    # A long grace: the swapped-out objects are still in the store and in
    # the metadata when the merge returns.
    eng = engine(meta, merge_min_objects=4, delete_grace_ms=3_600_000)
    eng.block_cache = type(eng.block_cache)(1 << 20)
    eng.cleaner.cache = eng.block_cache
    for round_ in range(4):
        for sid in sids:
            batch = validate_batches(make_batch([b"%d" % round_ * 700]), 1 << 20)
            await (await eng.append(sid, batch, 0))  # a block per batch
        await eng.compactor.run_once()
    before = {sid: await read_all(eng, sid) for sid in sids}
    old = {o.key for o in await compacted(meta)}
    assert len(old) == 4 and eng.block_cache.object_keys() == old
    result = await eng.compactor.merge_once()
    assert result.objects_in == 4 and result.objects_out == 1, result
    assert not eng.block_cache.object_keys() & old
    assert block_accounting(eng.block_cache) == (eng.block_cache.size, set())
    for sid in sids:
        assert await read_all(eng, sid) == before[sid]
    [merged] = eng.block_cache.object_keys()
    await eng.trim(sids[0], 2)  # ranges below the new start go from the cache
    assert len(eng.block_cache) == 2 + 4, "a block per batch kept: 2 of one stream, 4 of the other"
    assert block_accounting(eng.block_cache) == (eng.block_cache.size, {merged})
    # Another broker's retention frees the merged object and its cleaner
    # deletes it: this broker's next cleaner round notices the row is gone.
    other = StreamEngine(eng.store, meta, dataclasses.replace(eng.config, node_id=1))
    for sid in sids:
        await (await other.append(sid, validate_batches(make_batch([b"o"]), 1 << 20), 0))
    await other.compactor.run_once()
    await meta.trim_stream(sids[0], 4, 0)
    await meta.trim_stream(sids[1], 4, 0)
    await other.cleaner.run_once(orphans=False)
    assert merged not in await meta.object_keys()
    assert merged in eng.block_cache.object_keys()
    await eng.cleaner.run_once(orphans=False)
    assert eng.block_cache.object_keys() == set() and eng.block_cache.size == 0
    await other.close()
    await eng.close()
