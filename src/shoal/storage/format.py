"""The object format shared by WAL objects and, later, compacted stream objects.

    [block 0][block 1]...[labels][index][footer]

A block is a contiguous offset range of one stream: whole record batches, back
to back. The index has one fixed-size entry per block; the footer (fixed size,
at the end) locates the index and carries the format version and magic, so a
reader needs one small range read for the footer+index and one per block.

Labels (footer flag FLAG_LABELS, added compatibly: readers that do not know
the flag never look before the index) name each stream's owner as the
writer sees it — for a Kafka partition its topic, partition and topic id —
as a JSON object {stream id: label} followed by its length (u32), so that
`shoal meta rebuild` can rebuild the metadata from the objects alone.
Objects without labels (older ones) still read.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import crc32c

from shoal.storage.errors import CorruptObject
from shoal.values import value

MAGIC = b"SHOALOB1"
FORMAT_VERSION = 1

# stream_id, start_offset, end_offset (exclusive), position, size, max_timestamp
_ENTRY = struct.Struct(">qqqQIq")
# index_position, index_size, index_crc, version, flags, magic
_FOOTER = struct.Struct(">QIIHH8s")
FOOTER_SIZE = _FOOTER.size
FLAG_LABELS = 1
#: stream id -> its label (None: none known); see the module docstring
Labeler = Callable[[int], "str | None"]


def labels_of(label: Labeler | None, streams: Iterable[int]) -> dict[int, str]:
    """The labels an object of these streams carries (those known)."""
    if label is None:
        return {}
    out = {}
    for sid in streams:
        name = label(sid)
        if name is not None:
            out[sid] = name
    return out


_LABELS_LEN = struct.Struct(">I")
#: how much to read from the end to get footer and a typical index in one go
TAIL_READ = 64 * 1024


@value
class BlockEntry:
    stream_id: int
    start_offset: int
    end_offset: int
    position: int
    size: int
    max_timestamp: int


@dataclass(slots=True)
class BlockBuilder:
    """Collects the batches of one stream for one object."""

    stream_id: int
    start_offset: int
    end_offset: int
    max_timestamp: int
    parts: list[bytes | memoryview]
    size: int = 0

    def add(self, part: bytes | memoryview, end_offset: int, max_timestamp: int) -> None:
        self.parts.append(part)
        self.size += len(part)
        self.end_offset = end_offset
        if max_timestamp > self.max_timestamp:
            self.max_timestamp = max_timestamp


def encode_object(
    blocks: Sequence[BlockBuilder], labels: Mapping[int, str] | None = None
) -> tuple[bytearray, list[BlockEntry]]:
    """Lay out blocks, labels, index and footer in one buffer (one copy of the data)."""
    parts, entries, _size = object_parts(blocks, labels)
    return bytearray().join(parts), entries


def object_parts(
    blocks: Sequence[BlockBuilder], labels: Mapping[int, str] | None = None
) -> tuple[list[bytes | memoryview], list[BlockEntry], int]:
    """The object as buffers to write back to back, its index entries and
    its size. The blocks' data is not copied: a file store writes the
    buffers with writev, so an object is never assembled in memory (that
    copy, and the growing buffer's reallocations, ran on the event loop)."""
    parts: list[bytes | memoryview] = []
    entries: list[BlockEntry] = []
    position = 0
    for b in blocks:
        entries.append(
            BlockEntry(b.stream_id, b.start_offset, b.end_offset, position, b.size, b.max_timestamp)
        )
        parts += b.parts
        position += b.size
    tail = _tail(position, entries, labels)
    parts.append(tail)
    return parts, entries, position + len(tail)


def _tail(position: int, entries: Sequence[BlockEntry], labels: Mapping[int, str] | None) -> bytes:
    """Labels (if any), index and footer, for blocks that end at `position`."""
    chunks: list[bytes] = []
    flags = 0
    if labels:
        table = json.dumps({str(k): v for k, v in labels.items()}, separators=(",", ":"))
        raw = table.encode()
        chunks += (raw, _LABELS_LEN.pack(len(raw)))
        position += len(raw) + _LABELS_LEN.size
        flags |= FLAG_LABELS
    index = b"".join(
        _ENTRY.pack(e.stream_id, e.start_offset, e.end_offset, e.position, e.size, e.max_timestamp)
        for e in entries
    )
    chunks += (
        index,
        _FOOTER.pack(position, len(index), crc32c.crc32c(index), FORMAT_VERSION, flags, MAGIC),
    )
    return b"".join(chunks)


def footer_flags(tail: bytes | memoryview) -> int:
    """The footer's flags (call after decode_footer accepted it)."""
    return int(_FOOTER.unpack_from(tail, len(tail) - FOOTER_SIZE)[4])


def decode_labels(before_index: bytes | memoryview) -> dict[int, str]:
    """Labels from the bytes that end where the index starts (FLAG_LABELS)."""
    if len(before_index) < _LABELS_LEN.size:
        raise CorruptObject("labels length missing")
    (n,) = _LABELS_LEN.unpack_from(before_index, len(before_index) - _LABELS_LEN.size)
    end = len(before_index) - _LABELS_LEN.size
    if n > end:
        raise CorruptObject("labels longer than what precedes the index")
    try:
        table = json.loads(bytes(before_index[end - n : end]))
        return {int(k): str(v) for k, v in table.items()}
    except (ValueError, AttributeError) as exc:
        raise CorruptObject(f"unreadable labels: {exc}") from None


def decode_footer(tail: bytes | memoryview, object_size: int) -> tuple[int, int, int]:
    """(index position, index size, index crc) from the last bytes of an object."""
    if len(tail) < FOOTER_SIZE:
        raise CorruptObject("object shorter than its footer")
    pos, size, crc, version, _flags, magic = _FOOTER.unpack_from(tail, len(tail) - FOOTER_SIZE)
    if magic != MAGIC:
        raise CorruptObject(f"bad magic {magic!r}")
    if version > FORMAT_VERSION:
        raise CorruptObject(
            f"object format v{version} is newer than this broker (v{FORMAT_VERSION})"
        )
    if pos + size + FOOTER_SIZE != object_size:
        raise CorruptObject("footer does not match the object size")
    return int(pos), int(size), int(crc)


def decode_index(index: bytes | memoryview, crc: int) -> list[BlockEntry]:
    if crc32c.crc32c(index) != crc:
        raise CorruptObject("index CRC mismatch")
    if len(index) % _ENTRY.size:
        raise CorruptObject("index size is not a whole number of entries")
    return [BlockEntry(*fields) for fields in _ENTRY.iter_unpack(index)]


def decode_object(data: bytes | memoryview) -> list[BlockEntry]:
    """Index of a whole object held in memory (tools, tests, compaction)."""
    pos, size, crc = decode_footer(data, len(data))
    return decode_index(memoryview(data)[pos : pos + size], crc)
