"""Record validation on the produce path (issue 18): a crafted batch per rule,
sent with the raw protocol; each is refused with Kafka's error code, carries
record_errors / error_message where the Produce version has them, and stores
nothing (the log end offset stays put). Afterwards a real consumer reads the
topic to its end."""

from __future__ import annotations

import datetime
import importlib
import os
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import crc32c
import pytest
from kio.schema.errors import ErrorCode

from harness import BrokerProcess
from shoal.protocol.batches import GZIP, LZ4, NONE, SNAPPY, ZSTD, compress, encode_record, varint
from wire import RawClient, create_topic

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's own error paths"
)

INT32_MAX = 2**31 - 1
TS = 1_700_000_000_000


def rec(i: int, key: bytes | None = b"k", value: bytes | None = b"v", headers: Any = ()) -> bytes:
    return encode_record(i, 0, key, value, headers)


def framed(body: bytes) -> bytes:
    """A record from its body bytes: the length prefix is computed, not trusted."""
    return varint(len(body)) + body


def batch(
    records: bytes,
    count: int,
    *,
    codec: int = NONE,
    compressed: bytes | None = None,
    last_offset_delta: int | None = None,
    attributes: int = 0,
    base_offset: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    max_timestamp: int = TS,
) -> bytes:
    """A v2 batch with a correct CRC around whatever records it is given."""
    body = (
        compressed if compressed is not None else (compress(codec, records) if codec else records)
    )
    lod = count - 1 if last_offset_delta is None else last_offset_delta
    after_crc = (
        struct.pack(
            ">hiqqqhii",
            codec | attributes,
            lod,
            TS,
            max_timestamp,
            producer_id,
            producer_epoch,
            base_sequence,
            count,
        )
        + body
    )
    crc = crc32c.crc32c(after_crc)
    return struct.pack(">qiibI", base_offset, 9 + len(after_crc), -1, 2, crc) + after_crc


def good(n: int = 2, codec: int = NONE) -> bytes:
    return batch(b"".join(rec(i) for i in range(n)), n, codec=codec)


def produce_v(bootstrap: str, topic: str, records: bytes, version: int = 9) -> Any:
    pr = importlib.import_module(f"kio.schema.produce.v{version}.request")
    body = pr.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(seconds=10),
        topic_data=(
            pr.TopicProduceData(
                name=topic, partition_data=(pr.PartitionProduceData(index=0, records=records),)
            ),
        ),
    )
    with RawClient(bootstrap) as c:
        return c.call(0, version, body).responses[0].partition_responses[0]


def end_offset(bootstrap: str, topic: str) -> int:
    from kio.schema.list_offsets.v7 import request as lo

    body = lo.ListOffsetsRequest(
        replica_id=-1,
        isolation_level=0,
        topics=(
            lo.ListOffsetsTopic(
                name=topic, partitions=(lo.ListOffsetsPartition(partition_index=0, timestamp=-1),)
            ),
        ),
    )
    with RawClient(bootstrap) as c:
        part = c.call(2, 7, body).topics[0].partitions[0]
    assert part.error_code == ErrorCode.none
    return int(part.offset)


@pytest.fixture(scope="module")
def topic(broker: BrokerProcess) -> Iterator[str]:
    name = f"rv-{uuid.uuid4().hex[:8]}"
    assert create_topic(broker.bootstrap, name) == ErrorCode.none
    yield name


def _bomb(codec: int) -> bytes:
    """80 MiB of zeros in a few KiB: over the 64 MiB decompression limit."""
    return compress(codec, encode_record(0, 0, None, b"\x00" * (80 << 20)))


