"""Record validation never refuses what a real client encodes, and its C and
Python implementations agree on every input, valid or mutated (issue 18)."""

from __future__ import annotations

import os
import random
import struct

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shoal.protocol._recordcheck import check_records as check_c

from shoal.protocol import recordcheck
from shoal.protocol.batches import CODECS, BatchBuilder, compress, decode_records
from shoal.protocol.errors import KafkaError
from shoal.protocol.recordcheck import check_records_py as check_py
from shoal.protocol.records import (
    HEADER_SIZE,
    check_records,
    read_header,
    validate_batches,
    validate_produce,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's own validation"
)

MAX = 1 << 20
TS = 1_700_000_000_000

optional_bytes = st.none() | st.binary(max_size=300)
header = st.tuples(st.text(max_size=20), optional_bytes)
record = st.tuples(
    st.integers(min_value=0, max_value=10**6),  # timestamp offset from TS
    optional_bytes,
    optional_bytes,
    st.lists(header, max_size=4),
)
records = st.lists(record, min_size=1, max_size=40)
codecs = st.sampled_from(sorted(CODECS))


def outcome(fn: object, buf: bytes, count: int) -> tuple[str, object]:
    try:
        return "ok", fn(buf, count)  # type: ignore[operator]
    except ValueError as exc:
        return "error", exc.args


def kafka_python_batch(recs: list, codec: str) -> bytes:
    from kafka.record.default_records import DefaultRecordBatchBuilder

    b = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=CODECS[codec],
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i, (ts, key, value, headers) in enumerate(recs):
        assert b.append(i, TS + ts, key, value, headers) is not None
    return bytes(b.build())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=records, codec=codecs)
def test_kafka_python_batches_are_accepted(recs: list, codec: str) -> None:
    data = kafka_python_batch(recs, codec)
    batch = validate_produce(data, MAX, api_version=9)
    assert batch.record_count == len(recs)
    first_null_key = next((i for i, r in enumerate(recs) if r[1] is None), -1)
    assert check_records(batch.data, batch.header, MAX) == first_null_key
    [vb] = validate_batches(data, MAX)
    assert vb.header == batch.header


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=records, codec=codecs)
def test_shoal_batches_are_accepted(recs: list, codec: str) -> None:
    b = BatchBuilder(compression=CODECS[codec])
    for ts, key, value, headers in recs:
        b.append(TS + ts, key, value, headers)
    data = b.build()
    batch = validate_produce(data, MAX, api_version=9, compacted=False)
    assert batch.record_count == len(recs)
    assert len(decode_records(data)) == len(recs)


def xerial(data: bytes, chunk: int) -> bytes:
    """Snappy in the xerial framing Java clients write, in chunks of `chunk` bytes."""
    import cramjam

    out = bytearray(b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1))
    for i in range(0, len(data), chunk):
        c = bytes(cramjam.snappy.compress_raw(data[i : i + chunk]))
        out += struct.pack(">i", len(c)) + c
    return bytes(out)


@settings(max_examples=60, deadline=None)
@given(recs=records, chunk=st.integers(min_value=1, max_value=4096))
def test_xerial_snappy_in_many_chunks_is_accepted(recs: list, chunk: int) -> None:
    b = BatchBuilder()
    for ts, key, value, headers in recs:
        b.append(TS + ts, key, value, headers)
    plain = b.build()
    body = xerial(plain[HEADER_SIZE:], chunk)
    after_crc = bytearray(plain[21:HEADER_SIZE]) + body
    struct.pack_into(">h", after_crc, 0, 2)  # snappy
    data = struct.pack(">qiibI", 0, 9 + len(after_crc), -1, 2, crc32c.crc32c(after_crc)) + after_crc
    assert validate_produce(data, MAX, api_version=9).record_count == len(recs)


def _mutate(buf: bytearray, rnd: random.Random) -> bytearray:
    kind = rnd.randrange(6)
    if kind == 0 and buf:  # flip a byte
        buf[rnd.randrange(len(buf))] = rnd.randrange(256)
    elif kind == 1 and buf:  # cut the end
        del buf[rnd.randrange(len(buf)) :]
    elif kind == 2:  # insert bytes
        pos = rnd.randrange(len(buf) + 1)
        buf[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 6)))
    elif kind == 3 and buf:  # a long varint run
        pos = rnd.randrange(len(buf))
        buf[pos : pos + 1] = b"\xff" * rnd.randrange(1, 12) + b"\x7f"
    elif kind == 4 and buf:  # delete a span
        pos = rnd.randrange(len(buf))
        del buf[pos : pos + rnd.randrange(1, 8)]
    elif buf:  # set a byte to a boundary value
        buf[rnd.randrange(len(buf))] = rnd.choice([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF])
    return buf


