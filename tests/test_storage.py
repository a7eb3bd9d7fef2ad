"""The stream engine on a memory object store and a real SQLite file."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faults import FaultyStore
from shoal.meta.store import MetaError, MetaStore
from shoal.protocol.records import read_header, validate_batches
from shoal.storage.errors import CorruptObject, Fenced, OffsetOutOfRange
from shoal.storage.format import BlockBuilder, decode_object, encode_object
from shoal.storage.objectstore import Payload
from shoal.storage.producers import OutOfOrderSequence
from shoal.storage.streams import EngineConfig, StreamEngine
from shoal.storage.wal import IDLE_SEAL_MS, WalConfig
from wire import make_batch


def batch(*values: bytes) -> list:  # type: ignore[type-arg]
    return validate_batches(make_batch(list(values)), 1 << 20)


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaStore]:
    m = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    yield m
    await m.close()


async def new_stream(meta: MetaStore, partitions: int = 1) -> list[int]:
    import uuid

    topic = await meta.create_topic(f"t{uuid.uuid4().hex[:6]}", partitions, {})
    return [p.stream_id for p in topic.partitions]


def engine(store: FaultyStore, meta: MetaStore, **wal: object) -> StreamEngine:
    cfg = EngineConfig(wal=WalConfig(**{"linger_ms": 2, **wal}), log_cache_bytes=1 << 20)  # type: ignore[arg-type]
    return StreamEngine(store, meta, cfg)


def offsets_of(chunks: list[bytes | memoryview]) -> list[int]:
    return [read_header(c).base_offset for c in chunks]


async def test_append_read_dense_offsets(meta: MetaStore) -> None:
    [sid] = await new_stream(meta)
    eng = engine(FaultyStore(), meta)
    futs = [await eng.append(sid, batch(b"a", b"b"), 0) for _ in range(5)]
    assert [await f for f in futs] == [0, 2, 4, 6, 8]
    result = await eng.read(sid, 0, 1 << 20)
    assert offsets_of(result.chunks) == [0, 2, 4, 6, 8]
    assert result.high_watermark == 10
    # A read in the middle of a batch starts at that batch.
    assert offsets_of((await eng.read(sid, 3, 1 << 20)).chunks)[0] == 2
    with pytest.raises(OffsetOutOfRange):
        await eng.read(sid, 11, 100)
    await eng.close()


async def test_high_watermark_moves_only_at_commit(meta: MetaStore) -> None:
    [sid] = await new_stream(meta)
    store = FaultyStore()
    store.put_delays = [0.3]
    eng = engine(store, meta)
    fut = await eng.append(sid, batch(b"x"), 0)
    await asyncio.sleep(0.1)
    assert (await eng.bounds(sid))[1] == 0  # uploaded? not yet: nothing visible
    assert (await eng.read(sid, 0, 100)).chunks == []
    assert await fut == 0
    assert (await eng.bounds(sid))[1] == 1
    await eng.close()


async def test_commits_apply_in_order_when_uploads_finish_out_of_order(meta: MetaStore) -> None:
    [sid] = await new_stream(meta)
    store = FaultyStore()
    store.put_delays = [0.4, 0.0, 0.0]  # the first object uploads last
    eng = engine(store, meta, linger_ms=1)
    await eng.open(sid)  # else the first appends may queue behind the open together
    done: list[int] = []
    futs = []
    for _ in range(3):
        f = await eng.append(sid, batch(b"v"), 0)
        f.add_done_callback(lambda f: done.append(f.result()))
        futs.append(f)
        await asyncio.sleep(0.02)  # each append in its own WAL object
    await asyncio.gather(*futs)
    assert done == [0, 1, 2]
    ranges = await meta.load_ranges(sid)
    assert [(r.start_offset, r.end_offset) for r in ranges] == [(0, 1), (1, 2), (2, 3)]
    await eng.close()


async def test_store_outage_is_retried_without_loss_or_duplicates(meta: MetaStore) -> None:
    [sid] = await new_stream(meta)
    store = FaultyStore()
    store.fail_puts = 4
    eng = engine(store, meta, retry_backoff_ms=5)
    futs = [await eng.append(sid, batch(b"%d" % i), 0) for i in range(10)]
    assert [await f for f in futs] == list(range(10))
    assert store.failed_puts == 4
    assert offsets_of((await eng.read(sid, 0, 1 << 20)).chunks) == list(range(10))
    await eng.close()


async def test_a_retried_upload_to_a_remote_store_is_joined_once(meta: MetaStore) -> None:
    """The WAL object's buffers become one buffer once, before the first
    attempt: every retry sends that same buffer (a join per attempt copied
    the whole object again)."""
    [sid] = await new_stream(meta)
    sent: list[object] = []

    class Watched(FaultyStore):
        async def put(self, key: str, data: Payload, *, create: bool = True) -> None:
            sent.append(data)
            await super().put(key, data, create=create)

    store = Watched()
    store.fail_puts = 3
    eng = engine(store, meta, retry_backoff_ms=5)
    assert await (await eng.append(sid, batch(b"a", b"b"), 0)) == 0
    assert len(sent) == 4 and isinstance(sent[0], bytes)
    assert all(s is sent[0] for s in sent)
    await eng.close()


async def test_back_pressure_waits_instead_of_failing(meta: MetaStore) -> None:
    [sid] = await new_stream(meta)
    store = FaultyStore()
    store.put_delays = [0.2] * 50
    eng = engine(store, meta, buffer_max_bytes=2048, max_bytes=1024)
    big = b"x" * 900
    futs = [await eng.append(sid, batch(big), 0) for _ in range(10)]
    assert eng.wal.unflushed <= 2048 + 1100  # bounded, never the whole backlog
    assert [await f for f in futs] == list(range(10))
    await eng.close()


async def test_restart_reads_from_objects(meta: MetaStore) -> None:
    [a, b] = await new_stream(meta, 2)
    store = FaultyStore()
    eng = engine(store, meta)
    for i in range(20):
        await (await eng.append(a if i % 2 else b, batch(b"r%d" % i), 0))
    await eng.close()
    again = engine(store, meta)  # cold caches: every read goes to objects
    ra = await again.read(a, 0, 1 << 20)
    rb = await again.read(b, 0, 1 << 20)
    assert offsets_of(ra.chunks) == list(range(10))
    assert offsets_of(rb.chunks) == list(range(10))
    assert again.block_cache.stats.misses > 0
    # A max_bytes smaller than one batch still returns that whole batch.
    one = await again.read(a, 0, 1)
    assert len(one.chunks) == 1
    await again.close()


async def test_catch_up_pacing_charges_bytes_served(meta: MetaStore) -> None:
    """Small fetches that stop inside a block are charged for what they return,
    not for the whole block each time (which held catch-up reads far below the
    configured rate)."""
    [sid] = await new_stream(meta)
    store = FaultyStore()
    eng = engine(store, meta, linger_ms=50)
    futs = [await eng.append(sid, batch(b"v" * 100), 0) for _ in range(40)]
    await asyncio.gather(*futs)  # one WAL object: one block holding 40 batches
    await eng.close()
    cold = StreamEngine(
        store, meta, EngineConfig(log_cache_bytes=1 << 20, catchup_bytes_per_s=10**12)
    )
    offset, served, fetches = 0, 0, 0
    while True:
        res = await cold.read(sid, offset, 300)  # about two batches per fetch
        if not res.chunks:
            break
        fetches += 1
        served += sum(len(c) for c in res.chunks)
        offset = read_header(res.chunks[-1]).last_offset + 1
    assert offset == 40 and fetches >= 10
    assert cold.catchup.taken_bytes == served
    await cold.close()


async def test_catch_up_is_paced_only_while_producers_are_active(meta: MetaStore) -> None:
    """Pacing protects live traffic: with no produce in the last seconds a
    backlog is read flat out; once producers append, catch-up reads wait."""
    [sid, other] = await new_stream(meta, 2)
    store = FaultyStore()
    eng = engine(store, meta, linger_ms=50)
    futs = [await eng.append(sid, batch(b"v" * 1000), 0) for _ in range(200)]
    await asyncio.gather(*futs)
    await eng.close()
    cold = StreamEngine(
        store,
        meta,
        EngineConfig(log_cache_bytes=1 << 20, catchup_bytes_per_s=200_000),  # 20 kB burst
    )
    assert len((await cold.read(sid, 0, 150_000)).chunks) > 100  # ~200 kB: past the burst
    assert cold.catchup.waited_s == 0.0  # nobody producing: not paced
    await (await cold.append(other, batch(b"live"), 0))
    assert len((await cold.read(sid, 100, 150_000)).chunks) == 100
    assert cold.catchup.waited_s > 0.3  # a producer is active: ~100 kB at 200 kB/s
    await cold.close()


async def test_a_read_that_must_fit_returns_nothing_too_large(meta: MetaStore) -> None:
    """A fetch filling the rest of its response reads only what it can send;
    the first partition with data still gets one batch larger than the limit."""
    [sid] = await new_stream(meta)
    store = FaultyStore()
    eng = engine(store, meta)
    await (await eng.append(sid, batch(b"x" * 500), 0))
    size = len((await eng.read(sid, 0, 1)).chunks[0])
    assert size > 500  # at least one batch, whatever the limit
    assert (await eng.read(sid, 0, 100, at_least_one=False)).chunks == []  # LogCache
    assert len((await eng.read(sid, 0, size, at_least_one=False)).chunks) == 1
    await eng.close()
    cold = engine(store, meta)  # from the object
    assert (await cold.read(sid, 0, 100, at_least_one=False)).chunks == []
    assert cold.catchup.taken_bytes == 0
    assert len((await cold.read(sid, 0, 100)).chunks) == 1
    await cold.close()


async def test_compaction_swaps_several_runs_of_one_stream(meta: MetaStore) -> None:
    """Two runs of one stream in one compacted object (a gap between them) are
    swapped together, not refused because their counts were summed."""
    from shoal.meta.store import RangeCommit

    [sid] = await new_stream(meta)
    eng = engine(FaultyStore(), meta)
    for i in range(4):  # four WAL objects, one range each
        await (await eng.append(sid, batch(b"r%d" % i), 0))
    await eng.close()
    keys = sorted(await meta.object_keys())
    assert sorted(r.start_offset for r in await meta.ranges_in_objects(keys)) == [0, 1, 2, 3]
    runs = [
        (sid, [0, 1], [RangeCommit(sid, 0, 0, 2, 0, 10, 0)]),
        (sid, [2, 3], [RangeCommit(sid, 0, 2, 4, 10, 10, 0)]),
    ]
    done = await meta.replace_ranges("compacted/x.obj", 20, 0, "set", runs, 60_000)
    assert done == [sid]
    swapped = await meta.ranges_in_objects(["compacted/x.obj"])
    assert [(r.start_offset, r.end_offset) for r in swapped] == [(0, 2), (2, 4)]


async def test_a_long_run_compacts_into_objects_retention_can_free(meta: MetaStore) -> None:
    """A stream's run is cut into objects of about stream_object_bytes, so
    trimming its older half frees whole objects (one object per run kept
    everything until the newest record expired)."""
    from shoal.storage.compaction import CompactionConfig

    [sid] = await new_stream(meta)
    cfg = EngineConfig(
        wal=WalConfig(linger_ms=2),
        log_cache_bytes=1 << 20,
        compaction=CompactionConfig(
            min_age_ms=0, block_bytes=1024, stream_object_bytes=4096, delete_grace_ms=0
        ),
    )
    eng = StreamEngine(FaultyStore(), meta, cfg)
    for i in range(40):  # forty WAL objects of ~330 bytes: one run of ~13 KB
        await (await eng.append(sid, batch(b"%03d" % i + b"." * 250), 0))
    result = await eng.compactor.run_once()
    assert result.objects_in == 40
    assert 3 <= result.objects_out <= 4, result
    keys = [k for k in await meta.object_keys() if k.startswith("compacted/")]
    assert len(keys) == result.objects_out
    # Every record still reads back once, in order, from the new objects.
    offsets: list[int] = []
    while len(offsets) < 40:
        offsets += offsets_of((await eng.read(sid, len(offsets), 1 << 20)).chunks)
    assert offsets == list(range(40))
    await eng.apply_retention(sid, 0, -1, 6000)
    await eng.cleaner.run_once(orphans=False)
    left = [k for k in await meta.object_keys() if k.startswith("compacted/")]
    assert 0 < len(left) < len(keys)
    (lo, hi) = await eng.bounds(sid)
    assert hi == 40 and 0 < lo
    await eng.close()


async def test_compaction_catches_up_with_more_wal_objects_than_a_round(
    meta: MetaStore,
) -> None:
    """A round takes 256 WAL objects; catch_up goes on until none is left
    (one round per interval let a fleet's WAL objects pile up without
    bound), and stops at its deadline however many are left."""
    import time

    from shoal.storage.compaction import CompactionConfig

    sids = await new_stream(meta, partitions=4)
    cfg = EngineConfig(
        wal=WalConfig(linger_ms=0),
        log_cache_bytes=1 << 20,
        compaction=CompactionConfig(min_age_ms=0, max_objects=16),
    )
    eng = StreamEngine(FaultyStore(), meta, cfg)
    for i in range(70):  # one WAL object each: 70 objects, rounds of 16
        await (await eng.append(sids[i % 4], batch(b"%03d" % i), 0))
    assert len(await meta.wal_objects(0, 1 << 62, 1000)) == 70
    first = await eng.compactor.catch_up(time.monotonic())  # deadline passed: one round
    assert (first.objects_in, first.more) == (16, True)
    rest = await eng.compactor.catch_up(time.monotonic() + 60)
    assert rest.objects_in == 54 and not rest.more
    assert await meta.wal_objects(0, 1 << 62, 1000) == []
    for i, sid in enumerate(sids):
        got = offsets_of((await eng.read(sid, 0, 1 << 20)).chunks)
        assert got == list(range(len(range(i, 70, 4)))), (sid, got)
    await eng.close()


async def test_a_second_writer_fences_the_first(meta: MetaStore) -> None:
    [sid] = await new_stream(meta)
    store = FaultyStore()
    first = engine(store, meta)
    await (await first.append(sid, batch(b"a"), 0))
    second = engine(store, meta)
    await second.open(sid)  # takes the stream: epoch bump
    late = await first.append(sid, batch(b"stale"), 0)
    with pytest.raises(Fenced):
        await late
    assert await (await second.append(sid, batch(b"b"), 0)) == 1
    await first.close()
    await second.close()


async def test_trim_moves_log_start(meta: MetaStore) -> None:
    [sid] = await new_stream(meta)
    eng = engine(FaultyStore(), meta)
    for _ in range(5):
        await (await eng.append(sid, batch(b"a"), 0))
    assert await eng.trim(sid, 3) == 3
    assert eng.log_cache.first_offset(sid) == 3  # what no one can read leaves the cache
    assert await eng.trim(sid, 1) == 3  # never backwards
    with pytest.raises(OffsetOutOfRange):
        await eng.read(sid, 2, 100)
    assert offsets_of((await eng.read(sid, 3, 1 << 20)).chunks) == [3, 4]
    await eng.close()


async def test_timestamp_lookup(meta: MetaStore) -> None:
    [sid] = await new_stream(meta)
    eng = engine(FaultyStore(), meta)
    for ts in (1000, 2000, 3000):
        b = validate_batches(make_batch([b"a", b"b"], base_timestamp=ts), 1 << 20)
        await (await eng.append(sid, b, 0))
    assert await eng.offset_for_timestamp(sid, 1500) == (2, 2000)
    assert await eng.offset_for_timestamp(sid, 0) == (0, 1000)
    assert await eng.offset_for_timestamp(sid, 9999) is None
    assert await eng.max_timestamp(sid) == (4, 3000)
    await eng.close()


def test_object_format_round_trip_and_corruption() -> None:
    b1 = BlockBuilder(1, 0, 2, 10, [b"aa"], 2)
    b2 = BlockBuilder(7, 5, 9, 20, [b"bbb", b"c"], 4)
    data, entries = encode_object([b1, b2])
    assert decode_object(data) == entries
    assert [(e.stream_id, e.position, e.size) for e in entries] == [(1, 0, 2), (7, 2, 4)]
    damaged = bytearray(data)
    damaged[8] ^= 0xFF  # inside the index
    with pytest.raises(CorruptObject):
        decode_object(bytes(damaged))
    with pytest.raises(CorruptObject):
        decode_object(data[:-1])


async def test_idle_producers_expire(meta: MetaStore) -> None:
    [sid] = await new_stream(meta)
    eng = engine(FaultyStore(), meta)

    def seq_batch(seq: int) -> list:  # type: ignore[type-arg]
        data = make_batch([b"x"], producer_id=7, producer_epoch=0, base_sequence=seq)
        return validate_batches(data, 1 << 20)

    assert await (await eng.append(sid, seq_batch(0), 0)) == 0
    with pytest.raises(OutOfOrderSequence):
        await eng.append(sid, seq_batch(5), 0)
    assert eng.expire_producers(cutoff_ms=2**62) == 1
    assert await meta.expire_producers(2**62) == 1
    # A forgotten producer may resume at any sequence, as Kafka allows.
    assert await (await eng.append(sid, seq_batch(5), 0)) == 1
    await eng.close()


async def test_a_slow_commit_is_not_an_orphan(meta: MetaStore) -> None:
    """An upload whose commit is still pending (a metadata outage longer than
    the orphan grace) must survive the garbage collector."""
    [sid] = await new_stream(meta)
    store = FaultyStore()
    eng = engine(store, meta)
    eng.cleaner.orphan_grace_ms = 0
    real_commit = meta.commit_objects
    gate = asyncio.Event()

    async def stalled(*args: object, **kw: object) -> None:
        await gate.wait()
        await real_commit(*args, **kw)  # type: ignore[arg-type]

    meta.commit_objects = stalled  # type: ignore[method-assign]
    fut = await eng.append(sid, batch(b"precious"), 0)
    for _ in range(100):
        if store.puts:
            break
        await asyncio.sleep(0.01)
    assert store.puts == 1
    result = await eng.cleaner.run_once()
    assert result.orphans == 0
    gate.set()
    assert await fut == 0
    assert offsets_of((await eng.read(sid, 0, 1 << 20)).chunks) == [0]
    eng.log_cache.drop_stream(sid)
    eng.block_cache = type(eng.block_cache)(1 << 20)
    assert offsets_of((await eng.read(sid, 0, 1 << 20)).chunks) == [0]  # from the object
    await eng.close()


async def test_a_cut_short_uploads_file_is_swept(meta: MetaStore, tmp_path: Path) -> None:
    """kill -9 during an upload to a file store leaves obstore's staging file
    KEY#N, which the store does not list: the orphan sweep removes it once
    it is older than the grace period, and leaves a fresh one (an upload
    still being written) and real objects alone."""
    import os
    import time

    from shoal.storage.cleaner import Cleaner
    from shoal.storage.objectstore import ObjectStore

    store = ObjectStore((tmp_path / "objects").as_uri())
    await store.put("wal/1/00000000000000000001.wal", b"committed or not, listed")
    wal = tmp_path / "objects" / "wal" / "1"
    old, fresh = wal / "00000000000000000002.wal#7", wal / "00000000000000000003.wal#8"
    old.write_bytes(b"half an object")
    fresh.write_bytes(b"being written")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert [i.key for i in await store.list("wal/")] == ["wal/1/00000000000000000001.wal"]
    cleaner = Cleaner(store, meta, orphan_grace_ms=60_000)
    cleaner.uploading.add("wal/1/00000000000000000001.wal")  # not an orphan here
    result = await cleaner.run_once()
    assert result.orphans == 1
    assert not old.exists() and fresh.exists()
    assert [i.key for i in await store.list("wal/")] == ["wal/1/00000000000000000001.wal"]


@pytest.mark.parametrize("nodes", [None, {1}])
async def test_an_unused_spare_file_is_swept_without_a_warning(
    meta: MetaStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    nodes: set[int] | None,
) -> None:
    """A file store keeps deleted objects' files as spares (storage/spares.py):
    one left unused past the grace period goes as a cut-short upload's file
    does, in a cluster's sweep of its own broker's uploads too (`nodes`),
    but it is no sign of a crash: neither logged nor counted as one."""
    import os
    import time

    from shoal.storage.cleaner import Cleaner
    from shoal.storage.objectstore import ObjectStore

    store = ObjectStore((tmp_path / "objects").as_uri())
    for key in ("wal/1/1.wal", "wal/1/2.wal"):
        await store.put(key, b"compacted away")
    await store.delete_many(["wal/1/1.wal", "wal/1/2.wal"])
    old, fresh = sorted((tmp_path / "objects" / "_spare").iterdir())
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    with caplog.at_level(logging.DEBUG, logger="shoal.cleaner"):
        result = await Cleaner(store, meta, orphan_grace_ms=60_000).run_once(nodes=nodes)
    assert result.orphans == 0
    assert not old.exists() and fresh.exists()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("spare" in r.getMessage() for r in caplog.records)


async def test_catch_up_rate_accounts_debt() -> None:
    from shoal.storage.throttle import ByteRate

    free = ByteRate(0)
    await free.take(10**9)
    assert free.waited_s == 0.0
    bucket = ByteRate(1_000_000, burst_s=0.01)  # 10 kB of burst
    await bucket.take(5_000)
    assert bucket.waited_s == 0.0  # within the burst
    await bucket.take(25_000)  # 20 kB of debt at 1 MB/s: about 20 ms of waiting
    assert 0.015 <= bucket.waited_s <= 0.025


async def test_eager_wal_flushes_a_lone_append_without_the_linger(meta: MetaStore) -> None:
    """On a local store an append with nothing else in flight is written at
    once: with a one-minute linger it still commits (it would time out here
    if it waited for the linger)."""
    [sid] = await new_stream(meta)
    eng = engine(FaultyStore(), meta, linger_ms=60_000, eager=True)
    fut = await eng.append(sid, batch(b"a"), 0)
    assert await asyncio.wait_for(fut, 10) == 0
    await eng.close()


async def test_eager_wal_gathers_appends_behind_a_flush_in_progress(meta: MetaStore) -> None:
    """While one flush uploads, later appends gather (group commit) and go as
    one object as soon as it commits, not after the linger."""
    [sid] = await new_stream(meta)
    store = FaultyStore()
    store.put_delays = [0.5]  # the first upload is slow
    uploading = asyncio.Event()
    put = store.put

    async def watched_put(
        key: str, data: bytes | bytearray | memoryview, *, create: bool = True
    ) -> None:
        uploading.set()
        await put(key, data, create=create)

    store.put = watched_put  # type: ignore[method-assign]
    eng = engine(store, meta, linger_ms=60_000, eager=True)
    first = await eng.append(sid, batch(b"a"), 0)
    await asyncio.wait_for(uploading.wait(), 10)  # the first flush is in progress
    behind = [await eng.append(sid, batch(b"b"), 0) for _ in range(3)]
    assert await asyncio.wait_for(first, 10) == 0
    assert [await asyncio.wait_for(f, 10) for f in behind] == [1, 2, 3]
    assert store.puts == 2  # the three gathered appends made one object
    await eng.close()


async def test_a_large_buffer_is_sealed_when_appends_pause(meta: MetaStore) -> None:
    """On a remote store (not eager) a buffer past wal.idle.seal.bytes goes
    as soon as appends pause, not after the linger: with a one-minute linger
    it still commits (it would time out here if it waited)."""
    [sid] = await new_stream(meta)
    store = FaultyStore()
    eng = engine(store, meta, linger_ms=60_000, idle_seal_bytes=4096)
    futs = [await eng.append(sid, batch(b"x" * 1500), 0) for _ in range(3)]
    assert [await asyncio.wait_for(f, 10) for f in futs] == [0, 1, 2]
    assert store.puts == 1  # only the third append took it past 4096 bytes: one object
    await eng.close()


async def test_a_small_buffer_still_waits_for_the_linger(meta: MetaStore) -> None:
    """Under wal.idle.seal.bytes the pause changes nothing: the linger (or
    the size) seals it, so a trickle of small appends costs no more PUTs."""
    [sid] = await new_stream(meta)
    store = FaultyStore()
    eng = engine(store, meta, linger_ms=60_000, idle_seal_bytes=1 << 20)
    fut = await eng.append(sid, batch(b"x" * 1500), 0)
    # Fifty times the pause that would seal a large buffer: this one stays.
    await asyncio.sleep(IDLE_SEAL_MS * 50 / 1000)
    assert not fut.done() and store.puts == 0
    await eng.close()  # a graceful close seals it
    assert await asyncio.wait_for(fut, 10) == 0 and store.puts == 1


async def test_producer_state_commits_with_a_stream_dropped_in_flight(meta: MetaStore) -> None:
    """A stream forgotten while its append uploads (a broker whose lease
    lapsed, found in the zone-failure bench): the commit that makes the batch
    durable still records the producer's sequence, so the reopened stream
    answers a retry with the original offset instead of writing it twice,
    and takes the next sequence in order."""
    [sid] = await new_stream(meta)
    store = FaultyStore()
    store.put_delays = [0.3]
    eng = engine(store, meta)

    def seq_batch(seq: int) -> list:  # type: ignore[type-arg]
        data = make_batch([b"x"], producer_id=7, producer_epoch=0, base_sequence=seq)
        return validate_batches(data, 1 << 20)

    fut = await eng.append(sid, seq_batch(0), 0)
    eng.forget(sid)
    assert await fut == 0
    assert await (await eng.append(sid, seq_batch(0), 0)) == 0  # the retry: a duplicate
    assert await (await eng.append(sid, seq_batch(1), 0)) == 1
    assert offsets_of((await eng.read(sid, 0, 1 << 20)).chunks) == [0, 1]
    await eng.close()


async def test_first_appends_to_many_streams_share_one_batched_open(meta: MetaStore) -> None:
    """After a restart the first appends to many streams wait in each
    stream's queue for one batched open, then take their offsets in order."""
    sids = await new_stream(meta, 30)
    eng = engine(FaultyStore(), meta)
    batches: list[list[int]] = []
    opened = asyncio.Event()
    real_open = meta.open_streams

    async def gated(ids: list[int], owner: int | None = None) -> object:
        batches.append(list(ids))
        await opened.wait()
        return await real_open(ids, owner)

    meta.open_streams = gated  # type: ignore[method-assign,assignment]
    values = (b"first-value", b"second-value", b"third-value")
    futs = [await eng.append(sid, batch(v), 0) for v in values for sid in sids]
    assert not any(f.done() for f in futs)  # queued behind the open
    opened.set()
    assert [await asyncio.wait_for(f, 10) for f in futs] == [0] * 30 + [1] * 30 + [2] * 30
    assert [sorted(b) for b in batches] == [sorted(sids)]  # one open for all thirty
    for sid in sids:
        chunks = (await eng.read(sid, 0, 1 << 20)).chunks
        assert len(chunks) == 3
        assert all(v in bytes(c) for v, c in zip(values, chunks, strict=True))
    await eng.close()


