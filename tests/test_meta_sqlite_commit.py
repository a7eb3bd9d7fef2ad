"""WAL commits on a SQLite file run on a connection of their own, in a thread
(shoal.meta.sqlite_commit): another connection holding the write lock makes
a commit wait in that thread, with the event loop free, and once the commit
returns it is in the file for any connection to read."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, closing
from pathlib import Path

import pytest
from sqlalchemy import insert

from shoal.meta import schema as s
from shoal.meta.store import MetaStore, ObjectCommit, OpenedStream, RangeCommit


@asynccontextmanager
async def engine_writing(meta: MetaStore, _path: Path) -> AsyncIterator[None]:
    """A write transaction of the store's engine outside its write lock (as
    edge/integrity.py's repair writes)."""
    async with meta.engine.begin() as conn:
        await conn.execute(insert(s.cluster).values(key="probe", value="engine"))
        yield


@asynccontextmanager
async def other_writing(_meta: MetaStore, path: Path) -> AsyncIterator[None]:
    """Another process's write transaction (`shoal users --metadata`)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO cluster (key, value) VALUES ('probe', 'other')")
        yield
        other.execute("COMMIT")
    finally:
        other.close()


@pytest.mark.parametrize("holder", [engine_writing, other_writing])
async def test_a_commit_waits_for_the_write_lock_off_the_event_loop(
    tmp_path: Path, holder: object
) -> None:
    path = tmp_path / "meta.db"
    meta = await MetaStore.open(f"sqlite:///{path}")
    try:
        committer = meta.sqlite_commits
        assert committer is not None
        sid = (await meta.create_topic("t", 1, {})).partitions[0].stream_id
        opened = (await meta.open_streams([sid]))[sid]
        assert isinstance(opened, OpenedStream)
        commit = ObjectCommit(
            "wal/a", 100, [RangeCommit(sid, opened.record.epoch, 0, 7, 0, 100, 1)]
        )
        hold: AbstractAsyncContextManager[None] = holder(meta, path)  # type: ignore[operator]
        async with hold:
            task = asyncio.create_task(meta.commit_objects([commit], node_id=0))
            async with asyncio.timeout(30):
                while not committer._lock.locked():  # in its thread, at BEGIN IMMEDIATE
                    assert not task.done(), task
                    await asyncio.sleep(0.01)
            assert not task.done()  # the lock is still held by the other writer
        await asyncio.wait_for(task, 30)
        with closing(sqlite3.connect(path)) as fresh:
            ends = fresh.execute("SELECT end_offset FROM streams WHERE id = ?", (sid,))
            assert ends.fetchone() == (7,)
            assert fresh.execute("SELECT value FROM cluster WHERE key = 'probe'").fetchone()
    finally:
        await meta.close()
