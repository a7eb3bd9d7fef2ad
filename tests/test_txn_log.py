"""The log side of transactions, on the stream engine (memory object store,
real SQLite): the last stable offset, markers, the aborted-transaction index,
and all of it after a restart; plus the coordinator's state rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faults import FaultyStore
from shoal.meta.store import MetaStore
from shoal.protocol.batches import (
    ABORT_MARKER,
    COMMIT_MARKER,
    BatchBuilder,
    control_type,
)
from shoal.protocol.errors import ErrorCode
from shoal.protocol.records import TRANSACTIONAL_BIT, read_header, validate_batches
from shoal.storage.producers import InvalidProducerEpoch
from shoal.storage.streams import EngineConfig, StreamEngine
from shoal.storage.wal import WalConfig
from shoal.txn import state as st
from shoal.txn.state import TxnError, TxnMeta, TxnState


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaStore]:
    m = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    yield m
    await m.close()


def prepare_end(meta: TxnMeta, commit: bool, now_ms: int) -> bool:
    """EndTxn under version 1 from the id's current producer."""
    return st.decide_end(
        meta, meta.producer_id, meta.producer_epoch, commit, now_ms, 0, ErrorCode.producer_fenced
    )


def engine(meta: MetaStore, store: FaultyStore) -> StreamEngine:
    return StreamEngine(
        store, meta, EngineConfig(wal=WalConfig(linger_ms=2), log_cache_bytes=1 << 20)
    )


def txn_batch(pid: int, epoch: int, seq: int, *values: bytes) -> list:  # type: ignore[type-arg]
    b = BatchBuilder(
        producer_id=pid, producer_epoch=epoch, base_sequence=seq, attributes=TRANSACTIONAL_BIT
    )
    for v in values:
        b.append(1_700_000_000_000, None, v)
    return validate_batches(b.build(), 1 << 20)


def plain_batch(*values: bytes) -> list:  # type: ignore[type-arg]
    b = BatchBuilder()
    for v in values:
        b.append(1_700_000_000_000, None, v)
    return validate_batches(b.build(), 1 << 20)


async def stream(meta: MetaStore) -> int:
    topic = await meta.create_topic("t", 1, {})
    return topic.partitions[0].stream_id


async def test_last_stable_offset_and_markers(meta: MetaStore) -> None:
    sid = await stream(meta)
    eng = engine(meta, FaultyStore())
    await (await eng.append(sid, plain_batch(b"p0"), 0))  # offset 0
    await (await eng.append(sid, txn_batch(7, 0, 0, b"a", b"b"), 0))  # 1-2, producer 7
    await (await eng.append(sid, txn_batch(8, 0, 0, b"c"), 0))  # 3, producer 8
    await (await eng.append(sid, plain_batch(b"p1"), 0))  # 4
    assert (await eng.bounds(sid))[1] == 5
    assert await eng.last_stable_offset(sid) == 1
    committed = await eng.read(sid, 0, 1 << 20, committed=True)
    assert [read_header(c).base_offset for c in committed.chunks] == [0]
    assert committed.last_stable_offset == 1
    # producer 7 aborts: the LSO moves to producer 8's transaction
    assert await (await eng.write_marker(sid, 7, 0, False, 0, 0)) == 5
    assert await eng.last_stable_offset(sid) == 3
    assert [(a.producer_id, a.first_offset, a.last_offset) for a in
            await eng.aborted_between(sid, 0, 6)] == [(7, 1, 5)]  # fmt: skip
    # producer 8 commits: everything is stable
    assert await (await eng.write_marker(sid, 8, 0, True, 0, 0)) == 6
    assert await eng.last_stable_offset(sid) == 7
    chunks = (await eng.read(sid, 5, 1 << 20, committed=True)).chunks
    assert [control_type(c) for c in chunks[:2]] == [ABORT_MARKER, COMMIT_MARKER]
    await eng.close()


