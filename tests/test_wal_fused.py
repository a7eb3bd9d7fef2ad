"""On a file store with a SQLite file (eager WAL), a small WAL object is
written in the metadata commit's thread, right before its transaction: one
hop for both. An acknowledgement still means the object is in the store and
its range in the metadata; a write that fails commits nothing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness import eventually
from shoal.meta.store import MetaStore
from shoal.protocol.records import read_header, validate_batches
from shoal.storage.errors import Fenced, StorageError
from shoal.storage.objectstore import ObjectStore
from shoal.storage.spares import AHEAD
from shoal.storage.streams import EngineConfig, StreamEngine
from shoal.storage.wal import FUSED_MAX_BYTES, WalConfig
from wire import make_batch


class CountingStore(ObjectStore):
    """Counts the PUTs that go through `put` (uploads of their own)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.puts: list[str] = []

    async def put(
        self, key: str, data: bytes | bytearray | memoryview, *, create: bool = True
    ) -> None:
        self.puts.append(key)
        await super().put(key, data, create=create)


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaStore]:
    m = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    yield m
    await m.close()


async def setup(meta: MetaStore, tmp_path: Path) -> tuple[CountingStore, StreamEngine, int]:
    topic = await meta.create_topic("fused", 1, {})
    store = CountingStore((tmp_path / "objects").as_uri())
    eng = StreamEngine(store, meta, EngineConfig(wal=WalConfig(eager=True, linger_ms=2)))
    return store, eng, topic.partitions[0].stream_id


def batch(value: bytes) -> list:  # type: ignore[type-arg]
    return validate_batches(make_batch([value]), 1 << 22)


async def test_a_small_object_is_written_in_the_commit(meta: MetaStore, tmp_path: Path) -> None:
    store, eng, sid = await setup(meta, tmp_path)
    futs = [await eng.append(sid, batch(b"v%d" % i), 0) for i in range(3)]
    assert [await asyncio.wait_for(f, 10) for f in futs] == [0, 1, 2]
    assert store.puts == []  # no upload of its own
    ranges = eng._streams[sid].ranges.records(sid)
    assert ranges[-1].end_offset == 3
    committed = await meta.ranges_in_objects([r.object_key for r in ranges])
    assert {r.object_key for r in committed} == {r.object_key for r in ranges}
    for key in {r.object_key for r in ranges}:
        assert (tmp_path / "objects" / key).is_file()
    await eng.close()
    # A new engine reads the records back from the objects alone.
    again = StreamEngine(store, meta, EngineConfig(wal=WalConfig(eager=True)))
    result = await again.read(sid, 0, 1 << 20)
    assert [read_header(c).base_offset for c in result.chunks] == [0, 1, 2]
    await again.close()


async def test_a_large_object_still_uploads_on_its_own(meta: MetaStore, tmp_path: Path) -> None:
    store, eng, sid = await setup(meta, tmp_path)
    fut = await eng.append(sid, batch(b"x" * (FUSED_MAX_BYTES + 1)), 0)
    assert await asyncio.wait_for(fut, 30) == 0
    assert len(store.puts) == 1 and store.puts[0].startswith("wal/")
    await eng.close()


async def test_a_failed_write_commits_nothing_until_it_succeeds(
    meta: MetaStore, tmp_path: Path
) -> None:
    """The objects' directory cannot be made (a file is in its way): the
    commit is retried, the append stays unacknowledged and the stream's end
    does not move; once the way is clear it goes through and reads back."""
    store, eng, sid = await setup(meta, tmp_path)
    (tmp_path / "objects").mkdir(exist_ok=True)
    blocker = tmp_path / "objects" / "wal"
    blocker.write_bytes(b"not a directory")
    fut = await eng.append(sid, batch(b"held"), 0)
    await eventually(lambda: eng.wal.upload_retries >= 2, "the commit retried")
    assert not fut.done()
    assert (await eng.bounds(sid))[1] == 0  # nothing committed
    blocker.unlink()
    assert await asyncio.wait_for(fut, 30) == 0
    assert (await eng.bounds(sid))[1] == 1
    result = await eng.read(sid, 0, 1 << 20)
    assert [read_header(c).base_offset for c in result.chunks] == [0]
    assert store.puts == []  # it was the commit's own write that failed
    await eng.close()


