"""The record walk of a v2 batch, and bounded decompression for it.

A batch's header and CRC say nothing about its records: a client can send
records cut short, lengths that run past the batch, a record count that
disagrees with the records, or a compressed section that does not decompress.
Kafka's broker refuses such batches (LogValidator walks every record); stored,
they stop consumers at the bad batch. `check_records` applies the same rules.

The broker calls the C implementation (`_recordcheck.c`, built with the
package): a Python loop over records would cost more than the rest of the
produce path. `check_records_py` is the reference of the same rules with the
same messages; the tests cross-check the two.

Rules, for `count` records in `buf` (the records section, decompressed):
- count > 0, and count no more than the bytes could hold (7 bytes a record);
- varints of at most 5 bytes, varlongs of at most 10 (bits past 32/64
  dropped, as Kafka's ByteUtils does);
- record length >= 0 and within the batch; the record's fields consume
  exactly that length;
- offset delta of record i is i (Kafka rewrites a compressed batch whose inner
  offsets are off; Shoal stores batches unchanged, so it refuses them, or
  consumers would see offsets the log never assigned);
- key and value lengths -1 (null) or 0..bytes left in the record;
- header count 0..(bytes left)/2; header key length 0..bytes left (a null key
  is refused, as Kafka does); header value length -1 or 0..bytes left;
- no bytes left over after the last record.

Decompression is bounded: the output may not exceed `limit` bytes (a zip bomb
of a few KiB must not allocate gigabytes); a batch over it is refused.
"""

from __future__ import annotations

import logging
import mmap
import threading
from collections.abc import Callable

log = logging.getLogger("shoal.protocol")

# Kafka's compression codec ids (attributes & 0x07), as in batches.py
NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
MIN_RECORD_BYTES = 7

_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = 16  # magic, version, compatible version


class DecompressError(ValueError):
    """The compressed records do not decompress (damaged, or an unknown codec)."""


class DecompressedTooLarge(ValueError):
    """The records decompress to more than the limit."""


# -- the record walk: reference implementation --------------------------------


def _varint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """(value, new position) of a zigzag varint, or (-1, -1) past `end`,
    (-2, -2) when longer than 5 bytes."""
    value = 0
    shift = 0
    while True:
        if pos >= end:
            return -1, -1
        b = buf[pos]
        pos += 1
        if not b & 0x80:
            value = (value | (b << shift)) & 0xFFFFFFFF
            break
        value |= (b & 0x7F) << shift
        shift += 7
        if shift > 28:
            return -2, -2
    value = (value >> 1) ^ -(value & 1)
    return value, pos


def _skip_varlong(buf: bytes | memoryview, pos: int, end: int) -> int:
    shift = 0
    while True:
        if pos >= end:
            return -1
        b = buf[pos]
        pos += 1
        if not b & 0x80:
            return pos
        shift += 7
        if shift > 63:
            return -2


class _Bad(Exception):
    pass


