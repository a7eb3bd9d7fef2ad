"""Object store access through obstore (Rust object_store): file, S3, GCS,
Azure and memory behind one small async interface.

One exception: a PUT to a file store is written here, in a thread of the
store's own (`_write_file`), the same way obstore writes it (a staging file
`KEY#N`, hard-linked into place for a conditional create, no fsync). Through
obstore each small PUT crossed four threads (the caller, tokio's runtime,
its blocking pool, back) and cost 300-800 us of CPU under load for ~40 us of
system calls; the WAL on a local store writes an object every few requests.
A delete through `delete_many` keeps the file as a spare that a later PUT
writes into (spares.py): no inode freed, none allocated.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import itertools
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import obstore
from obstore.store import from_url

from shoal.storage.concurrency import gather_bounded
from shoal.storage.errors import (
    ObjectExists,
    ObjectNotFound,
    ObjectStoreUnavailable,
    StorageError,
)
from shoal.storage.spares import Spares, link_made

T = TypeVar("T")
SCHEMES = ("file", "memory", "s3", "s3a", "gs", "az", "abfs", "abfss")


#: an object's bytes: one buffer, or buffers to write back to back (a file
#: store writes them with writev; other stores get them joined)
Payload = bytes | bytearray | memoryview | list[bytes | memoryview]
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


class InvalidObjectStoreURL(StorageError):
    pass


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    last_modified_ms: int


class ObjectStore:
    """Keys are relative paths ("wal/0/00000000000000000001.obj")."""

    def __init__(
        self, url: str, options: dict[str, Any] | None = None, *, create: bool = True
    ) -> None:
        """`create=False` (read-only commands): a file:// directory that does
        not exist is an error, not something to make."""
        self.url = url
        #: kept so that another process can open the same store (rewrite.py)
        self.options: dict[str, Any] = dict(options or {})
        parsed = urlparse(url)
        if parsed.scheme not in SCHEMES:
            raise InvalidObjectStoreURL(
                f"unsupported object store URL {url!r}: use one of "
                + ", ".join(f"{s}://" for s in SCHEMES if s not in ("s3a", "abfs", "abfss"))
            )
        kwargs: dict[str, Any] = dict(options or {})
        #: a file store's directory: PUTs are written by `_write_file`
        self._root: str | None = None
        self._spares: Spares | None = None
        self._writer: ThreadPoolExecutor | None = None
        if parsed.scheme == "file":
            if not parsed.path:
                raise InvalidObjectStoreURL(f"file URL {url!r} has no path")
            if create:
                Path(parsed.path).mkdir(parents=True, exist_ok=True)
                kwargs.setdefault("mkdir", True)
                self._root = parsed.path.rstrip("/") or "/"
                self._spares = Spares(self._root)
            elif not Path(parsed.path).is_dir():
                raise InvalidObjectStoreURL(f"objects directory {parsed.path} does not exist")
        try:
            self._store = from_url(url, **kwargs)
        except Exception as exc:
            raise InvalidObjectStoreURL(
                f"cannot open object store {url!r}: {explain(exc)}"
            ) from exc

    @classmethod
    def for_data_dir(cls, data_dir: str | os.PathLike[str]) -> ObjectStore:
        return cls(Path(data_dir).resolve().joinpath("objects").as_uri())

    async def put(self, key: str, data: Payload, *, create: bool = True) -> None:
        """Conditional create by default: an object key is never overwritten."""
        if self.writes_locally(key):
            await self._put_file(key, data, create)
            return
        if isinstance(data, list):
            data = await asyncio.to_thread(b"".join, data)  # up to a compaction round's bytes
        try:
            await obstore.put_async(
                self._store, key, data, mode="create" if create else "overwrite"
            )
        except Exception as exc:
            raise _translate(exc, key) from exc

    async def _put_file(self, key: str, data: Payload, create: bool) -> None:
        """`put` on a file store: one hop to the writer threads and back."""
        await self._in_writer(_put_local, f"{self._root}/{key}", key, data, create, self._spares)

    def writes_locally(self, key: str) -> bool:
        """Whether a PUT of `key` is a file write of Shoal's own: a file
        store, and a key obstore keeps as it is."""
        return self._root is not None and _PLAIN_KEY.fullmatch(key) is not None

    def make_spares_ahead(self) -> None:
        """Have a file store's PUTs find a file made ahead instead of
        creating one (spares.py); for a writer that waits on each PUT. Nothing
        elsewhere."""
        if self._spares is not None:
            self._spares.make_ahead()

    def stop_spares_ahead(self) -> None:
        """Undo `make_spares_ahead`, closing the files made and unused
        (blocks while a refill finishes: call it in a thread)."""
        if self._spares is not None:
            self._spares.stop_ahead()

    def local_put(self, key: str, data: Payload) -> Callable[[], None]:
        """A conditional-create PUT of `key`, for a key `writes_locally`
        accepts, to run in a thread of the caller's (the WAL writes a small
        object in its metadata commit's thread: one hop for both). Raises
        like `put`."""
        if not self.writes_locally(key):
            raise ValueError(f"{key!r} is not written locally by this store")
        return functools.partial(_put_local, f"{self._root}/{key}", key, data, True, self._spares)

    async def get(self, key: str) -> bytes:
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except Exception as exc:
            raise _translate(exc, key) from exc

    async def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Whole objects, in the order of `keys`. A file store reads them all
        in one hop to its threads: a compaction round's hundreds of small WAL
        objects, each GET a trip through tokio's blocking pool and back (a
        thread woken, a future resolved), cost more CPU than the round's
        merge; other stores GET a bounded number at once."""
        if self._root is not None and all(self.writes_locally(k) for k in keys):
            return await self._in_writer(_get_local_many, self._root, list(keys))
        return await gather_bounded([functools.partial(self.get, k) for k in keys])

    async def delete_many(self, keys: Sequence[str]) -> None:
        """`delete` of each key (a missing one is no error); on a file store
        in one hop, as `get_many`."""
        if self._root is not None and all(self.writes_locally(k) for k in keys):
            await self._in_writer(_delete_local_many, self._root, list(keys), self._spares)
            return
        await gather_bounded([functools.partial(self.delete, k) for k in keys])

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(4, thread_name_prefix="shoal-objects")
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def get_range(self, key: str, start: int, end: int) -> memoryview:
        try:
            data = await obstore.get_range_async(self._store, key, start=start, end=end)
        except Exception as exc:
            raise _translate(exc, key) from exc
        return memoryview(data)

    async def delete(self, key: str) -> None:
        try:
            await obstore.delete_async(self._store, key)
        except FileNotFoundError:
            return
        except Exception as exc:
            err = _translate(exc, key)
            if isinstance(err, ObjectNotFound):
                return
            raise err from exc

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        # The synchronous lister runs in a thread: obstore's async stream
        # aborts the interpreter at exit when it is left behind.
        return await asyncio.to_thread(self._list_sync, prefix)

    def _list_sync(self, prefix: str) -> builtins.list[ObjectInfo]:
        out: builtins.list[ObjectInfo] = []
        try:
            for chunk in obstore.list(self._store, prefix=prefix or None):
                for meta in chunk:
                    modified = meta["last_modified"].timestamp()
                    out.append(ObjectInfo(meta["path"], int(meta["size"]), int(modified * 1000)))
        except Exception as exc:
            raise _translate(exc, prefix) from exc
        return out

    async def staged_leftovers(self, older_than_ms: int) -> builtins.list[ObjectInfo]:
        """A file store's abandoned staging files: obstore writes an upload to
        `KEY#N` and renames it into place, so a process killed mid-upload leaves
        `KEY#N` behind, which `list` does not show. Older than `older_than_ms`
        (ms since the epoch); keys relative to the store. Other stores: none
        (an interrupted S3 upload leaves nothing visible)."""
        parsed = urlparse(self.url)
        if parsed.scheme != "file":
            return []
        return await asyncio.to_thread(_staged_sync, Path(parsed.path), older_than_ms)

    async def delete_staged(self, key: str) -> None:
        """Remove one of `staged_leftovers` (the store's own delete refuses the
        `#` in its name)."""
        root = Path(urlparse(self.url).path)
        await asyncio.to_thread((root / key).unlink, missing_ok=True)

    async def check(self) -> None:
        """Prove at start-up that the store answers, so a wrong URL or bucket
        fails with a clear message instead of on the first produce."""
        try:
            await self.list("__shoal_check__/")
        except ObjectStoreUnavailable as exc:
            raise ObjectStoreUnavailable(f"object store {self.url}: {exc.reason}") from exc