async def test_state_survives_restart(meta: MetaStore) -> None:
    sid = await stream(meta)
    store = FaultyStore()
    eng = engine(meta, store)
    await (await eng.append(sid, txn_batch(7, 0, 0, b"a"), 0))  # 0
    await (await eng.write_marker(sid, 7, 0, False, 0, 0))  # 1: abort
    await (await eng.append(sid, txn_batch(7, 0, 1, b"b"), 0))  # 2: a new, open transaction
    await eng.close()
    again = engine(meta, store)
    assert await again.last_stable_offset(sid) == 2
    assert [(a.first_offset, a.last_offset) for a in await again.aborted_between(sid, 0, 3)] == [
        (0, 1)
    ]
    # the sequence goes on where it was, inside the reopened transaction
    assert await (await again.append(sid, txn_batch(7, 0, 2, b"c"), 0)) == 3
    await (await again.write_marker(sid, 7, 0, True, 0, 0))
    assert await again.last_stable_offset(sid) == 5
    await again.close()


async def test_marker_with_new_epoch_fences_the_old_one(meta: MetaStore) -> None:
    sid = await stream(meta)
    eng = engine(meta, FaultyStore())
    await (await eng.append(sid, txn_batch(7, 0, 0, b"zombie"), 0))
    await (await eng.write_marker(sid, 7, 1, False, 0, 0))  # the coordinator bumped to 1
    with pytest.raises(InvalidProducerEpoch):
        await eng.append(sid, txn_batch(7, 0, 1, b"late"), 0)
    # the new incarnation starts at sequence 0
    assert await (await eng.append(sid, txn_batch(7, 1, 0, b"new"), 0)) == 2
    await eng.close()


def test_coordinator_rules() -> None:
    meta = TxnMeta("tx", 5, 0, 60_000)
    with pytest.raises(TxnError) as info:
        st.check_timeout(0, 900_000)
    assert info.value.code == ErrorCode.invalid_transaction_timeout
    with pytest.raises(TxnError) as info:
        st.check_timeout(900_001, 900_000)
    assert info.value.code == ErrorCode.invalid_transaction_timeout
    with pytest.raises(TxnError) as info:
        prepare_end(meta, True, 1)  # EndTxn with nothing added
    assert info.value.code == ErrorCode.invalid_txn_state
    with pytest.raises(TxnError) as info:
        st.check_producer(meta, 5, 1, ErrorCode.producer_fenced)
    assert info.value.code == ErrorCode.producer_fenced
    with pytest.raises(TxnError) as info:
        st.check_producer(meta, 6, 0, ErrorCode.producer_fenced)
    assert info.value.code == ErrorCode.invalid_producer_id_mapping
    st.begin_or_continue(meta, 100)
    meta.partitions.add(("t", 0))
    assert meta.state == TxnState.ONGOING and not meta.expired(60_100)
    assert meta.expired(60_101)
    assert prepare_end(meta, False, 200)
    with pytest.raises(TxnError) as info:
        st.begin_or_continue(meta, 300)  # still writing the abort markers
    assert info.value.code == ErrorCode.concurrent_transactions
    assert TxnMeta.from_row(meta.to_row()) == meta  # what is saved is what is loaded
    st.complete(meta, 400)
    assert meta.state == TxnState.COMPLETE_ABORT and not meta.partitions
    assert not prepare_end(meta, False, 500)  # a retried abort is answered again
    with pytest.raises(TxnError) as info:
        prepare_end(meta, True, 500)
    assert info.value.code == ErrorCode.invalid_txn_state


def keyed(pid: int, key: bytes, value: bytes, transactional: bool = True) -> list:  # type: ignore[type-arg]
    b = BatchBuilder(
        producer_id=pid if transactional else -1,
        producer_epoch=0 if transactional else -1,
        base_sequence=0 if transactional else -1,
        attributes=TRANSACTIONAL_BIT if transactional else 0,
    )
    b.append(1_700_000_000_000, key, value)
    return validate_batches(b.build(), 1 << 20)