@settings(max_examples=300, deadline=None)
@given(recs=records, seed=st.integers(min_value=0, max_value=2**32), steps=st.integers(1, 4))
def test_c_and_python_agree_on_mutations(recs: list, seed: int, steps: int) -> None:
    b = BatchBuilder()
    for ts, key, value, headers in recs:
        b.append(TS + ts, key, value, headers)
    body = bytearray(b.build()[HEADER_SIZE:])
    rnd = random.Random(seed)
    assert outcome(check_c, bytes(body), len(recs)) == outcome(check_py, bytes(body), len(recs))
    for _ in range(steps):
        body = _mutate(body, rnd)
    for count in (len(recs), len(recs) - 1, len(recs) + 1, rnd.randrange(-2, 3), 2**31 - 1):
        assert outcome(check_c, bytes(body), count) == outcome(check_py, bytes(body), count)


@settings(max_examples=100, deadline=None)
@given(recs=records, codec=st.sampled_from(["gzip", "snappy", "lz4", "zstd"]), seed=st.integers())
def test_mutated_compressed_batches_never_crash(recs: list, codec: str, seed: int) -> None:
    """Damage inside a compressed section ends in a Kafka error, never in
    another exception."""
    b = BatchBuilder()
    for ts, key, value, headers in recs:
        b.append(TS + ts, key, value, headers)
    plain = b.build()
    body = bytearray(compress(CODECS[codec], plain[HEADER_SIZE:]))
    rnd = random.Random(seed)
    body = _mutate(body, rnd)
    after_crc = bytearray(plain[21:HEADER_SIZE]) + body
    struct.pack_into(">h", after_crc, 0, CODECS[codec])
    data = struct.pack(">qiibI", 0, 9 + len(after_crc), -1, 2, crc32c.crc32c(after_crc)) + after_crc
    try:
        validate_produce(data, MAX, api_version=9)
    except KafkaError:
        pass


# -- the C function on malformed buffers ------------------------------------------


@pytest.mark.parametrize(
    "buf, count, reason",
    [
        (b"", 1, "hold at most 0"),
        (b"\x0e" + b"\x00" * 13, 0, "declares 0 records"),
        (b"\x0e" + b"\x00" * 13, -5, "declares -5 records"),
        (b"\x0c\x00\x00\x00\x01\x01\x00", 2**31 - 1, "hold at most 1"),
        (b"\xff\xff\xff\xff\xff\xff\x00", 1, "longer than 5 bytes"),
        (b"\xff\xff\xff\xff\x0f\x00\x00", 1, "negative record length"),
        (b"\x0e\x00\x00\x00\x01\x01\x00\x00", 1, "fields take 6 bytes but its length says 7"),
        (b"\x0e\x00\x00\x00\x01\x01\x00", 1, "length 7 runs past the end"),
        (b"\x0c\x00\x00\x02\x01\x01\x00", 1, "offset delta 1, expected 0"),
        (b"\x0c\x00\x00\x00\x03\x01\x00", 1, "invalid key length -2"),
        (b"\x0c\x00\x00\x00\x01\x01\x01", 1, "negative header count -1"),
        (b"\x0c\x00\x00\x00\x01\x01\x00\x00", 1, "1 bytes left over"),
        (b"\x10\x00\x00\x00\x01\x01\x02\x01\x00", 1, "header 0 has a null or negative key"),
        (b"\x0e\x00\x00\x00\x01\x01\x02\x01", 1, "1 headers cannot fit in the 1 bytes"),
        (b"\x0c\x00\x00\x00\x01\x01\x00" + b"\x0c\x00\x00\x00\x01\x01\x00", 2, "offset delta 0"),
    ],
)
def test_c_refuses_malformed_buffers(buf: bytes, count: int, reason: str) -> None:
    with pytest.raises(ValueError) as c_exc:
        check_c(buf, count)
    assert reason in c_exc.value.args[0]
    with pytest.raises(ValueError) as py_exc:
        check_py(buf, count)
    assert py_exc.value.args == c_exc.value.args


