"""StreamEngine.append_at: batches stored at the offsets they carry (links)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from faults import FaultyStore
from shoal.meta.store import MetaStore
from shoal.protocol.records import read_header, validate_batches
from shoal.storage.errors import BatchBehindEnd
from shoal.storage.streams import EngineConfig, StreamEngine
from shoal.storage.wal import WalConfig
from wire import make_batch


def at(base: int, *values: bytes, pid: int = -1, seq: int = -1, epoch: int = 7) -> bytes:
    """A batch as a source broker stores it: its base offset and leader epoch set."""
    data = bytearray(
        make_batch(
            list(values), producer_id=pid, producer_epoch=0 if pid >= 0 else -1, base_sequence=seq
        )
    )
    struct.pack_into(">q", data, 0, base)
    struct.pack_into(">i", data, 12, epoch)
    return bytes(data)


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaStore]:
    m = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    yield m
    await m.close()


def engine(meta: MetaStore) -> StreamEngine:
    return StreamEngine(
        FaultyStore(), meta, EngineConfig(wal=WalConfig(linger_ms=2), log_cache_bytes=1 << 20)
    )


async def test_batches_keep_source_offsets_and_bytes_with_gaps(meta: MetaStore) -> None:
    topic = await meta.create_topic("mirror", 1, {})
    sid = topic.partitions[0].stream_id
    eng = engine(meta)
    # A compacted source: offsets 10-11, then 15, then 20-22 (gaps between).
    batches = [at(10, b"a", b"b"), at(15, b"c"), at(20, b"d", b"e", b"f")]
    futs = [await eng.append_at(sid, b) for b in batches]
    assert [await f for f in futs] == [10, 15, 20]
    assert await eng.bounds(sid) == (0, 23)
    assert await eng.trim(sid, 10) == 10  # the log start follows the source's
    # Tail reads (LogCache) and a read inside a gap get the next batch, unchanged.
    got = (await eng.read(sid, 10, 1 << 20)).chunks
    assert [bytes(c) for c in got] == batches
    assert bytes((await eng.read(sid, 12, 1 << 20)).chunks[0]) == batches[1]
    with pytest.raises(BatchBehindEnd):
        await eng.append_at(sid, at(22, b"again"))
    await eng.close()
    # After a restart the same bytes come from the objects, gaps included.
    eng2 = engine(meta)
    eng2.store = eng.store
    eng2.wal.store = eng.store
    assert await eng2.bounds(sid) == (10, 23)
    got = (await eng2.read(sid, 16, 1 << 20)).chunks
    assert [bytes(c) for c in got] == batches[2:]
    assert read_header(got[0]).partition_leader_epoch == 7
    await eng2.close()


async def test_producer_state_carries_over_to_normal_appends(meta: MetaStore) -> None:
    topic = await meta.create_topic("mirror2", 1, {})
    sid = topic.partitions[0].stream_id
    eng = engine(meta)
    await (await eng.append_at(sid, at(0, b"a", b"b", pid=42, seq=0)))
    await (await eng.append_at(sid, at(2, b"c", pid=42, seq=2)))
    # After promotion the same producer continues with its next sequence ...
    nxt = validate_batches(
        make_batch([b"d"], producer_id=42, producer_epoch=0, base_sequence=3), 1 << 20
    )
    assert await (await eng.append(sid, nxt, 0)) == 3
    # ... and its retry of a mirrored batch is a duplicate answered with the source's offset.
    retry = validate_batches(
        make_batch([b"c"], producer_id=42, producer_epoch=0, base_sequence=2), 1 << 20
    )
    assert await (await eng.append(sid, retry, 0)) == 2
    assert (await eng.bounds(sid))[1] == 4
    await eng.close()
