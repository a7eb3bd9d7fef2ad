"""Typed storage errors; the broker maps them to Kafka error codes."""

from __future__ import annotations


class StorageError(Exception):
    """Base of everything the storage engine raises on purpose."""


class ObjectStoreUnavailable(StorageError):
    """The object store cannot be reached or refuses: retriable."""

    reason: str = ""  # the cause in one line, without the object key


class ObjectNotFound(StorageError):
    pass


class ObjectExists(StorageError):
    """A conditional create found the key taken."""


class Fenced(StorageError):
    """Another writer owns the stream now (its epoch moved on)."""


class OffsetOutOfRange(StorageError):
    def __init__(self, offset: int, start: int, end: int) -> None:
        super().__init__(f"offset {offset} outside [{start}, {end}]")
        self.offset, self.start, self.end = offset, start, end


class StorageFull(StorageError):
    """No room to write (disk full, or free space below the configured floor):
    retriable, and refused before an offset was handed out."""


class AppendTimeout(StorageError):
    """An append was not committed before its request's timeout: retriable."""


class CorruptObject(StorageError):
    """An object's footer or index does not check out."""


class BatchBehindEnd(StorageError):
    """append_at was given a batch the stream already has (offsets at or
    below its end): a mirror resuming must start from the stream's end."""