def test_c_reads_views_without_copying_and_refuses_non_buffers() -> None:
    good = b"\x0c\x00\x00\x00\x01\x01\x00"
    base = bytearray(b"junk" + good + b"junk")
    assert check_c(memoryview(base)[4:-4], 1) == 0  # null key at record 0
    assert check_c(bytearray(b"\x0e\x00\x00\x00\x02k\x01\x00"), 1) == -1
    with pytest.raises(TypeError):
        check_c("not bytes", 1)  # type: ignore[arg-type]
    with pytest.raises((BufferError, TypeError, ValueError)):
        check_c(memoryview(bytes(20))[::2], 1)  # not contiguous


def test_random_bytes_never_crash_and_agree() -> None:
    rnd = random.Random(18)
    for _ in range(20_000):
        buf = rnd.randbytes(rnd.randrange(0, 64))
        count = rnd.choice([1, 2, 3, rnd.randrange(-3, 12)])
        assert outcome(check_c, buf, count) == outcome(check_py, buf, count)


def test_decompression_limit_for_every_codec() -> None:
    plain = b"\x00" * (3 << 20)
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        packed = compress(CODECS[codec], plain)
        assert len(recordcheck.decompress_limited(CODECS[codec], packed, 4 << 20)) == len(plain)
        with pytest.raises(recordcheck.DecompressedTooLarge):
            recordcheck.decompress_limited(CODECS[codec], packed, 1 << 20)
    xer = xerial(plain, 1 << 16)
    assert len(recordcheck.decompress_limited(CODECS["snappy"], xer, 4 << 20)) == len(plain)
    with pytest.raises(recordcheck.DecompressedTooLarge):
        recordcheck.decompress_limited(CODECS["snappy"], xer, 1 << 20)
    recordcheck.release_scratch()


def test_decompression_past_the_reused_buffer() -> None:
    """Outputs over the reused buffer's 4 MiB go to a memory map of the whole
    limit: exact bytes back, the limit still refused."""
    plain = bytes(range(256)) * (40 << 10)  # 10 MiB
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        packed = compress(CODECS[codec], plain)
        out = recordcheck.decompress_limited(CODECS[codec], packed, 16 << 20)
        assert bytes(out) == plain, codec
        del out
        recordcheck.release_scratch()
        with pytest.raises(recordcheck.DecompressedTooLarge):
            recordcheck.decompress_limited(CODECS[codec], packed, 8 << 20)
        recordcheck.release_scratch()


def test_header_of_kafka_python_batch_matches_ours() -> None:
    """The builder under test writes the header fields our checks read."""
    data = kafka_python_batch([(0, b"k", b"v", [])], "none")
    h = read_header(data)
    assert (h.magic, h.records_count, h.last_offset_delta, h.base_offset) == (2, 1, 0, 0)


def test_decompression_scratch_is_per_thread() -> None:
    """The broker validates compressed batches in worker threads: two threads
    decompressing at once must each see only their own output."""
    import threading

    import cramjam

    payloads = [bytes([i]) * 300_000 + bytes(range(256)) * 50 for i in (1, 2)]
    frames = [bytes(cramjam.zstd.compress(p)) for p in payloads]
    errors: list[str] = []

    def work(i: int) -> None:
        for _ in range(200):
            out = bytes(recordcheck.decompress_limited(recordcheck.ZSTD, frames[i], 1 << 22))
            if out != payloads[i]:
                errors.append(f"thread {i} saw another thread's bytes")
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_inline_limit_hands_large_batches_back() -> None:
    """Past `inline_limit` check_records raises LargeBatch (to be checked off
    the event loop); without one, or below it, the batch is checked here."""
    from shoal.protocol.batches import ZSTD as Z
    from shoal.protocol.batches import BatchBuilder
    from shoal.protocol.records import LargeBatch, check_records, read_header

    b = BatchBuilder(compression=Z)
    b.append(0, b"k", b"x" * 300_000)
    data = memoryview(b.build())
    h = read_header(data)
    assert check_records(data, h, 1 << 20) == -1
    assert check_records(data, h, 1 << 20, inline_limit=1 << 20) == -1
    with pytest.raises(LargeBatch):
        check_records(data, h, 1 << 20, inline_limit=100_000)
