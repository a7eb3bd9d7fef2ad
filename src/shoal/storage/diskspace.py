"""Whether the broker may take writes, as far as local disks go.

Two conditions stop writes: a write that failed for lack of space (ENOSPC on
the objects directory, SQLITE_FULL on the metadata database) until the same
kind of write succeeds again, and free space of a watched directory below
`storage.min.free.bytes`. While either holds, new appends are refused before
any offset is handed out (StorageFull, a retriable KAFKA_STORAGE_ERROR at the
protocol edge), so nothing is half-written; appends already in the WAL keep
retrying and commit when space comes back. Each change of condition is logged
once; refusals are summed into one line per LOG_INTERVAL_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import time
from pathlib import Path

from shoal.storage.errors import StorageFull

log = logging.getLogger("shoal.disk")

LOG_INTERVAL_S = 30.0
#: After a full disk, writes resume once the directory has this much free (or
#: the floor, if higher): a commit that squeezed into space SQLite had left in
#: its WAL file must not turn writes on and off every other second.
RESUME_FREE_BYTES = 1 << 20
_FULL_MARKERS = ("no space left on device", "os error 28", "database or disk is full", "disk quota")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT however it arrives: OSError, obstore's text, SQLite's."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(m in str(cur).lower() for m in _FULL_MARKERS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on path's filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskGuard:
    def __init__(
        self, dirs: dict[str, Path] | None = None, min_free_bytes: int = 0, interval_s: float = 1.0
    ) -> None:
        #: kind of write ("objects", "metadata") -> its local directory
        self.dirs = dict(dirs or {})
        self.min_free_bytes = min_free_bytes
        self.interval_s = interval_s
        self.free: dict[str, int] = {}
        self.full: dict[str, str] = {}  # kind of write -> why it failed
        self.low: str | None = None
        self._low_dirs: list[str] = []
        self.full_events = 0
        self.low_events = 0
        self.refused = 0
        self._refused_logged = 0
        self._refused_at = 0.0
        self._full_since: dict[str, float] = {}
        self._clear = asyncio.Event()
        self._clear.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def reason(self) -> str | None:
        """Why writes are refused now, or None."""
        if self.full:
            return "; ".join(self.full.values())
        return self.low

    def check(self) -> None:
        """Raise StorageFull (counted, logged rate-limited) if writes are off."""
        reason = self.reason
        if reason is None:
            return
        self.refused += 1
        now = time.monotonic()
        if not self._refused_at:
            # the condition's own line said it; sum the rest per interval
            self._refused_at, self._refused_logged = now, self.refused
        elif now - self._refused_at >= LOG_INTERVAL_S:
            log.warning(
                "refused %d write(s) in the last %.0f s: %s",
                self.refused - self._refused_logged,
                now - self._refused_at,
                reason,
            )
            self._refused_at, self._refused_logged = now, self.refused
        raise StorageFull(reason)

    async def wait_writable(self) -> None:
        """Hold a writer that may wait (the edge's ingest) until writes are on."""
        while self.reason is not None:
            self._clear.clear()
            await self._clear.wait()

    def write_failed(self, kind: str, exc: BaseException) -> bool:
        """Record a failed write of `kind` ("objects", "metadata"); True if it
        failed for lack of space."""
        if not is_disk_full(exc):
            return False
        if kind not in self.full:
            self.full_events += 1
            self.full[kind] = f"{kind} disk full: {_short(exc)}"
            self._full_since[kind] = time.monotonic()
            self._changed()
            log.error("%s disk full: writes refused until space comes back (%s)", kind, _short(exc))
        return True

    def write_ok(self, kind: str) -> None:
        """A write of `kind` went through: writes resume if its directory
        (when local) has room again by the last free-space reading."""
        if kind not in self.full or self.free.get(kind, 1 << 62) < self._resume_at:
            return
        self._resume(kind)

    @property
    def _resume_at(self) -> int:
        return max(RESUME_FREE_BYTES, self.min_free_bytes)

    def _resume(self, kind: str) -> None:
        if self.full.pop(kind, None) is not None:
            log.warning(
                "%s disk has space again after %.1f s: writes resume",
                kind,
                time.monotonic() - self._full_since.pop(kind),
            )
            self._changed()

    def _changed(self) -> None:
        if self.reason is None:
            self._refused_at = 0.0
            self._clear.set()
        else:
            self._clear.clear()

    # free-space watch -------------------------------------------------------

    def start(self) -> None:
        if self.dirs and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            try:
                await self.poll()
            except OSError as exc:  # a directory gone: say so once a round, go on
                log.warning("free space check failed: %s", exc)
            await asyncio.sleep(self.interval_s)

    async def poll(self) -> None:
        """Read free space; turn writes off below the floor and on above it,
        with one line per change (not per byte count that moves)."""
        free = {what: await asyncio.to_thread(free_bytes, d) for what, d in self.dirs.items()}
        self.free = free
        for kind in [k for k in self.full if free.get(k, 0) >= self._resume_at]:
            self._resume(kind)
        low = sorted(what for what, n in free.items() if n < self.min_free_bytes)
        was_low = self._low_dirs
        self._low_dirs = low
        self.low = (
            "; ".join(
                f"{what} directory {self.dirs[what]} has {free[what]} bytes free, below "
                f"storage.min.free.bytes={self.min_free_bytes}"
                for what in low
            )
            or None
        )
        if low == was_low:
            return
        if low:
            self.low_events += 1
            log.error("low disk space: writes refused (%s)", self.low)
        else:
            log.warning("disk space back above storage.min.free.bytes: writes resume")
        self._changed()


def _short(exc: BaseException) -> str:
    """The cause without SQLAlchemy's wrapping and link."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\([\w.]+\) |\s*\(Background on this error at: [^)]*\)", "", text)
    return text if len(text) <= 200 else text[:197] + "..."
