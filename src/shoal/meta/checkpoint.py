"""SQLite WAL checkpoints off the commit path.

SQLite checkpoints by default inside the commit that crosses
wal_autocheckpoint pages, and a checkpoint ends with an fsync of the database
file. On a broker that writes objects to the same filesystem at 100+ MB/s, that
fsync can take hundreds of milliseconds (ext4 flushes other files' dirty data
with it), and the commit — with every produce request waiting on it — stalls as
long. So the broker's connections never checkpoint; a thread with its own
connection runs PASSIVE checkpoints, which neither wait for nor block writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading

log = logging.getLogger("shoal.meta")


class Checkpointer:
    def __init__(self, path: str, interval_s: float = 1.0) -> None:
        self.path = path
        self.interval_s = interval_s
        self.checkpoints = 0
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # a cancelled round may still be running
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.checkpoint)
            except sqlite3.Error as exc:  # busy or gone: the next round retries
                log.debug("checkpoint of %s skipped: %s", self.path, exc)

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint: (busy, frames in the WAL, frames copied back)."""
        with self._lock:
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, timeout=0, check_same_thread=False)
            row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.checkpoints += 1
        return int(row[0]), int(row[1]), int(row[2])
