"""Topic-side rewrites of a produced batch, as Kafka's LogValidator does them:
recompression to the topic's compression.type and the CreateTime window
(message.timestamp.before.max.ms / after.max.ms).

Both are off the common path: a topic left at compression.type=producer never
recompresses, and the timestamp window reads only the batch header unless a
lower bound is configured.
"""

from __future__ import annotations

import struct

import crc32c

from shoal.protocol import batches
from shoal.protocol.records import (
    COMPRESSION_MASK,
    CRC_START,
    HEADER_SIZE,
    LOG_OVERHEAD,
    TIMESTAMP_TYPE_BIT,
    ValidatedBatch,
    read_header,
    record_timestamps,
)

_LENGTH = struct.Struct(">i")
_ATTR = struct.Struct(">h")
_CRC = struct.Struct(">I")
NO_TIMESTAMP = -1


def recompress(batch: ValidatedBatch, codec: int, level: int | None = None) -> ValidatedBatch:
    """The batch with its records in `codec`: same header fields but the
    compression bits, the length and the CRC. Callers skip batches already in
    `codec` (Kafka does not recompress those, whatever the level)."""
    data = batch.data
    h = batch.header
    body = data[HEADER_SIZE : h.size]
    raw = batches.decompress(h.compression, body) if h.compression else bytes(body)
    packed = batches.compress(codec, raw, level)
    out = bytearray(data[:HEADER_SIZE])
    out += packed
    _LENGTH.pack_into(out, 8, len(out) - LOG_OVERHEAD)
    _ATTR.pack_into(out, 21, (h.attributes & ~COMPRESSION_MASK) | codec)
    _CRC.pack_into(out, 17, crc32c.crc32c(memoryview(out)[CRC_START:]))
    new = bytes(out)
    return ValidatedBatch(memoryview(new), read_header(new))


def timestamp_violations(
    batch: ValidatedBatch, now_ms: int, before_max_ms: int, after_max_ms: int
) -> list[tuple[int, str]]:
    """Records outside [now - before, now + after], as (index, message), for a
    CreateTime topic. Without a lower bound the header's max timestamp decides
    alone (it is the producer's, as Kafka's would be before its rewrite)."""
    h = batch.header
    if h.attributes & TIMESTAMP_TYPE_BIT:
        return []  # LogAppendTime batches are refused or stamped elsewhere
    lo = now_ms - before_max_ms
    hi = now_ms + after_max_ms
    if lo <= NO_TIMESTAMP - 1 and h.max_timestamp <= hi:
        return []
    window = f"[{lo}, {hi}]"
    return [
        (i, f"timestamp {ts} of record {i} is out of range: it must be within {window}")
        for i, (_offset, ts) in enumerate(record_timestamps(batch.data) or ())
        if ts != NO_TIMESTAMP and not lo <= ts <= hi
    ]