_STAGED = re.compile(r"#\d+$")

# Keys written as files here: segments of characters obstore's Path keeps as
# they are (others it percent-encodes, so those PUTs stay with obstore, which
# then reads back what it wrote), none empty or starting with a dot.
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9._=-]*(?:/[A-Za-z0-9_=-][A-Za-z0-9._=-]*)*")
_STAGE = itertools.count(1)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _unavailable(key: str, exc: OSError) -> ObjectStoreUnavailable:
    """A file store's OSError as the store's error, naming the key."""
    err = ObjectStoreUnavailable(f"{key!r}: {exc}")
    err.reason = str(exc)
    return err


def _get_local_many(root: str, keys: list[str]) -> list[bytes]:
    """Files of a file store, read as obstore's GET reads them, with the
    store's errors."""
    out = []
    for key in keys:
        try:
            with open(f"{root}/{key}", "rb") as f:
                out.append(f.read())
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            raise _unavailable(key, exc) from exc
    return out


def _delete_local_many(root: str, keys: list[str], spares: Spares | None = None) -> None:
    for key in keys:
        path = f"{root}/{key}"
        try:
            if spares is None or not spares.keep(path):
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _unavailable(key, exc) from exc


def _put_local(
    path: str, key: str, data: Payload, create: bool, spares: Spares | None = None
) -> None:
    """`_write_file` with the store's errors."""
    try:
        _write_file(path, data, create, spares)
    except FileExistsError as exc:
        raise ObjectExists(key) from exc
    except OSError as exc:
        raise _unavailable(key, exc) from exc