async def test_a_cancelled_queued_append_does_not_stall_the_batched_open(meta: MetaStore) -> None:
    """A waiter that gives up on a queued append (its request timed out)
    must not stop the batched open from answering the other streams."""
    [sid] = await new_stream(meta)
    eng = engine(FaultyStore(), meta)
    missing = await eng.append(999_999, batch(b"nowhere"), 0)  # no such stream
    kept = await eng.append(sid, batch(b"kept"), 0)
    missing.cancel()
    assert await asyncio.wait_for(kept, 10) == 0
    with pytest.raises(MetaError):
        await eng.open(999_999)
    await eng.close()


async def test_gather_bounded_keeps_order_bounds_concurrency_and_fails_fast() -> None:
    from shoal.storage.concurrency import gather_bounded

    running = 0
    most = 0

    async def call(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01 * (i % 3))
        running -= 1
        if i == 7:
            raise ObjectNotFoundForTest(str(i))
        return i

    class ObjectNotFoundForTest(Exception):
        pass

    calls = [lambda i=i: call(i) for i in range(20)]
    assert await gather_bounded(calls[:7], limit=3) == list(range(7))
    assert most == 3
    with pytest.raises(ObjectNotFoundForTest):
        await gather_bounded(calls, limit=4)
    assert most <= 4