async def test_an_object_that_cannot_be_built_fails_its_appends(
    meta: MetaStore, tmp_path: Path
) -> None:
    """The object is built when its buffer is sealed: an error there fails
    the appends in it (the producer retries) instead of leaving them waiting
    on a commit that never comes. As after a failed upload, the stream's
    next commit finds its end short and the stream is reopened; then
    appends go through from the committed end."""
    _store, eng, sid = await setup(meta, tmp_path)

    def broken(_sid: int) -> str | None:
        raise RuntimeError("no label")

    eng.labeler = broken
    fut = await eng.append(sid, batch(b"lost"), 0)
    with pytest.raises(StorageError, match="no label"):
        await asyncio.wait_for(fut, 10)
    eng.labeler = None
    behind = await eng.append(sid, batch(b"behind"), 0)  # offset 1, after the lost one
    with pytest.raises(Fenced):
        await asyncio.wait_for(behind, 10)
    ok = await eng.append(sid, batch(b"kept"), 0)
    assert await asyncio.wait_for(ok, 10) == 0
    result = await eng.read(sid, 0, 1 << 20)
    assert [read_header(c).base_offset for c in result.chunks] == [0]
    await eng.close()


async def test_an_eager_wal_writes_into_files_made_ahead(meta: MetaStore, tmp_path: Path) -> None:
    """Each acknowledgement waits on its object's file, so an eager WAL has
    nameless files made ahead by a thread of their own (storage/spares.py):
    after the first append every object is written into one of them, not
    into a file its PUT creates, nothing is left in `_spare/`, and the
    records read back."""
    store, eng, sid = await setup(meta, tmp_path)
    spares = store._spares
    assert spares is not None and spares.ahead == AHEAD
    assert await asyncio.wait_for(await eng.append(sid, batch(b"v0"), 0), 10) == 0
    await eventually(lambda: len(spares._made) == AHEAD, "the files made")
    made = {os.fstat(fd).st_ino for fd in spares._made}
    for i in range(1, 11):
        assert await asyncio.wait_for(await eng.append(sid, batch(b"v%d" % i), 0), 10) == i
    keys = {r.object_key for r in eng._streams[sid].ranges.records(sid)}
    assert len(keys) == 11  # one object per append
    written = {(tmp_path / "objects" / key).stat().st_ino for key in keys}
    assert len(written & made) == 10  # all but the first append's
    # the first append's PUT took one only if the thread was that quick
    assert len(spares._made) == AHEAD - 10 and spares.made in (AHEAD, AHEAD + 1)
    assert not (tmp_path / "objects" / "_spare").exists()  # nameless: nothing to sweep
    result = await eng.read(sid, 0, 1 << 20)
    assert [read_header(c).base_offset for c in result.chunks] == list(range(11))
    unused = list(spares._made)
    await eng.close()
    assert spares.ahead == 0 and not spares._made  # closed with the WAL, not leaked
    for fd in unused:
        with pytest.raises(OSError):
            os.fstat(fd)


async def test_a_wal_that_lingers_makes_no_files_ahead(meta: MetaStore, tmp_path: Path) -> None:
    """Without eager flushing (a remote store's WAL, whose PUTs are not file
    creates) nothing is made ahead."""
    topic = await meta.create_topic("lingers", 1, {})
    store = ObjectStore((tmp_path / "objects").as_uri())
    eng = StreamEngine(store, meta, EngineConfig(wal=WalConfig(eager=False, linger_ms=1)))
    sid = topic.partitions[0].stream_id
    for i in range(3):
        assert await asyncio.wait_for(await eng.append(sid, batch(b"v%d" % i), 0), 10) == i
    assert store._spares is not None and store._spares.ahead == 0
    assert store._spares.made == 0
    await eng.close()
