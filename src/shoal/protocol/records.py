"""Record batch v2 as opaque bytes: header fields, CRC32C and in-place patches.

The broker does not rewrite records on the produce or fetch path. It reads and
writes the 61-byte batch header only; records (and their compression) pass
through untouched, unless the topic's compression.type asks for another codec
(recompress.py). On produce it does check them, as Kafka does, without
copying them (recordcheck.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import crc32c

from shoal.protocol import recordcheck
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.recordcheck import ZSTD
from shoal.values import value

HEADER_SIZE = 61
LOG_OVERHEAD = 12  # baseOffset + batchLength precede the length-counted part
CRC_START = 21  # the CRC covers attributes .. end of batch
MAGIC_OFFSET = 16

_HEADER = struct.Struct(">qiibIhiqqqhii")
_BASE_OFFSET = struct.Struct(">q")
_PATCH = struct.Struct(">qii")  # baseOffset, batchLength, partitionLeaderEpoch
_LENGTH_MAGIC = struct.Struct(">ib")  # batchLength at 8, magic at 16 (after epoch)
_MAX_TS = struct.Struct(">q")
_ATTR = struct.Struct(">h")
_CRC = struct.Struct(">I")

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_BIT = 0x08
TRANSACTIONAL_BIT = 0x10
CONTROL_BIT = 0x20

NO_PRODUCER_ID = -1
# A compressed batch may decompress to at most this much (or max.message.bytes
# when that is larger): a few KiB of zip bomb must not allocate gigabytes.
# Real clients stay far below: librdkafka's batch.size caps an uncompressed
# batch at 1 MB, the Java producer's batch.size at 16 KiB (estimated).
DECOMPRESSED_LIMIT = 64 << 20


class BatchRejected(KafkaError):
    """A refused batch, with the records that failed where they are known:
    Produce v8+ carries them as record_errors (batch_index, message)."""

    def __init__(
        self, code: ErrorCode, message: str, record_errors: tuple[tuple[int, str], ...] = ()
    ) -> None:
        super().__init__(code, message)
        self.record_errors = record_errors


@value
class BatchHeader:
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def size(self) -> int:
        return self.batch_length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def compression(self) -> int:
        return self.attributes & COMPRESSION_MASK

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_BIT)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_BIT)


def read_header(buf: bytes | memoryview, pos: int = 0) -> BatchHeader:
    return BatchHeader(*_HEADER.unpack_from(buf, pos))


def batch_spans(buf: bytes | memoryview) -> Iterator[tuple[int, int]]:
    """(start, end) of each whole batch; a partial trailing batch is ignored, as
    Kafka clients ignore one at the end of a fetch."""
    pos = 0
    n = len(buf)
    while pos + LOG_OVERHEAD <= n:
        (length,) = struct.unpack_from(">i", buf, pos + 8)
        end = pos + LOG_OVERHEAD + length
        if length < HEADER_SIZE - LOG_OVERHEAD or end > n:
            return
        yield pos, end
        pos = end


@value
class ValidatedBatch:
    """One batch of a produce request, checked and ready to be stored."""

    data: memoryview
    header: BatchHeader

    @property
    def record_count(self) -> int:
        return self.header.last_offset_delta + 1


def _frame(view: memoryview, max_batch_bytes: int) -> list[tuple[memoryview, BatchHeader]]:
    """Split a records field into batches and check each header and CRC.

    CORRUPT_MESSAGE for framing and CRC damage, UNSUPPORTED_FOR_MESSAGE_FORMAT
    for magic 0/1 message sets, MESSAGE_TOO_LARGE over max.message.bytes,
    INVALID_RECORD when the declared record count and offset delta disagree
    (offsets would not be dense).
    """
    n = len(view)
    if n == 0:
        raise KafkaError(ErrorCode.corrupt_message, "empty record set")
    out: list[tuple[memoryview, BatchHeader]] = []
    pos = 0
    while pos < n:
        if n - pos < LOG_OVERHEAD + 5:
            raise KafkaError(ErrorCode.corrupt_message, "truncated batch header")
        length, magic = _LENGTH_MAGIC.unpack_from(view, pos + 8)[0], view[pos + MAGIC_OFFSET]
        if magic != 2:
            raise KafkaError(
                ErrorCode.unsupported_for_message_format,
                f"message format v{magic} is not supported; use record batch v2",
            )
        size = LOG_OVERHEAD + length
        if length < HEADER_SIZE - LOG_OVERHEAD or pos + size > n:
            raise KafkaError(ErrorCode.corrupt_message, f"batch length {length} is out of bounds")
        if size > max_batch_bytes:
            raise KafkaError(
                ErrorCode.message_too_large,
                f"batch of {size} bytes exceeds max.message.bytes={max_batch_bytes}",
            )
        batch = view[pos : pos + size]
        header = read_header(batch)
        if crc32c.crc32c(batch[CRC_START:]) != header.crc:
            raise KafkaError(ErrorCode.corrupt_message, "record batch CRC mismatch")
        if header.records_count <= 0 or header.records_count != header.last_offset_delta + 1:
            raise KafkaError(
                ErrorCode.invalid_record,
                f"batch declares {header.records_count} records "
                f"but last offset delta {header.last_offset_delta}",
            )
        out.append((batch, header))
        pos += size
    return out


class LargeBatch(Exception):
    """The records decompress past the caller's `inline_limit`: check the batch
    again where taking long is harmless (a worker thread, not the event loop)."""


def check_records(
    batch: memoryview, header: BatchHeader, max_batch_bytes: int, inline_limit: int | None = None
) -> int:
    """Walk the records of one framed batch (decompressing it once, bounded);
    returns the index of its first record without a key, or -1.

    INVALID_RECORD (with the failing record) when a record breaks Kafka's
    rules, CORRUPT_MESSAGE when the records do not decompress,
    MESSAGE_TOO_LARGE when they decompress beyond the limit,
    UNSUPPORTED_COMPRESSION_TYPE for a codec id Kafka does not define.
    With `inline_limit` below that limit, LargeBatch once the records
    decompress past it (a few kilobytes can decompress to tens of megabytes).
    """
    data = batch[HEADER_SIZE:]
    body: bytes | bytearray | memoryview = data
    codec = header.compression
    if codec > ZSTD:
        raise KafkaError(
            ErrorCode.unsupported_compression_type, f"unknown compression codec {codec}"
        )
    limit = max(DECOMPRESSED_LIMIT, max_batch_bytes)
    cap = limit if inline_limit is None else min(inline_limit, limit)
    try:
        if codec:
            body = recordcheck.decompress_limited(codec, data, cap)
        return recordcheck.check_records(body, header.records_count)
    except recordcheck.DecompressedTooLarge as exc:
        if cap < limit:
            raise LargeBatch(str(exc)) from exc
        raise KafkaError(ErrorCode.message_too_large, str(exc)) from exc
    except recordcheck.DecompressError as exc:
        raise KafkaError(ErrorCode.corrupt_message, f"records do not decompress: {exc}") from exc
    except ValueError as exc:
        reason, index = exc.args
        raise BatchRejected(ErrorCode.invalid_record, reason, ((index, reason),)) from exc
    finally:
        if codec:
            recordcheck.release_scratch()


def validate_batches(records: bytes | memoryview, max_batch_bytes: int) -> list[ValidatedBatch]:
    """Check every batch of a records field: header, CRC and every record
    (errors as in `_frame` and `check_records`)."""
    out = []
    for batch, header in _frame(memoryview(records), max_batch_bytes):
        check_records(batch, header, max_batch_bytes)
        out.append(ValidatedBatch(batch, header))
    return out


def validate_produce(
    records: bytes | memoryview,
    max_batch_bytes: int,
    *,
    api_version: int,
    compacted: bool = False,
    log_append_time: bool = False,
    inline_limit: int | None = None,
) -> ValidatedBatch:
    """Check one partition's records of a Produce request as Kafka checks a
    client's append (ProduceRequest.validateRecords, UnifiedLog and
    LogValidator): exactly one batch, base offset 0, no control batch, a
    sequence with every producer id, a transactional batch only with a
    producer id, zstd only from Produce v7, well-formed records, keys on
    compacted topics, and no client-set LogAppendTime on LogAppendTime
    topics (or without a timestamp). Raises KafkaError / BatchRejected, or
    LargeBatch past `inline_limit` (see check_records)."""
    batches = _frame(memoryview(records), max_batch_bytes)
    if len(batches) != 1:
        raise KafkaError(
            ErrorCode.invalid_record,
            f"Produce requests must carry exactly one record batch per partition, "
            f"not {len(batches)}",
        )
    batch, h = batches[0]
    if h.compression == ZSTD and api_version < 7:
        raise KafkaError(
            ErrorCode.unsupported_compression_type,
            f"Produce v{api_version} requests may not use zstd compression (v7+)",
        )
    if h.base_offset != 0:
        raise KafkaError(
            ErrorCode.invalid_record, f"batch base offset must be 0, not {h.base_offset}"
        )
    if h.is_control:
        raise KafkaError(ErrorCode.invalid_record, "clients may not write control batches")
    if h.producer_id > NO_PRODUCER_ID and h.base_sequence < 0:
        raise KafkaError(
            ErrorCode.invalid_record,
            f"invalid sequence {h.base_sequence} for producer id {h.producer_id}",
        )
    if h.is_transactional and h.producer_id < 0:
        raise KafkaError(
            ErrorCode.invalid_record,
            f"transactional batch without a producer id ({h.producer_id})",
        )
    first_null_key = check_records(batch, h, max_batch_bytes, inline_limit)
    if compacted and first_null_key >= 0:
        message = "compacted topics cannot accept records without a key"
        raise BatchRejected(
            ErrorCode.invalid_record,
            message,
            tuple((i, message) for i in _null_keys(batch, h, max_batch_bytes)),
        )
    if h.attributes & TIMESTAMP_TYPE_BIT and (log_append_time or h.max_timestamp < 0):
        message = "producers may not set the timestamp type to LogAppendTime"
        raise BatchRejected(
            ErrorCode.invalid_timestamp,
            message,
            tuple((i, message) for i in range(h.records_count)),
        )
    return ValidatedBatch(batch, h)


def _null_keys(batch: memoryview, header: BatchHeader, max_batch_bytes: int) -> list[int]:
    """Indexes of the keyless records of a batch already checked (rare: only
    to answer a refused produce to a compacted topic)."""
    body: bytes | bytearray | memoryview = batch[HEADER_SIZE:]
    if header.compression:
        body = recordcheck.decompress_limited(
            header.compression, batch[HEADER_SIZE:], max(DECOMPRESSED_LIMIT, max_batch_bytes)
        )
    return recordcheck.null_keys(body, header.records_count)


def patch_prefix(base_offset: int, batch_length: int, leader_epoch: int) -> bytes:
    """The first 16 bytes of a stored batch. Written in front of batch[16:], it
    assigns the offset without touching the CRC-covered part."""
    return _PATCH.pack(base_offset, batch_length, leader_epoch)


def with_log_append_time(batch: memoryview, now_ms: int) -> bytearray:
    """A copy of the batch stamped with LogAppendTime, CRC recomputed, for topics
    with message.timestamp.type=LogAppendTime."""
    out = bytearray(batch)
    (attrs,) = _ATTR.unpack_from(out, 21)
    _ATTR.pack_into(out, 21, attrs | TIMESTAMP_TYPE_BIT)
    _MAX_TS.pack_into(out, 35, now_ms)
    _CRC.pack_into(out, 17, crc32c.crc32c(memoryview(out)[CRC_START:]))
    return out


def read_base_offset(buf: bytes | memoryview, pos: int = 0) -> int:
    return int(_BASE_OFFSET.unpack_from(buf, pos)[0])


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Zigzag varint as used inside records; returns (value, new position)."""
    result = 0
    shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def record_timestamps(batch: bytes | memoryview) -> list[tuple[int, int]] | None:
    """(offset, timestamp) of each record, for timestamp lookups (ListOffsets)
    and the CreateTime window on produce (recompress.py). None when the records
    do not decompress, in which case callers fall back to batch granularity."""
    from shoal.protocol.batches import BatchDecodeError, decompress  # batches imports us

    header = read_header(batch)
    if header.attributes & TIMESTAMP_TYPE_BIT:
        return [(header.base_offset + i, header.max_timestamp) for i in range(header.records_count)]
    body: bytes | memoryview = memoryview(batch)[HEADER_SIZE : header.size]
    if header.compression:
        try:
            body = decompress(header.compression, body)
        except BatchDecodeError:
            return None
    out = []
    pos = 0
    for _ in range(header.records_count):
        length, pos = read_varint(body, pos)
        end = pos + length
        pos += 1  # attributes
        ts_delta, pos = read_varint(body, pos)
        off_delta, pos = read_varint(body, pos)
        out.append((header.base_offset + off_delta, header.base_timestamp + ts_delta))
        pos = end
    return out