def check_records_py(buf: bytes | bytearray | memoryview, count: int) -> int:
    """Reference of `_recordcheck.check_records`: the index of the first
    record with a null key, or -1; ValueError(reason, record_index) when a
    record breaks a rule."""
    view = memoryview(buf).cast("B")
    n = len(view)
    first_null_key = -1
    if count <= 0:
        raise ValueError(f"the batch declares {count} records", 0)
    if count > n // MIN_RECORD_BYTES:
        raise ValueError(
            f"the batch declares {count} records but its {n} bytes hold at most "
            f"{n // MIN_RECORD_BYTES}",
            n // MIN_RECORD_BYTES,
        )
    pos = 0
    for i in range(count):

        def varint(p: int, end: int, what: str, i: int = i) -> tuple[int, int]:
            value, p2 = _varint(view, p, end)
            if p2 == -1:
                raise ValueError(f"record {i}: {what} runs past the end of the record", i)
            if p2 == -2:
                raise ValueError(f"record {i}: {what} is a varint longer than 5 bytes", i)
            return value, p2

        if pos >= n:
            raise ValueError(f"record {i} is missing: the batch declares {count} records", i)
        length, pos = varint(pos, n, "the record length")
        if length < 0:
            raise ValueError(f"record {i}: negative record length {length}", i)
        if length > n - pos:
            raise ValueError(
                f"record {i}: length {length} runs past the end of the batch "
                f"({n - pos} bytes left)",
                i,
            )
        start = pos
        end = pos + length
        r = pos
        if r >= end:
            raise ValueError(f"record {i}: attributes run past the end of the record", i)
        r += 1
        r2 = _skip_varlong(view, r, end)
        if r2 == -1:
            raise ValueError(f"record {i}: the timestamp delta runs past the end of the record", i)
        if r2 == -2:
            raise ValueError(
                f"record {i}: the timestamp delta is a varlong longer than 10 bytes", i
            )
        r = r2
        offset_delta, r = varint(r, end, "the offset delta")
        if offset_delta != i:
            raise ValueError(f"record {i}: offset delta {offset_delta}, expected {i}", i)
        klen, r = varint(r, end, "the key length")
        if klen < -1:
            raise ValueError(f"record {i}: invalid key length {klen}", i)
        if klen == -1:
            if first_null_key < 0:
                first_null_key = i
        else:
            if klen > end - r:
                raise ValueError(
                    f"record {i}: key of {klen} bytes runs past the end of the record", i
                )
            r += klen
        vlen, r = varint(r, end, "the value length")
        if vlen < -1:
            raise ValueError(f"record {i}: invalid value length {vlen}", i)
        if vlen > 0:
            if vlen > end - r:
                raise ValueError(
                    f"record {i}: value of {vlen} bytes runs past the end of the record", i
                )
            r += vlen
        nheaders, r = varint(r, end, "the header count")
        if nheaders < 0:
            raise ValueError(f"record {i}: negative header count {nheaders}", i)
        if nheaders > (end - r) // 2:
            raise ValueError(
                f"record {i}: {nheaders} headers cannot fit in the {end - r} bytes left", i
            )
        for h in range(nheaders):
            hklen, r = varint(r, end, "a header key length")
            if hklen < 0:
                raise ValueError(
                    f"record {i}: header {h} has a null or negative key length {hklen}", i
                )
            if hklen > end - r:
                raise ValueError(f"record {i}: header {h} key runs past the end of the record", i)
            r += hklen
            hvlen, r = varint(r, end, "a header value length")
            if hvlen < -1:
                raise ValueError(f"record {i}: header {h} has an invalid value length {hvlen}", i)
            if hvlen > 0:
                if hvlen > end - r:
                    raise ValueError(
                        f"record {i}: header {h} value runs past the end of the record", i
                    )
                r += hvlen
        if r != end:
            raise ValueError(
                f"record {i}: its fields take {r - start} bytes but its length says {length}", i
            )
        pos = end
    if pos != n:
        raise ValueError(f"{n - pos} bytes left over after the last of {count} records", count - 1)
    return first_null_key


def null_keys(buf: bytes | bytearray | memoryview, count: int) -> list[int]:
    """Indexes of the records without a key, in records already checked."""
    view = memoryview(buf).cast("B")
    out = []
    pos = 0
    for i in range(count):
        length, pos = _varint(view, pos, len(view))
        end = pos + length
        r = _skip_varlong(view, pos + 1, end)
        _, r = _varint(view, r, end)  # offset delta
        klen, r = _varint(view, r, end)
        if klen == -1:
            out.append(i)
        pos = end
    return out


def _load_native() -> Callable[[bytes | bytearray | memoryview, int], int]:
    try:
        from shoal.protocol._recordcheck import check_records as native
    except ImportError:  # pragma: no cover - depends on the install
        log.warning(
            "the C record check is not built (pip install -e . builds it); "
            "using the Python one, which is much slower"
        )
        return check_records_py
    return native  # type: ignore[no-any-return]


check_records: Callable[[bytes | bytearray | memoryview, int], int] = _load_native()


# -- bounded decompression ------------------------------------------------------

# Batches decompress into a reusable buffer, one per thread (the broker
# validates compressed batches in worker threads, one batch at a time each, and
# keeps nothing of the output), grown on demand up to _SCRATCH_KEEP. Larger
# outputs go to an anonymous memory map of the whole limit, made for that batch
# and dropped after it: mapping costs nothing up front (a zeroed bytearray of
# 64 MiB took 40 ms holding the GIL), pages are touched only as the
# decompressor writes them, outside the GIL, and one pass suffices.
_SCRATCH_KEEP = 4 << 20


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.buf = bytearray(0)
        self.big: mmap.mmap | None = None


_scratch = _Scratch()


def _big(size: int) -> memoryview:
    _scratch.big = mmap.mmap(-1, max(size, 1))
    return memoryview(_scratch.big)


def _cramjam() -> object:
    try:
        import cramjam
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DecompressError("snappy, lz4 and zstd batches need the cramjam package") from exc
    return cramjam


def _too_small(exc: Exception) -> bool:
    text = str(exc)
    return "failed to write whole buffer" in text or "smaller than required" in text