def _write_file(path: str, data: Payload, create: bool, spares: Spares | None = None) -> None:
    """What obstore's LocalFileSystem does for a PUT: write a staging file
    `PATH#N` (a killed process leaves it for `staged_leftovers`), then
    hard-link it into place (fails if the object exists: a conditional
    create) or rename it over (overwrite). No fsync, as in obstore. A spare
    file, when there is one, is the staging file (spares.py)."""
    name, fd = (spares.take(create) if spares is not None else None) or (None, -1)
    if fd < 0:
        staged, fd = _staging_file(path)
    elif name is None:
        _write_made(fd, path, data)
        return
    else:
        staged = name
    try:
        try:
            _write_payload(fd, data)
        finally:
            os.close(fd)
        try:
            _into_place(staged, path, create)
        except FileNotFoundError:
            # A spare is staged in its own directory: the object's may not
            # exist yet.
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _into_place(staged, path, create)
    finally:
        try:
            os.unlink(staged)  # after the link; gone already after a rename
        except FileNotFoundError:
            pass


def _write_payload(fd: int, data: Payload) -> None:
    if isinstance(data, list):
        _write_parts(fd, data)
    else:
        _write_all(fd, memoryview(data))


def _write_made(fd: int, path: str, data: Payload) -> None:
    """`_write_file`'s conditional create into a nameless file made ahead
    (spares.py): written, then linked into place; no name to remove."""
    try:
        _write_payload(fd, data)
        try:
            link_made(fd, path)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            link_made(fd, path)
    finally:
        os.close(fd)


def _into_place(staged: str, path: str, create: bool) -> None:
    if create:
        os.link(staged, path)
    else:
        os.replace(staged, path)


