"""The gateway's own durable state, in its own SQLite file (data_dir/state.db):
uplink progress, drop counters, local log epochs and integrity reports.

Progress is written only after the central cluster acknowledged the records
it covers, so a crash can repeat records (bounded, see docs/EDGE.md) but never
skip one. SQLite in WAL mode with synchronous=NORMAL survives a killed
process; every call runs on one worker thread so the event loop never blocks
on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS progress (
    uplink TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (uplink, topic, partition));
CREATE TABLE IF NOT EXISTS drops (
    lane TEXT NOT NULL, reason TEXT NOT NULL, records INTEGER NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (lane, reason));
CREATE TABLE IF NOT EXISTS log_epochs (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, epoch INTEGER NOT NULL,
    PRIMARY KEY (topic, partition));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL, kind TEXT NOT NULL,
    detail TEXT NOT NULL);
"""

ProgressKey = tuple[str, str, int]  # uplink, topic, partition


class SiteMismatch(Exception):
    pass


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edge-state")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self, site: str) -> None:
        await self._run(self._open, site)

    def _open(self, site: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM info WHERE key='site'").fetchone()
        if row is None:
            db.execute("INSERT INTO info VALUES ('site', ?)", (site,))
        elif row[0] != site:
            db.close()
            raise SiteMismatch(
                f"data directory {self.path.parent} belongs to site {row[0]!r}, not {site!r}: "
                "origin headers would change; use another data_dir"
            )
        self._db = db

    async def close(self) -> None:
        await self._run(self._close)
        self._pool.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "state store not open"
        return self._db

    # progress ---------------------------------------------------------------

    async def load_progress(self) -> dict[ProgressKey, int]:
        rows = await self._run(
            lambda: self.db.execute(
                "SELECT uplink, topic, partition, next_offset FROM progress"
            ).fetchall()
        )
        return {(u, t, p): int(o) for u, t, p, o in rows}

    async def save(
        self,
        progress: dict[ProgressKey, int],
        drops: dict[tuple[str, str], tuple[int, int]] | None = None,
    ) -> None:
        """One transaction: progress rows and absolute drop totals."""
        if not progress and not drops:
            return
        await self._run(self._save, dict(progress), dict(drops or {}))

    def _save(
        self, progress: dict[ProgressKey, int], drops: dict[tuple[str, str], tuple[int, int]]
    ) -> None:
        now = int(time.time() * 1000)
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO progress VALUES (?, ?, ?, ?, ?) ON CONFLICT (uplink, topic, partition)"
                " DO UPDATE SET next_offset=excluded.next_offset, updated_ms=excluded.updated_ms",
                [(u, t, p, o, now) for (u, t, p), o in progress.items()],
            )
            db.executemany(
                "INSERT INTO drops VALUES (?, ?, ?, ?) ON CONFLICT (lane, reason)"
                " DO UPDATE SET records=excluded.records, bytes=excluded.bytes",
                [(lane, reason, r, b) for (lane, reason), (r, b) in drops.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def load_drops(self) -> dict[tuple[str, str], tuple[int, int]]:
        rows = await self._run(
            lambda: self.db.execute("SELECT lane, reason, records, bytes FROM drops").fetchall()
        )
        return {(lane, reason): (int(r), int(b)) for lane, reason, r, b in rows}

    # local log epochs -------------------------------------------------------

    async def load_epochs(self) -> dict[tuple[str, int], int]:
        rows = await self._run(
            lambda: self.db.execute("SELECT topic, partition, epoch FROM log_epochs").fetchall()
        )
        return {(t, p): int(e) for t, p, e in rows}

    async def bump_epoch(self, topic: str, partition: int) -> int:
        def run() -> int:
            self.db.execute(
                "INSERT INTO log_epochs VALUES (?, ?, 1) ON CONFLICT (topic, partition)"
                " DO UPDATE SET epoch = epoch + 1",
                (topic, partition),
            )
            row = self.db.execute(
                "SELECT epoch FROM log_epochs WHERE topic=? AND partition=?", (topic, partition)
            ).fetchone()
            return int(row[0])

        result: int = await self._run(run)
        return result

    # events -----------------------------------------------------------------

    async def add_event(self, kind: str, detail: dict[str, Any]) -> None:
        await self._run(
            lambda: self.db.execute(
                "INSERT INTO events (ts_ms, kind, detail) VALUES (?, ?, ?)",
                (int(time.time() * 1000), kind, json.dumps(detail, sort_keys=True)),
            )
        )

    async def events(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self._run(
            lambda: self.db.execute(
                "SELECT ts_ms, kind, detail FROM events ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        )
        return [{"ts_ms": ts, "kind": kind, **json.loads(detail)} for ts, kind, detail in rows]
