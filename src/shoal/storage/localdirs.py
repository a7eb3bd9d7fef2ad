"""Local directories of the embedded default: one process per directory, and
proof at start-up that the process can write where it must.

Without the lock two brokers on one data directory both start as node 0 and
take the streams from each other; without the write check an unwritable
objects directory shows up only as produce timeouts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from shoal.storage.errors import StorageError

LOCK_FILE = "LOCK"


class DirectoryLocked(StorageError):
    """Another process holds the directory's lock."""

    def __init__(self, path: Path, pid: int | None, what: str) -> None:
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"{what} {path} is in use by {holder} (stop it first, or use another)")
        self.path, self.pid = path, pid


class NotWritable(StorageError):
    """A directory the process must write to refuses."""


def _describe(path: Path) -> str:
    """Mode, owner and our uid: what an operator needs to fix a permission."""
    try:
        st = path.stat()
    except OSError:
        return f"running as uid {os.geteuid()}"
    return f"mode {st.st_mode & 0o7777:04o}, owner uid {st.st_uid}, running as uid {os.geteuid()}"


def ensure_writable(path: Path, what: str) -> None:
    """Create `path` (and parents) if needed and prove a file can be created
    in it. Raises NotWritable naming the path, the operation and the cause."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        nearest = next((p for p in (path, *path.parents) if p.exists()), path)
        raise NotWritable(
            f"{what} {path}: cannot create it: {exc.strerror or exc}"
            + (f" ({nearest}: {_describe(nearest)})" if nearest != path else "")
        ) from None
    if not path.is_dir():
        raise NotWritable(f"{what} {path}: not a directory")
    probe = path / f".shoal-write-check-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    except FileExistsError:
        fd = os.open(probe, os.O_WRONLY)
    except OSError as exc:
        raise NotWritable(
            f"{what} {path}: cannot create a file in it: {exc.strerror or exc} ({_describe(path)})"
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        probe.unlink()


def ensure_writable_file(path: Path, what: str) -> None:
    """The directory of `path` is writable, and so is `path` if it exists
    (SQLite writes the database and its -wal and -shm files beside it)."""
    ensure_writable(path.parent, f"directory of the {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise NotWritable(f"{what} {path}: not writable ({_describe(path)})")


def _read_pid(fh: IO[str]) -> int | None:
    try:
        fh.seek(0)
        text = fh.read().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def locked(path: Path, what: str = "directory") -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) for the block;
    the lock file holds the holder's pid, named in the error of the next
    process that tries. The lock goes with the process, even on kill -9."""
    ensure_writable(path, what)
    fh = open(path / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryLocked(path, _read_pid(fh), what) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        fh.close()