def _staging_file(path: str) -> tuple[str, int]:
    """A new `PATH#N` and a descriptor open on it for writing."""
    while True:
        staged = f"{path}#{next(_STAGE)}"
        try:
            return staged, os.open(staged, _CREATE, 0o666)
        except FileExistsError:
            continue  # another process's staging file of the same key
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _write_parts(fd: int, parts: builtins.list[bytes | memoryview]) -> None:
    """writev in runs of at most IOV_MAX buffers; a short write (a full
    disk, a signal) finishes its run buffer by buffer."""
    for i in range(0, len(parts), _IOV_MAX):
        run = parts[i : i + _IOV_MAX]
        done = os.writev(fd, run)
        if done == sum(map(len, run)):
            continue
        for part in run:
            view = memoryview(part)
            if done >= len(view):
                done -= len(view)
                continue
            _write_all(fd, view[done:])
            done = 0


def _staged_sync(root: Path, older_than_ms: int) -> builtins.list[ObjectInfo]:
    out: builtins.list[ObjectInfo] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not _STAGED.search(name):
                continue
            path = Path(dirpath, name)
            try:
                st = path.stat()
            except FileNotFoundError:  # renamed into place or removed meanwhile
                continue
            modified = int(st.st_mtime * 1000)
            if modified < older_than_ms:
                out.append(ObjectInfo(path.relative_to(root).as_posix(), st.st_size, modified))
    return out


def _translate(exc: Exception, key: str) -> StorageError:
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError) or name == "NotFoundError":
        return ObjectNotFound(key)
    if isinstance(exc, FileExistsError) or name == "AlreadyExistsError":
        return ObjectExists(key)
    reason = explain(exc)
    err = ObjectStoreUnavailable(f"{key!r}: {reason}")
    err.reason = reason
    return err


# (pattern in the error's text, cause, what fixes it); first match wins.
_CAUSES: list[tuple[re.Pattern[str], str, str]] = [
    (
        re.compile(r"BadScheme|builder error"),
        "plain-HTTP endpoint refused",
        "set s3.allow.http = true or AWS_ALLOW_HTTP=true, or use https://",
    ),
    (
        re.compile(r"169\.254\.169\.254"),
        "no credentials (the instance metadata service was tried)",
        "set s3.access.key.id and s3.secret.access.key, or AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY",
    ),
    (
        re.compile(r"ConnectionRefused|Connection refused"),
        "connection refused",
        "check that it is up and that s3.endpoint or AWS_ENDPOINT_URL points at it",
    ),
    (
        re.compile(r"dns error|failed to lookup address"),
        "host name not found",
        "check s3.endpoint or AWS_ENDPOINT_URL, and s3.region or AWS_REGION",
    ),
    (
        re.compile(r"<Code>NoSuchBucket</Code>"),
        "the bucket does not exist",
        "create it, or correct the bucket in the objects URL",
    ),
    (
        re.compile(r"<Code>(AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch)</Code>"),
        "access denied",
        "check s3.access.key.id and s3.secret.access.key, or AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, and the bucket's policy",
    ),
    (
        re.compile(r"timed out|TimedOut|Timeout"),
        "timed out",
        "check the network path to the endpoint",
    ),
]


def explain(exc: BaseException) -> str:
    """One line from obstore's error: the endpoint, the cause and the setting
    that fixes it, instead of the Rust debug dump that follows its message."""
    text = str(exc)
    head = " ".join(text.partition("Debug source:")[0].split())
    endpoint = re.search(r"\b(https?://[^/\s?]+)", head)
    where = f"{endpoint.group(1)}: " if endpoint else ""
    for pattern, cause, fix in _CAUSES:
        if pattern.search(text):
            return f"{where}{cause}; {fix}"
    code = re.search(r"<Code>([^<]+)</Code>(?:<Message>([^<]+)</Message>)?", text)
    if code:
        return f"{where}{code.group(1)}: {code.group(2) or ''}".rstrip(": ")
    return head if len(head) <= 300 else head[:297] + "..."