async def test_open_all_opens_many_streams_in_one_batch(meta: MetaStore) -> None:
    """A fetch naming many partitions after a restart opens their streams
    together (one batched open), not one per partition as it reads them; a
    stream that cannot open is left for its own read to report."""
    sids = await new_stream(meta, 40)
    eng = engine(FaultyStore(), meta)
    batches: list[list[int]] = []
    real_open = meta.open_streams

    async def counted(ids: list[int], owner: int | None = None) -> object:
        batches.append(list(ids))
        return await real_open(ids, owner)

    meta.open_streams = counted  # type: ignore[method-assign,assignment]
    await eng.open_all([*sids, 999_999])
    assert [sorted(b) for b in batches] == [sorted([*sids, 999_999])]
    assert all(eng.position(sid) == (0, 0, 0) for sid in sids)
    assert eng.position(999_999) is None
    await eng.open_all(sids)  # all open: nothing more to ask
    assert len(batches) == 1
    with pytest.raises(MetaError):
        await eng.read(999_999, 0, 1 << 20)
    await eng.close()


async def test_read_nowait_answers_from_memory_or_defers(meta: MetaStore) -> None:
    """`read_nowait` gives `read`'s answer when no I/O is needed (the end of
    an open stream, or its tail in the LogCache) and None otherwise."""
    [sid, other] = await new_stream(meta, 2)
    eng = engine(FaultyStore(), meta)
    assert eng.read_nowait(sid, 0, 1 << 20) is None  # not open yet
    await asyncio.wait_for(await eng.append(sid, batch(b"a", b"b"), 0), 10)
    await eng.open(other)
    at_end = eng.read_nowait(sid, 2, 1 << 20)
    assert at_end is not None and (at_end.chunks, at_end.high_watermark) == ([], 2)
    tail = eng.read_nowait(sid, 0, 1 << 20)
    slow = await eng.read(sid, 0, 1 << 20)
    assert tail is not None
    assert [bytes(c) for c in tail.chunks] == [bytes(c) for c in slow.chunks]
    assert offsets_of(tail.chunks) == [0]
    with pytest.raises(OffsetOutOfRange):
        eng.read_nowait(sid, 3, 1 << 20)
    eng.log_cache.drop_stream(sid)  # the tail gone: only a read of objects answers
    assert eng.read_nowait(sid, 0, 1 << 20) is None
    assert offsets_of((await eng.read(sid, 0, 1 << 20)).chunks) == [0]
    await eng.close()