def _into_scratch(
    fn: Callable[[object, bytearray], int], data: object, hint: int, limit: int
) -> memoryview:
    size = min(max(len(_scratch.buf), hint, 64 << 10), limit, _SCRATCH_KEEP)
    while True:
        if len(_scratch.buf) < size:
            _scratch.buf = bytearray(size)
        buf = _scratch.buf if len(_scratch.buf) == size else memoryview(_scratch.buf)[:size]
        try:
            return memoryview(_scratch.buf)[: fn(data, buf)]  # type: ignore[arg-type]
        except Exception as exc:
            if not _too_small(exc):
                raise DecompressError(str(exc)) from exc
            if size >= limit:
                raise DecompressedTooLarge(
                    f"records decompress to more than {limit} bytes"
                ) from exc
            if size >= _SCRATCH_KEEP:
                break
            size = min(size * 4, limit, _SCRATCH_KEEP)
    out = _big(limit)
    try:
        return out[: fn(data, out)]  # type: ignore[arg-type]
    except Exception as exc:
        if not _too_small(exc):
            raise DecompressError(str(exc)) from exc
        raise DecompressedTooLarge(f"records decompress to more than {limit} bytes") from exc


def _scratch_of(size: int) -> memoryview:
    """The reusable buffer, at least `size` bytes, as a view of exactly that."""
    if size > _SCRATCH_KEEP:
        return _big(size)
    if len(_scratch.buf) < size:
        _scratch.buf = bytearray(max(size, 64 << 10))
    return memoryview(_scratch.buf)[:size]


def snappy_chunks(data: bytes | memoryview) -> list[memoryview]:
    """The raw snappy blocks of a batch's records: the whole section, or, as
    Java clients frame them, the xerial chunks (header, [int32 len][chunk]...)."""
    raw = memoryview(data)
    if raw[: len(_XERIAL_MAGIC)] != _XERIAL_MAGIC:
        return [raw]
    chunks = []
    pos = _XERIAL_HEADER
    n = len(raw)
    if n < pos:
        raise DecompressError("snappy: xerial header cut short")
    while pos < n:
        if n - pos < 4:
            raise DecompressError("snappy: xerial chunk length cut short")
        size = int.from_bytes(raw[pos : pos + 4], "big", signed=True)
        pos += 4
        if size < 0 or size > n - pos:
            raise DecompressError(f"snappy: xerial chunk of {size} bytes runs past the end")
        chunks.append(raw[pos : pos + size])
        pos += size
    return chunks


def _snappy(data: bytes | memoryview, limit: int) -> memoryview:
    cj = _cramjam()
    sn = cj.snappy  # type: ignore[attr-defined]
    try:
        chunks = snappy_chunks(data)
        # each chunk states its decompressed length up front: check, then
        # decompress every chunk into its place in the reused buffer
        needs = [int(sn.decompress_raw_len(c)) for c in chunks]
        total = sum(needs)
        if total > limit:
            raise DecompressedTooLarge(f"snappy records decompress to {total} bytes > {limit}")
        out = _scratch_of(total)
        at = 0
        for chunk, need in zip(chunks, needs, strict=True):
            if int(sn.decompress_raw_into(chunk, out[at : at + need])) != need:
                raise DecompressError("snappy: a chunk decompressed short of its stated length")
            at += need
        return out
    except (DecompressError, DecompressedTooLarge):
        raise
    except Exception as exc:
        raise DecompressError(f"snappy: {exc}") from exc


def decompress_limited(
    codec: int, data: bytes | memoryview, limit: int
) -> bytes | bytearray | memoryview:
    """The records section of a compressed batch, decompressed once, at most
    `limit` bytes. The result may be a view of a reused buffer: check it
    before the next call, keep nothing of it."""
    if codec == SNAPPY:
        return _snappy(data, limit)
    if codec in (GZIP, LZ4, ZSTD):
        # cramjam's gzip reads concatenated members, as Java's GZIPInputStream
        # does, and is about a quarter cheaper than zlib; unlike Java it refuses
        # bytes after the last member (no client writes them).
        cj = _cramjam()
        mod = {GZIP: cj.gzip, LZ4: cj.lz4, ZSTD: cj.zstd}[codec]  # type: ignore[attr-defined]
        return _into_scratch(mod.decompress_into, data, 4 * len(data), limit)
    raise DecompressError(f"unknown compression codec {codec}")


def release_scratch() -> None:
    """Let go of a large batch's memory map (unmapped once the last view of
    it is gone)."""
    _scratch.big = None
