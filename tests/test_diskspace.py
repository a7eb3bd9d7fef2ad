"""DiskGuard (storage/diskspace.py) without a broker: what counts as a full
disk, when writes go off and on again, and that each change is one event."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from shoal.storage.diskspace import RESUME_FREE_BYTES, DiskGuard, is_disk_full
from shoal.storage.errors import ObjectStoreUnavailable, StorageFull


def test_full_disk_is_recognised_however_it_arrives() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(ObjectStoreUnavailable("Unable to copy data to file: os error 28"))
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = Exception("(sqlite3.OperationalError) database or disk is full")
    assert is_disk_full(wrapped)
    assert not is_disk_full(ObjectStoreUnavailable("connection refused"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_writes_off_on_full_and_on_again_only_with_room(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    async def go() -> None:
        guard = DiskGuard({"objects": tmp_path})
        guard.check()  # writes on
        assert not guard.write_failed("objects", OSError(errno.EACCES, "denied"))
        guard.check()
        for _ in range(3):  # one episode however many writes fail
            assert guard.write_failed("objects", OSError(errno.ENOSPC, "No space left"))
        with pytest.raises(StorageFull, match="objects disk full"):
            guard.check()
        guard.free = {"objects": RESUME_FREE_BYTES - 1}
        guard.write_ok("objects")  # a write squeezed in, but no room yet
        with pytest.raises(StorageFull):
            guard.check()
        waiter = asyncio.ensure_future(guard.wait_writable())
        await asyncio.sleep(0)
        assert not waiter.done()
        guard.free = {"objects": RESUME_FREE_BYTES}
        guard.write_ok("objects")
        guard.check()
        await asyncio.wait_for(waiter, 1)
        assert guard.full_events == 1 and guard.refused == 2

    asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records if r.name == "shoal.disk"]
    assert sum("writes refused until space comes back" in m for m in lines) == 1
    assert sum("has space again" in m for m in lines) == 1


def test_free_space_floor(tmp_path: Path) -> None:
    async def go() -> None:
        guard = DiskGuard({"metadata": tmp_path}, min_free_bytes=1 << 62)
        await guard.poll()
        with pytest.raises(StorageFull, match=r"storage.min.free.bytes=\d+"):
            guard.check()
        await guard.poll()  # still low: not a new event
        assert guard.low_events == 1
        guard.min_free_bytes = 0
        await guard.poll()
        guard.check()

    asyncio.run(go())