async def test_key_compaction_with_transactions(meta: MetaStore) -> None:
    """Aborted records go and never count as a key's latest value; nothing
    at or past the last stable offset is cleaned; old markers go."""
    import time

    from shoal.storage.keycompaction import KeyCompactionPolicy

    sid = await stream(meta)
    eng = engine(meta, FaultyStore())
    await (await eng.append(sid, keyed(-1, b"a", b"1", transactional=False), 0))  # 0
    await (await eng.append(sid, keyed(7, b"a", b"aborted"), 0))  # 1
    await (await eng.write_marker(sid, 7, 0, False, 0, 0))  # 2
    await (await eng.append(sid, keyed(8, b"b", b"open"), 0))  # 3: the LSO
    await (await eng.append(sid, keyed(-1, b"a", b"2", transactional=False), 0))  # 4

    def policy(retention_ms: int) -> KeyCompactionPolicy:
        return KeyCompactionPolicy(int(time.time() * 1000) + 1000, 0, retention_ms, 0.0, 1 << 20)

    async def offsets() -> list[int]:
        chunks = (await eng.read(sid, 0, 1 << 20)).chunks
        return [read_header(c).base_offset for c in chunks]

    assert await eng.compact_keys(sid, policy(10**9))
    # a=1 stays: the later a=2 is past the LSO and the aborted a does not count
    assert await offsets() == [0, 2, 3, 4]
    await (await eng.write_marker(sid, 8, 0, True, 0, 0))  # 5: commit
    assert await eng.compact_keys(sid, policy(0))
    # now a=2 is the latest a; both markers are old enough to go
    assert await offsets() == [3, 4]
    await eng.close()


async def test_delete_records_with_transactions(meta: MetaStore) -> None:
    """DeleteRecords (trim) past an aborted transaction drops it from the
    index, here and after a restart; past an open transaction's start the
    last stable offset is the new log start, never below it."""
    sid = await stream(meta)
    store = FaultyStore()
    eng = engine(meta, store)
    await (await eng.append(sid, txn_batch(7, 0, 0, b"a"), 0))  # 0
    await (await eng.write_marker(sid, 7, 0, False, 0, 0))  # 1: abort
    await (await eng.append(sid, txn_batch(8, 0, 0, b"b", b"c"), 0))  # 2-3, open
    assert len(await eng.aborted_between(sid, 0, 4)) == 1
    assert await eng.trim(sid, 2) == 2
    assert await eng.aborted_between(sid, 0, 4) == []
    assert await eng.last_stable_offset(sid) == 2
    assert await eng.trim(sid, 3) == 3
    assert await eng.last_stable_offset(sid) == 3  # the open transaction began below
    await eng.close()
    again = engine(meta, store)
    assert await again.aborted_between(sid, 0, 4) == []
    assert await again.last_stable_offset(sid) == 3
    await (await again.write_marker(sid, 8, 0, True, 0, 0))
    assert await again.last_stable_offset(sid) == 5
    await again.close()


class EngineMarkers:
    """The coordinator's writes through a stream engine (what BrokerTxnIO does
    on a broker), failing after `crash_after` markers as a killed broker would."""

    def __init__(self, eng: StreamEngine, streams: dict[tuple[str, int], int], crash_after: int):
        self.eng, self.streams, self.crash_after = eng, streams, crash_after

    async def write_markers(
        self, tid: str, producer_id: int, epoch: int, commit: bool, partitions: set[tuple[str, int]]
    ) -> None:
        for tp in sorted(partitions):
            if self.crash_after == 0:
                raise OSError("killed")
            self.crash_after -= 1
            await (await self.eng.write_marker(self.streams[tp], producer_id, epoch, commit, 0, 0))

    async def apply_offsets(self, offsets: object) -> None:
        return None


