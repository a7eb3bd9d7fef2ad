"""SQLite checkpoints run beside the broker's commits, not inside them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sqlalchemy import text

from shoal.meta.store import MetaStore


async def test_commits_leave_checkpoints_to_the_checkpointer(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    meta = await MetaStore.open(f"sqlite:///{db}")
    try:
        assert meta.checkpointer is not None
        meta.checkpointer.interval_s = 3600  # not during this test: it drives it by hand
        assert (await meta.execute_read(text("PRAGMA wal_autocheckpoint")))[0][0] == 0
        for i in range(300):
            await meta.create_topic(f"t{i}", 4, {})
        # SQLite would have checkpointed (and restarted the WAL) at 1,000
        # pages; the broker's connections never do, so the WAL is past that.
        assert await asyncio.to_thread(os.path.getsize, f"{db}-wal") > 1000 * 4096
        busy, frames, copied = meta.checkpointer.checkpoint()
        assert busy == 0 and frames > 1000 and copied == frames
        await meta.create_topic("after", 1, {})  # writes go on after a checkpoint
        assert {"after", "t299"} <= {t.name for t in await meta.list_topics()}
    finally:
        await meta.close()