async def test_watch_any_wakes_on_a_commit_to_any_stream(meta: MetaStore) -> None:
    """One future for a long poll over many streams; those left done in a
    quiet stream's list are swept, so repeated polls do not pile up."""
    from shoal.storage.streams import WAITERS_SWEEP_AT

    sids = await new_stream(meta, 5)
    eng = engine(FaultyStore(), meta)
    await eng.open_all(sids)
    assert eng.watch_any([999_999]) is None  # nothing open to watch
    fut = eng.watch_any(sids)
    assert fut is not None and not fut.done()
    await asyncio.wait_for(await eng.append(sids[3], batch(b"x"), 0), 10)
    await asyncio.wait_for(fut, 10)
    quiet = eng._streams[sids[0]]
    for _ in range(5 * WAITERS_SWEEP_AT):
        w = eng.watch_any(sids)
        assert w is not None
        w.cancel()  # the poll timed out
    assert len(quiet.waiters) <= WAITERS_SWEEP_AT
    await eng.close()


async def test_a_reader_catches_up_with_the_owners_commits(meta: MetaStore) -> None:
    # Another broker's view of a stream (read_only): loaded from the
    # metadata, then extended with the ranges the owner commits later.
    [sid] = await new_stream(meta)
    store = FaultyStore()
    owner = engine(store, meta)
    reader = StreamEngine(store, meta, EngineConfig(reader_refresh_ms=0))
    assert [await f for f in [await owner.append(sid, batch(b"a"), 0)]] == [0]
    assert offsets_of((await reader.read_only(sid, 0, 1 << 20)).chunks) == [0]
    futs = [await owner.append(sid, batch(b"b", b"c"), 0) for _ in range(3)]
    assert [await f for f in futs] == [1, 3, 5]
    result = await reader.read_only(sid, 1, 1 << 20)
    assert offsets_of(result.chunks) == [1, 3, 5]
    assert result.high_watermark == 7
    assert len(reader._readers[sid].ranges) == len(owner._streams[sid].ranges)
    await owner.close()
    await reader.close()


async def test_a_read_from_objects_prefetches_the_next_blocks(meta: MetaStore) -> None:
    # A consumer catching up reads block after block: after the first, the
    # next `readahead_blocks` are fetched in the background, and no more.
    [sid] = await new_stream(meta)
    store = FaultyStore()
    writer = engine(store, meta, eager=True)
    for i in range(8):  # one commit, so one range (block), each
        assert await (await writer.append(sid, batch(b"v%d" % i), 0)) == i
    await writer.close()
    reader = StreamEngine(store, meta, EngineConfig(readahead_blocks=3))
    ranges = (await reader.open(sid)).ranges
    assert len(ranges) == 8
    result = await reader.read(sid, 0, 1, at_least_one=True)
    assert offsets_of(result.chunks) == [0]
    await asyncio.gather(*reader._prefetching.values())
    cached = [reader.block_cache.get(k, p, count=False) is not None for k, p in ranges.blocks()]
    assert cached == [True, True, True, True, False, False, False, False]
    await reader.close()
