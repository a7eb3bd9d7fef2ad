"""Build and decode record batch v2 records (sans-IO).

The broker's produce and fetch paths treat batches as opaque bytes; only
recompression (compression.type), timestamp lookups and key compaction decode
them. The edge gateway does: it turns MQTT and HTTP messages into batches for
its local log, and decodes local batches to forward each record (with an origin
header) to the central cluster. Building is the ingest hot path, so records are
encoded with cached varints and joined once; decoding supports every Kafka codec
(through `cramjam`; gzip is compressed with the standard library).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import crc32c

from shoal.protocol.primitives import uvarint
from shoal.protocol.recordcheck import snappy_chunks
from shoal.protocol.records import (
    COMPRESSION_MASK,
    CONTROL_BIT,
    CRC_START,
    HEADER_SIZE,
    TIMESTAMP_TYPE_BIT,
    TRANSACTIONAL_BIT,
    read_header,
)

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
CODECS = {"none": NONE, "gzip": GZIP, "snappy": SNAPPY, "lz4": LZ4, "zstd": ZSTD}

Header = tuple[str, bytes | None]

# attributes .. records count: the CRC-covered part of the batch header
_AFTER_CRC = struct.Struct(">hiqqqhii")
_PREFIX = struct.Struct(">qiibI")  # base offset, batch length, leader epoch, magic, crc


class BatchDecodeError(ValueError):
    """A batch whose records cannot be decoded (damaged, or an unknown codec)."""


def _zigzag_bytes(n: int) -> bytes:
    return uvarint((n << 1) ^ (n >> 63))


_SMALL_MIN = -1
_SMALL_MAX = 1 << 14
_SMALL = tuple(_zigzag_bytes(i) for i in range(_SMALL_MIN, _SMALL_MAX))


def varint(n: int) -> bytes:
    """Zigzag varint, as records encode lengths, deltas and counts."""
    if _SMALL_MIN <= n < _SMALL_MAX:
        return _SMALL[n - _SMALL_MIN]
    return _zigzag_bytes(n)


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    byte = buf[pos]
    if not byte & 0x80:
        return (byte >> 1) ^ -(byte & 1), pos + 1
    result = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise BatchDecodeError("varint too long")


def _bytes_field(b: bytes | None) -> bytes:
    if b is None:
        return b"\x01"  # varint(-1)
    return varint(len(b)) + b


def encode_record(
    offset_delta: int,
    timestamp_delta: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[Header] = (),
) -> bytes:
    """One record, length-prefixed, as it sits in an uncompressed batch."""
    parts = [
        b"\x00",  # attributes (unused)
        varint(timestamp_delta),
        varint(offset_delta),
        _bytes_field(key),
        _bytes_field(value),
        varint(len(headers)),
    ]
    for hk, hv in headers:
        kb = hk.encode()
        parts.append(varint(len(kb)))
        parts.append(kb)
        parts.append(_bytes_field(hv))
    body = b"".join(parts)
    return varint(len(body)) + body


class BatchBuilder:
    """Collects records, then lays them out as one v2 batch.

    `timestamp` is milliseconds since the epoch (CreateTime). Offsets are
    relative: the log assigns the base offset on append.
    """

    __slots__ = (
        "_base_ts",
        "_max_ts",
        "_parts",
        "_size",
        "attributes",
        "base_sequence",
        "compression",
        "producer_epoch",
        "producer_id",
    )

    def __init__(
        self,
        *,
        compression: int = NONE,
        producer_id: int = -1,
        producer_epoch: int = -1,
        base_sequence: int = -1,
        attributes: int = 0,
    ) -> None:
        if compression not in CODECS.values():
            raise ValueError(f"unknown compression codec {compression}")
        self.compression = compression
        #: flag bits beside the codec (TRANSACTIONAL_BIT, CONTROL_BIT)
        self.attributes = attributes
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self._parts: list[bytes] = []
        self._size = 0
        self._base_ts = -1
        self._max_ts = -1

    def __len__(self) -> int:
        return len(self._parts)

    @property
    def size(self) -> int:
        """Bytes of the batch if built now, uncompressed."""
        return HEADER_SIZE + self._size

    def append(
        self,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[Header] = (),
    ) -> int:
        """Add one record; returns its offset delta."""
        if self._base_ts < 0:
            self._base_ts = timestamp
        if timestamp > self._max_ts:
            self._max_ts = timestamp
        delta = len(self._parts)
        rec = encode_record(delta, timestamp - self._base_ts, key, value, headers)
        self._parts.append(rec)
        self._size += len(rec)
        return delta

    def build(self, base_offset: int = 0, partition_leader_epoch: int = -1) -> bytes:
        if not self._parts:
            raise ValueError("a batch needs at least one record")
        records = b"".join(self._parts)
        if self.compression != NONE:
            records = compress(self.compression, records)
        count = len(self._parts)
        after_crc = (
            _AFTER_CRC.pack(
                self.compression | self.attributes,
                count - 1,
                self._base_ts,
                self._max_ts,
                self.producer_id,
                self.producer_epoch,
                self.base_sequence,
                count,
            )
            + records
        )
        crc = crc32c.crc32c(after_crc)
        # batch length counts everything after the length field itself
        length = 4 + 1 + 4 + len(after_crc)
        return _PREFIX.pack(base_offset, length, partition_leader_epoch, 2, crc) + after_crc


def build_batch(
    records: Iterable[tuple[int, bytes | None, bytes | None, Sequence[Header]]],
    *,
    compression: int = NONE,
    base_offset: int = 0,
) -> bytes:
    """One batch of (timestamp, key, value, headers) records."""
    b = BatchBuilder(compression=compression)
    for ts, key, value, headers in records:
        b.append(ts, key, value, headers)
    return b.build(base_offset)


_CONTROL_KEY = struct.Struct(">hh")  # version 0, type (0 abort, 1 commit)
_CONTROL_VALUE = struct.Struct(">hi")  # version 0, coordinator epoch
ABORT_MARKER = 0
COMMIT_MARKER = 1


def control_batch(
    producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int, timestamp: int
) -> bytes:
    """A transaction marker, as Kafka writes it into each partition of a
    transaction: a transactional control batch of one record whose key says
    commit or abort. Clients skip it; read_committed ones use it to end the
    producer's transaction."""
    b = BatchBuilder(
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        attributes=TRANSACTIONAL_BIT | CONTROL_BIT,
    )
    b.append(
        timestamp,
        _CONTROL_KEY.pack(0, COMMIT_MARKER if commit else ABORT_MARKER),
        _CONTROL_VALUE.pack(0, coordinator_epoch),
    )
    return b.build()