# name -> (batch builder, expected code, index of the failing record or None)
CASES: dict[str, tuple[Callable[[], bytes], ErrorCode, int | None]] = {
    "last-record-cut-short": (
        lambda: batch(rec(0) + rec(1)[:-2], 2),
        ErrorCode.invalid_record,
        1,
    ),
    "negative-record-length": (
        lambda: batch(rec(0) + varint(-5) + b"\x00" * 8, 2),
        ErrorCode.invalid_record,
        1,
    ),
    "huge-record-length": (
        lambda: batch(varint(INT32_MAX) + rec(0)[1:] + rec(1), 2),
        ErrorCode.invalid_record,
        0,
    ),
    "record-longer-than-its-fields": (
        lambda: batch(framed(rec(0)[1:] + b"\x00") + rec(1), 2),
        ErrorCode.invalid_record,
        0,
    ),
    "fewer-records-than-declared": (lambda: batch(rec(0), 2), ErrorCode.invalid_record, 1),
    "bytes-after-the-last-record": (
        lambda: batch(rec(0) + rec(1), 1),
        ErrorCode.invalid_record,
        0,
    ),
    "int32-max-records-one-inside": (
        lambda: batch(rec(0), INT32_MAX),
        ErrorCode.invalid_record,
        1,
    ),
    "count-disagrees-with-offset-delta": (
        lambda: batch(rec(0) + rec(1), 2, last_offset_delta=5),
        ErrorCode.invalid_record,
        None,
    ),
    "zero-records": (lambda: batch(b"", 0), ErrorCode.invalid_record, None),
    "offset-delta-out-of-order": (
        lambda: batch(rec(0) + rec(5), 2),
        ErrorCode.invalid_record,
        1,
    ),
    "key-length-below-minus-one": (
        lambda: batch(framed(b"\x00\x00\x00" + varint(-7) + b"\x00\x00"), 1),
        ErrorCode.invalid_record,
        0,
    ),
    "value-length-past-the-record": (
        lambda: batch(framed(b"\x00\x00\x00\x01" + varint(1000) + b"abc\x00"), 1),
        ErrorCode.invalid_record,
        0,
    ),
    "header-count-int32-max": (
        lambda: batch(framed(b"\x00\x00\x00\x01\x01" + varint(INT32_MAX) + b"\x00" * 8), 1),
        ErrorCode.invalid_record,
        0,
    ),
    "negative-header-count": (
        lambda: batch(framed(b"\x00\x00\x00\x01\x01" + varint(-3)), 1),
        ErrorCode.invalid_record,
        0,
    ),
    "null-header-key": (
        lambda: batch(framed(b"\x00\x00\x00\x01\x01" + varint(1) + varint(-1) + b"\x01"), 1),
        ErrorCode.invalid_record,
        0,
    ),
    "header-value-past-the-record": (
        lambda: batch(
            framed(b"\x00\x00\x00\x01\x01" + varint(1) + varint(1) + b"h" + varint(50) + b"x"), 1
        ),
        ErrorCode.invalid_record,
        0,
    ),
    "varint-longer-than-5-bytes": (
        lambda: batch(framed(b"\x00\x00" + b"\xff" * 6 + b"\x01\x01\x01\x00"), 1),
        ErrorCode.invalid_record,
        0,
    ),
    **{
        f"{name}-flag-on-bytes-that-do-not-decompress": (
            (
                lambda c=codec: batch(
                    b"", 1, codec=c, compressed=b"\x00not compressed at all\x01" * 3
                )
            ),
            ErrorCode.corrupt_message,
            None,
        )
        for name, codec in [("gzip", GZIP), ("snappy", SNAPPY), ("lz4", LZ4), ("zstd", ZSTD)]
    },
    **{
        f"{name}-stream-cut-short": (
            (
                lambda c=codec: batch(
                    b"", 1, codec=c, compressed=compress(c, rec(0, value=os.urandom(300)))[:-20]
                )
            ),
            ErrorCode.corrupt_message,
            None,
        )
        for name, codec in [("gzip", GZIP), ("snappy", SNAPPY), ("lz4", LZ4), ("zstd", ZSTD)]
    },
    **{
        f"{name}-records-inside-disagree-with-count": (
            (lambda c=codec: batch(rec(0) + rec(1), 3, codec=c)),
            ErrorCode.invalid_record,
            2,
        )
        for name, codec in [("gzip", GZIP), ("snappy", SNAPPY), ("lz4", LZ4), ("zstd", ZSTD)]
    },
    **{
        f"{name}-decompression-bomb": (
            (lambda c=codec: batch(b"", 1, codec=c, compressed=_bomb(c))),
            ErrorCode.message_too_large,
            None,
        )
        for name, codec in [("gzip", GZIP), ("lz4", LZ4), ("zstd", ZSTD)]
    },
    "unknown-codec": (
        lambda: batch(rec(0), 1, attributes=5),
        ErrorCode.unsupported_compression_type,
        None,
    ),
    "control-batch-from-a-client": (
        lambda: batch(rec(0), 1, attributes=0x20),
        ErrorCode.invalid_record,
        None,
    ),
    "transactional-without-producer-id": (
        lambda: batch(rec(0), 1, attributes=0x10),
        ErrorCode.invalid_record,
        None,
    ),
    "transactional-without-transactional-id": (
        lambda: batch(rec(0), 1, attributes=0x10, producer_id=7, producer_epoch=0, base_sequence=0),
        ErrorCode.transactional_id_authorization_failed,
        None,
    ),
    "producer-id-without-sequence": (
        lambda: batch(rec(0), 1, producer_id=7, producer_epoch=0, base_sequence=-1),
        ErrorCode.invalid_record,
        None,
    ),
    "base-offset-not-zero": (
        lambda: batch(rec(0), 1, base_offset=42),
        ErrorCode.invalid_record,
        None,
    ),
    "two-batches-in-one-partition": (lambda: good(1) + good(1), ErrorCode.invalid_record, None),
    "log-append-time-without-timestamp": (
        lambda: batch(rec(0), 1, attributes=0x08, max_timestamp=-1),
        ErrorCode.invalid_timestamp,
        0,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_and_nothing_stored(broker: BrokerProcess, topic: str, case: str) -> None:
    build, code, index = CASES[case]
    data = build()
    before = end_offset(broker.bootstrap, topic)
    resp = produce_v(broker.bootstrap, topic, data, version=9)
    assert resp.error_code == code, (case, ErrorCode(resp.error_code), resp.error_message)
    assert resp.base_offset == -1
    assert resp.error_message
    if index is None:
        assert resp.record_errors == ()
    else:
        assert [e.batch_index for e in resp.record_errors] == [index]
        assert resp.record_errors[0].batch_index_error_message == resp.error_message
    assert end_offset(broker.bootstrap, topic) == before


def test_error_message_in_broker_log(broker: BrokerProcess, topic: str) -> None:
    resp = produce_v(broker.bootstrap, topic, batch(rec(0) + rec(3), 2))
    assert resp.error_code == ErrorCode.invalid_record
    deadline = time.monotonic() + 10
    while "record 1: offset delta 3, expected 1" not in broker.log():
        assert time.monotonic() < deadline, broker.log()[-2000:]
        time.sleep(0.05)


def test_older_produce_versions_get_the_code_without_record_errors(
    broker: BrokerProcess, topic: str
) -> None:
    before = end_offset(broker.bootstrap, topic)
    resp = produce_v(broker.bootstrap, topic, batch(rec(0), 2), version=7)
    assert resp.error_code == ErrorCode.invalid_record
    assert not hasattr(resp, "record_errors")
    assert end_offset(broker.bootstrap, topic) == before


def test_zstd_needs_produce_v7(broker: BrokerProcess, topic: str) -> None:
    before = end_offset(broker.bootstrap, topic)
    resp = produce_v(broker.bootstrap, topic, good(2, ZSTD), version=6)
    assert resp.error_code == ErrorCode.unsupported_compression_type
    assert end_offset(broker.bootstrap, topic) == before
    ok = produce_v(broker.bootstrap, topic, good(2, ZSTD), version=7)
    assert ok.error_code == ErrorCode.none
    assert end_offset(broker.bootstrap, topic) == before + 2


def test_compacted_topic_refuses_keyless_records(broker: BrokerProcess) -> None:
    name = f"rv-compact-{uuid.uuid4().hex[:8]}"
    assert (
        create_topic(broker.bootstrap, name, configs={"cleanup.policy": "compact"})
        == ErrorCode.none
    )
    for codec in (NONE, GZIP, ZSTD):
        records = rec(0) + rec(1, key=None) + rec(2) + rec(3, key=None)
        resp = produce_v(broker.bootstrap, name, batch(records, 4, codec=codec))
        assert resp.error_code == ErrorCode.invalid_record
        assert [e.batch_index for e in resp.record_errors] == [1, 3]
        assert end_offset(broker.bootstrap, name) == 0
    # a tombstone has a key and a null value: accepted
    resp = produce_v(broker.bootstrap, name, batch(rec(0, value=None), 1))
    assert resp.error_code == ErrorCode.none
    assert end_offset(broker.bootstrap, name) == 1


def test_log_append_time_topic_refuses_client_set_log_append_time(broker: BrokerProcess) -> None:
    name = f"rv-lat-{uuid.uuid4().hex[:8]}"
    assert (
        create_topic(broker.bootstrap, name, configs={"message.timestamp.type": "LogAppendTime"})
        == ErrorCode.none
    )
    resp = produce_v(broker.bootstrap, name, batch(rec(0) + rec(1), 2, attributes=0x08))
    assert resp.error_code == ErrorCode.invalid_timestamp
    assert [e.batch_index for e in resp.record_errors] == [0, 1]
    assert end_offset(broker.bootstrap, name) == 0
    assert produce_v(broker.bootstrap, name, good(2)).error_code == ErrorCode.none
    assert end_offset(broker.bootstrap, name) == 2


def test_gzip_concatenated_members_accepted(broker: BrokerProcess, topic: str) -> None:
    """Java's GZIPInputStream reads concatenated members; a batch written that
    way is valid."""
    records = rec(0) + rec(1)

    def member(data: bytes) -> bytes:
        c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(data) + c.flush()

    before = end_offset(broker.bootstrap, topic)
    data = batch(b"", 2, codec=GZIP, compressed=member(records[:3]) + member(records[3:]))
    assert produce_v(broker.bootstrap, topic, data).error_code == ErrorCode.none
    assert end_offset(broker.bootstrap, topic) == before + 2


def test_hostile_batches_leave_the_topic_readable(broker: BrokerProcess) -> None:
    """The reproduction of issue 18: 2^31-1 records declared with one inside
    moved the high watermark to 70,866,962,521 and consumers stalled at bad
    batches. Now every one is refused and confluent-kafka reads to the end."""
    from confluent_kafka import Consumer, Producer

    name = f"rv-read-{uuid.uuid4().hex[:8]}"
    assert create_topic(broker.bootstrap, name) == ErrorCode.none
    expected: list[bytes] = []
    for round_ in range(3):
        for case, (build, _code, _index) in CASES.items():
            if "bomb" in case:
                continue  # slow to build; covered above
            assert produce_v(broker.bootstrap, name, build()).error_code != ErrorCode.none
        for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
            cp = Producer(
                {"bootstrap.servers": broker.bootstrap, "compression.type": codec, "linger.ms": 5}
            )
            for i in range(20):
                v = f"{round_}-{codec}-{i}".encode()
                cp.produce(name, v, key=b"k")
                expected.append(v)
            assert cp.flush(30) == 0
    assert end_offset(broker.bootstrap, name) == len(expected)

    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"g-{name}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    c.subscribe([name])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191 and len(got) >= len(expected):  # _PARTITION_EOF
                    break
                assert m.error().code() == -191, m.error()
                continue
            got.append(m.value())
    finally:
        c.close()
    assert got == expected


@pytest.mark.parametrize("codec", [GZIP, SNAPPY, LZ4, ZSTD])
def test_batch_decompressing_past_the_inline_limit_is_checked_off_the_loop(
    broker: BrokerProcess, topic: str, codec: int
) -> None:
    """Records that decompress beyond INLINE_DECOMPRESS (1 MiB) are checked in
    a worker thread: a valid one is stored whole, a bad one is still refused
    with the failing record named."""
    values = [bytes([65 + i]) * 400_000 for i in range(4)]  # 1.6 MiB decompressed
    records = b"".join(rec(i, value=v) for i, v in enumerate(values))
    before = end_offset(broker.bootstrap, topic)
    assert produce_v(broker.bootstrap, topic, batch(records, 4, codec=codec)).error_code == 0
    assert end_offset(broker.bootstrap, topic) == before + 4
    bad = records + framed(b"\x00")  # a fifth record, cut short
    resp = produce_v(broker.bootstrap, topic, batch(bad, 5, codec=codec))
    assert resp.error_code == ErrorCode.invalid_record
    assert [e.batch_index for e in resp.record_errors] == [4]
    assert end_offset(broker.bootstrap, topic) == before + 4