async def test_decision_survives_a_crash_before_its_markers(meta: MetaStore) -> None:
    """EndTxn saved PrepareCommit, one marker of two was written, then the
    broker died: the next coordinator finishes the commit at start-up."""
    from shoal.meta.transactions import TxnRepository
    from shoal.txn.coordinator import TransactionCoordinator, TxnConfig

    topic = await meta.create_topic("two", 2, {})
    streams = {("two", p.partition): p.stream_id for p in topic.partitions}
    store = FaultyStore()
    eng = engine(meta, store)
    pids = iter(range(100, 200))

    async def allocate() -> int:
        return next(pids)

    first = TransactionCoordinator(
        TxnRepository(meta), allocate, EngineMarkers(eng, streams, 1), TxnConfig()
    )
    pid, epoch = await first.init_producer_id("tx", 60_000, -1, -1, ErrorCode.producer_fenced)
    await first.add_partitions("tx", pid, epoch, streams, ErrorCode.producer_fenced)
    for seq, sid in enumerate(streams.values()):
        await (await eng.append(sid, txn_batch(pid, epoch, 0, b"v%d" % seq), 0))
    with pytest.raises(OSError):
        await first.end_txn("tx", pid, epoch, True, ErrorCode.producer_fenced)
    await eng.close()
    # a new process: the engine reopens the streams, the coordinator sweeps at start
    again = engine(meta, store)
    second = TransactionCoordinator(
        TxnRepository(meta), allocate, EngineMarkers(again, streams, 10), TxnConfig()
    )
    await second.start()
    try:
        meta_after = await second.describe("tx")
        assert meta_after is not None and meta_after.state == TxnState.COMPLETE_COMMIT
        for sid in streams.values():
            assert await again.last_stable_offset(sid) == (await again.bounds(sid))[1]
            assert await again.aborted_between(sid, 0, 10) == []
    finally:
        await second.close()
        await again.close()


async def test_idle_transactional_ids_expire(meta: MetaStore) -> None:
    """transactional.id.expiration.ms forgets idle ids, never one with an open
    transaction."""
    from shoal.meta.transactions import TxnRepository
    from shoal.txn.coordinator import TransactionCoordinator, TxnConfig

    topic = await meta.create_topic("exp", 1, {})
    eng = engine(meta, FaultyStore())
    pids = iter(range(300, 400))

    async def allocate() -> int:
        return next(pids)

    coord = TransactionCoordinator(
        TxnRepository(meta),
        allocate,
        EngineMarkers(eng, {("exp", 0): topic.partitions[0].stream_id}, 10),
        TxnConfig(id_expiration_ms=0),  # everything idle is past it
    )
    await coord.init_producer_id("idle", 60_000, -1, -1, ErrorCode.producer_fenced)
    pid, epoch = await coord.init_producer_id("busy", 60_000, -1, -1, ErrorCode.producer_fenced)
    await coord.add_partitions("busy", pid, epoch, [("exp", 0)], ErrorCode.producer_fenced)
    await coord.sweep()
    assert await coord.describe("idle") is None
    assert len(await TxnRepository(meta).load("idle")) == 0
    busy = await coord.describe("busy")
    assert busy is not None and busy.state == TxnState.ONGOING
    assert coord._locks == {}  # no lock kept for an id nobody is using
    await eng.close()


async def test_transaction_rows_are_compare_and_set(meta: MetaStore) -> None:
    """Two brokers writing one id: the second write of a stale version fails
    (the coordinator answers CONCURRENT_TRANSACTIONS and the client retries)."""
    from shoal.meta.transactions import TxnConflict, TxnRepository

    repo = TxnRepository(meta)
    fresh = TxnMeta("cas", 1, 0, 60_000)
    assert await repo.save(fresh.to_row()) == 1
    with pytest.raises(TxnConflict):
        await repo.save(fresh.to_row())  # a second creation
    (row,) = await repo.load("cas")
    seen_by_a, seen_by_b = TxnMeta.from_row(row), TxnMeta.from_row(row)
    seen_by_a.state = TxnState.ONGOING
    assert await repo.save(seen_by_a.to_row()) == 2
    seen_by_b.producer_epoch = 1
    with pytest.raises(TxnConflict):
        await repo.save(seen_by_b.to_row())
    (row,) = await repo.load("cas")
    assert (row.state, row.producer_epoch, row.version) == ("Ongoing", 0, 2)