def control_type(batch: bytes | memoryview) -> int | None:
    """COMMIT_MARKER or ABORT_MARKER for a control batch, None otherwise."""
    if not is_control(batch):
        return None
    (rec,) = decode_records(batch)
    if rec.key is None or len(rec.key) < _CONTROL_KEY.size:
        return None
    return int(_CONTROL_KEY.unpack_from(rec.key)[1])


# compression --------------------------------------------------------------


def _cramjam() -> object:
    try:
        import cramjam
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BatchDecodeError(
            "snappy, lz4 and zstd batches need the cramjam package (pip install cramjam)"
        ) from exc
    return cramjam


def compress(codec: int, data: bytes, level: int | None = None) -> bytes:
    """`data` in `codec` (NONE: as is), at a Kafka compression level for gzip,
    lz4 and zstd (None: the codec's default)."""
    if codec == NONE:
        return data
    if codec == GZIP:
        c = zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    cj = _cramjam()
    if codec == SNAPPY:
        return bytes(cj.snappy.compress_raw(data))  # type: ignore[attr-defined]
    if codec == LZ4:
        return bytes(cj.lz4.compress(data, level=level))  # type: ignore[attr-defined]
    if codec == ZSTD:
        return bytes(cj.zstd.compress(data, level=level))  # type: ignore[attr-defined]
    raise BatchDecodeError(f"unknown compression codec {codec}")


