"""Key-based compaction (cleanup.policy=compact): keep the latest record per key.

As Kafka's log cleaner does: records keep their offsets (batches keep their
base offset and offset delta, so offsets stay where they were and gaps
appear), keyless records are kept, and a tombstone (null value) is removed
once it is older than delete.retention.ms. Only data older than
min.compaction.lag.ms is rewritten, so consumers of the tail always see every
update. Batches are re-encoded only when some of their records go; the kept
records' bytes are copied as they are and the batch is recompressed with its
own codec.

Transactions, as Kafka's cleaner treats them: nothing at or past the last
stable offset is cleaned or counts as a key's latest value (an open
transaction may still abort); records of aborted transactions are removed and
never count; transaction markers are removed once older than
delete.retention.ms (by then the records they closed are gone or committed).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import crc32c

from shoal.meta.store import AbortedTxn, MetaStore, RangeCommit, RangeRecord
from shoal.protocol.batches import compress, decompress
from shoal.protocol.records import (
    CONTROL_BIT,
    CRC_START,
    HEADER_SIZE,
    TIMESTAMP_TYPE_BIT,
    TRANSACTIONAL_BIT,
    BatchHeader,
    batch_spans,
    read_header,
    read_varint,
)
from shoal.storage.format import BlockBuilder, object_parts
from shoal.storage.objectstore import ObjectStore

log = logging.getLogger("shoal.keycompaction")

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_RECORDS_COUNT = struct.Struct(">i")
_LENGTH = struct.Struct(">i")
_CRC = struct.Struct(">I")
SNAPPY = 2


@dataclass(frozen=True, slots=True)
class KeyCompactionPolicy:
    now_ms: int
    min_lag_ms: int
    delete_retention_ms: int
    min_dirty_ratio: float
    block_bytes: int


@dataclass(slots=True)
class CleanResult:
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


def record_spans(
    batch: memoryview,
) -> tuple[bytes | memoryview, list[tuple[int, bytes | None, bool, int, int, int]]]:
    """The batch's (decompressed) records section and, per record,
    (offset, key, value is null, timestamp, start, end) within it."""
    h = read_header(batch)
    body: bytes | memoryview = batch[HEADER_SIZE : h.size]
    codec = h.compression
    if codec:
        body = decompress(codec, body)
    log_append = bool(h.attributes & TIMESTAMP_TYPE_BIT)
    out = []
    pos = 0
    for _ in range(h.records_count):
        length, pos = read_varint(body, pos)
        start_len = pos
        end = pos + length
        pos += 1
        ts_delta, pos = read_varint(body, pos)
        off_delta, pos = read_varint(body, pos)
        klen, pos = read_varint(body, pos)
        key = bytes(body[pos : pos + klen]) if klen >= 0 else None
        pos += max(klen, 0)
        vlen, _ = read_varint(body, pos)
        ts = h.max_timestamp if log_append else h.base_timestamp + ts_delta
        # The span starts at the record's own length varint.
        span_start = start_len - _varint_size(length)
        out.append((h.base_offset + off_delta, key, vlen < 0, ts, span_start, end))
        pos = end
    return body, out


def _varint_size(n: int) -> int:
    u = (n << 1) ^ (n >> 63)
    size = 1
    while u >= 0x80:
        u >>= 7
        size += 1
    return size


def _xerial(data: bytes) -> bytes:
    out = bytearray(_XERIAL_MAGIC + struct.pack(">ii", 1, 1))
    chunk = 32 * 1024
    for i in range(0, len(data), chunk):
        block = compress(SNAPPY, data[i : i + chunk])
        out += struct.pack(">i", len(block)) + block
    return bytes(out)


def rebuild(batch: memoryview, records: bytes, count: int) -> bytes:
    """The batch with a new records section: same offsets, codec, timestamps
    and producer fields; new count, length and CRC."""
    h = read_header(batch)
    codec = h.compression
    if codec:
        original = bytes(batch[HEADER_SIZE : HEADER_SIZE + 8])
        if codec == SNAPPY and original.startswith(_XERIAL_MAGIC):
            records = _xerial(records)
        else:
            records = compress(codec, records)
    out = bytearray(batch[:HEADER_SIZE])
    out += records
    _LENGTH.pack_into(out, 8, len(out) - 12)
    _RECORDS_COUNT.pack_into(out, 57, count)
    _CRC.pack_into(out, 17, crc32c.crc32c(memoryview(out)[CRC_START:]))
    return bytes(out)


ReadBlock = Callable[[RangeRecord], Awaitable[memoryview]]


class AbortedIndex:
    """Which transactional batches belong to an aborted transaction."""

    def __init__(self, aborted: Sequence[AbortedTxn]) -> None:
        self._spans: dict[int, list[tuple[int, int]]] = {}
        for a in aborted:
            self._spans.setdefault(a.producer_id, []).append((a.first_offset, a.last_offset))

    def __contains__(self, h: BatchHeader) -> bool:
        if not h.attributes & TRANSACTIONAL_BIT or h.attributes & CONTROL_BIT:
            return False
        return any(f <= h.base_offset < last for f, last in self._spans.get(h.producer_id, ()))


async def compact_keys(
    store: ObjectStore,
    meta: MetaStore,
    node_id: int,
    stream_id: int,
    ranges: Sequence[RangeRecord],
    read_block: ReadBlock,
    policy: KeyCompactionPolicy,
    cleaned_end: int,
    delete_grace_ms: int,
    uploading: set[str],
    stable_end: int | None = None,
    aborted: Sequence[AbortedTxn] = (),
    label: str | None = None,
) -> tuple[list[int], list[RangeRecord], int, CleanResult] | None:
    """One cleaning pass over a stream. Returns (replaced range starts, new
    ranges, end offset cleaned up to, stats), or None when nothing is due.
    `stable_end`: the last stable offset (nothing from there on is cleaned);
    `aborted`: the stream's aborted transactions (their records go)."""
    lag_cutoff = policy.now_ms - policy.min_lag_ms
    stable = stable_end if stable_end is not None else ranges[-1].end_offset if ranges else 0
    dropped = AbortedIndex(aborted)
    cleanable: list[RangeRecord] = []
    for r in ranges:
        if r.max_timestamp >= lag_cutoff or r.end_offset > stable:
            break
        cleanable.append(r)
    if not cleanable:
        return None
    clean_bytes = sum(r.size for r in cleanable if r.end_offset <= cleaned_end)
    dirty_bytes = sum(r.size for r in ranges if r.start_offset >= cleaned_end)
    if cleaned_end > 0 and dirty_bytes < policy.min_dirty_ratio * (clean_bytes + dirty_bytes):
        return None
    # The latest offset of every key, over the whole stream.
    latest: dict[bytes, int] = {}
    blocks: dict[int, memoryview] = {}
    for i, r in enumerate(ranges):
        block = await read_block(r)
        if i < len(cleanable):
            blocks[i] = block
        for s, e in batch_spans(block):
            batch = block[s:e]
            h = read_header(batch)
            if h.attributes & CONTROL_BIT or h.base_offset >= stable or h in dropped:
                continue
            _body, recs = record_spans(batch)
            for off, key, _null, _ts, _a, _b in recs:
                if key is not None:
                    latest[key] = off
    tombstone_cutoff = policy.now_ms - policy.delete_retention_ms
    result = CleanResult()
    builders: list[BlockBuilder] = []
    current: BlockBuilder | None = None
    first = cleanable[0].start_offset
    end = cleanable[-1].end_offset
    for i in range(len(cleanable)):
        block = blocks[i]
        for s, e in batch_spans(block):
            batch = block[s:e]
            h = read_header(batch)
            result.bytes_in += e - s
            if h.attributes & CONTROL_BIT:
                if h.max_timestamp < tombstone_cutoff:
                    continue  # an old transaction marker
                kept: bytes | memoryview = batch
            elif h in dropped:
                result.records_in += h.records_count
                continue
            else:
                body, recs = record_spans(batch)
                result.records_in += len(recs)
                keep = [
                    (a, b)
                    for off, key, null, ts, a, b in recs
                    if key is None
                    or (latest.get(key) == off and not (null and ts < tombstone_cutoff))
                ]
                result.records_out += len(keep)
                if not keep:
                    continue
                if len(keep) == len(recs):
                    kept = batch
                else:
                    kept = rebuild(batch, b"".join(bytes(body[a:b]) for a, b in keep), len(keep))
            last = h.base_offset + h.last_offset_delta + 1
            if current is None or current.size + len(kept) > policy.block_bytes:
                start = current.end_offset if current is not None else first
                current = BlockBuilder(stream_id, start, last, h.max_timestamp, [], 0)
                builders.append(current)
            current.add(kept, last, h.max_timestamp)
            result.bytes_out += len(kept)
    if not builders:
        builders.append(BlockBuilder(stream_id, first, end, -1, [], 0))
    builders[-1].end_offset = end  # coverage stays contiguous to the dirty part
    payload, entries, size = object_parts(builders, {stream_id: label} if label else None)
    object_key = (
        f"compacted/{node_id}/{int(time.time() * 1000):013d}-{os.getpid()}-keys-{stream_id}.obj"
    )
    new = [
        RangeCommit(stream_id, 0, e.start_offset, e.end_offset, e.position, e.size, e.max_timestamp)
        for e in entries
    ]
    old_starts = [r.start_offset for r in cleanable]
    uploading.add(object_key)
    try:
        await store.put(object_key, payload)
        done = await meta.replace_ranges(
            object_key,
            size,
            node_id,
            "cleaned",
            [(stream_id, old_starts, new)],
            delete_grace_ms,
        )
    finally:
        uploading.discard(object_key)
    if stream_id not in done:
        return None
    log.info(
        "stream %d: key compaction kept %d of %d records (%d -> %d bytes) in [%d, %d)",
        stream_id,
        result.records_out,
        result.records_in,
        result.bytes_in,
        result.bytes_out,
        first,
        end,
    )
    new_records = [
        RangeRecord(
            stream_id, x.start_offset, x.end_offset, object_key, x.position, x.size, x.max_timestamp
        )
        for x in new
    ]
    return old_starts, new_records, end, result