def decompress(codec: int, data: bytes | memoryview) -> bytes:
    try:
        cj = _cramjam()
        if codec == GZIP:
            # every gzip member, as Java's GZIPInputStream and the produce
            # validator (recordcheck) read them; zlib.decompress stops after one
            return bytes(cj.gzip.decompress(data))  # type: ignore[attr-defined]
        if codec == SNAPPY:
            return b"".join(
                bytes(cj.snappy.decompress_raw(chunk))  # type: ignore[attr-defined]
                for chunk in snappy_chunks(data)
            )
        if codec == LZ4:
            return bytes(cj.lz4.decompress(bytes(data)))  # type: ignore[attr-defined]
        if codec == ZSTD:
            return bytes(cj.zstd.decompress(bytes(data)))  # type: ignore[attr-defined]
    except BatchDecodeError:
        raise
    except Exception as exc:
        raise BatchDecodeError(f"cannot decompress codec {codec}: {exc}") from exc
    raise BatchDecodeError(f"unknown compression codec {codec}")


# decoding -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]

    @property
    def size(self) -> int:
        """Payload bytes: key, value, header names and values (the unit of
        the edge gateway's bandwidth accounting)."""
        n = len(self.key or b"") + len(self.value or b"")
        for hk, hv in self.headers:
            n += len(hk) + len(hv or b"")
        return n


def is_control(batch: bytes | memoryview) -> bool:
    return bool(read_header(batch).attributes & CONTROL_BIT)


def decode_records(batch: bytes | memoryview) -> list[Record]:
    """Every record of one whole batch (CRC checked), with absolute offsets."""
    view = memoryview(batch)
    if len(view) < HEADER_SIZE:
        raise BatchDecodeError("batch shorter than its header")
    h = read_header(view)
    if h.magic != 2:
        raise BatchDecodeError(f"message format v{h.magic} is not supported")
    if h.size > len(view):
        raise BatchDecodeError("batch cut off")
    if crc32c.crc32c(view[CRC_START : h.size]) != h.crc:
        raise BatchDecodeError("record batch CRC mismatch")
    body: bytes | memoryview = view[HEADER_SIZE : h.size]
    codec = h.attributes & COMPRESSION_MASK
    if codec != NONE:
        body = decompress(codec, body)
    log_append = bool(h.attributes & TIMESTAMP_TYPE_BIT)
    out: list[Record] = []
    pos = 0
    try:
        for _ in range(h.records_count):
            length, pos = _read_varint(body, pos)
            end = pos + length
            pos += 1  # attributes
            ts_delta, pos = _read_varint(body, pos)
            off_delta, pos = _read_varint(body, pos)
            klen, pos = _read_varint(body, pos)
            key = None
            if klen >= 0:
                key = bytes(body[pos : pos + klen])
                pos += klen
            vlen, pos = _read_varint(body, pos)
            value = None
            if vlen >= 0:
                value = bytes(body[pos : pos + vlen])
                pos += vlen
            nh, pos = _read_varint(body, pos)
            headers: list[Header] = []
            for _h in range(nh):
                hkl, pos = _read_varint(body, pos)
                hk = bytes(body[pos : pos + hkl]).decode("utf-8", "replace")
                pos += hkl
                hvl, pos = _read_varint(body, pos)
                hv = None
                if hvl >= 0:
                    hv = bytes(body[pos : pos + hvl])
                    pos += hvl
                headers.append((hk, hv))
            if pos != end:
                raise BatchDecodeError("record length does not match its fields")
            ts = h.max_timestamp if log_append else h.base_timestamp + ts_delta
            out.append(Record(h.base_offset + off_delta, ts, key, value, tuple(headers)))
    except IndexError as exc:
        raise BatchDecodeError("record runs past the end of its batch") from exc
    return out


def iter_batches(buf: bytes | memoryview) -> Iterator[memoryview]:
    """Whole batches of a buffer (a fetch result or a block), in order."""
    view = memoryview(buf)
    pos = 0
    n = len(view)
    while pos + 12 <= n:
        length = int.from_bytes(view[pos + 8 : pos + 12], "big", signed=True)
        end = pos + 12 + length
        if length < HEADER_SIZE - 12 or end > n:
            return
        yield view[pos:end]
        pos = end
