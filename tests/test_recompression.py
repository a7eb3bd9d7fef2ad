"""compression.type recompresses on append, as Kafka does; the CreateTime
window (message.timestamp.before/after.max.ms) refuses records outside it with
INVALID_TIMESTAMP and their indexes in record_errors."""

from __future__ import annotations

import gzip
import struct
import time
import uuid

import crc32c
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kio.schema.errors import ErrorCode

from harness import BrokerProcess
from shoal.protocol.batches import GZIP, LZ4, NONE, SNAPPY, ZSTD, build_batch, decode_records
from shoal.protocol.recompress import recompress, timestamp_violations
from shoal.protocol.records import (
    CRC_START,
    HEADER_SIZE,
    read_header,
    record_timestamps,
    validate_produce,
)
from wire import RawClient, create_topic, fetch_request, produce

TIMEOUT = 15.0
CODEC_NAMES = {NONE: "uncompressed", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}
HOUR = 3_600_000


def new_topic(broker: BrokerProcess, configs: dict[str, str]) -> str:
    name = f"rc-{uuid.uuid4().hex[:10]}"
    assert create_topic(broker.bootstrap, name, configs=configs) == ErrorCode.none
    return name


def records(n: int, ts: int | None = None) -> list[tuple[int, bytes | None, bytes | None, list]]:
    now = int(time.time() * 1000) if ts is None else ts
    return [(now + i, f"k{i}".encode(), f"value {i} ".encode() * 20, []) for i in range(n)]


def stored_batches(broker: BrokerProcess, topic: str) -> list[bytes]:
    """The batches as the broker serves them, from offset 0."""
    with RawClient(broker.bootstrap) as c:
        resp = c.call(1, 12, fetch_request(topic, {0: 0}))
    data = bytes(resp.responses[0].partitions[0].records or b"")
    out = []
    pos = 0
    while pos + 61 <= len(data):
        h = read_header(data, pos)
        out.append(data[pos : pos + h.size])
        pos += h.size
    return out


def consume_all(broker: BrokerProcess, topic: str, n: int) -> list[tuple[bytes, bytes]]:
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, 0, 0)])  # no group join: faster
    got: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error() is not None:
                continue
            got.append((m.key(), m.value()))
    finally:
        c.close()
    return got


# (codec the producer used, codec of the topic)
PAIRS = [(GZIP, ZSTD), (ZSTD, GZIP), (NONE, LZ4), (LZ4, SNAPPY), (SNAPPY, NONE), (ZSTD, LZ4)]


@pytest.mark.parametrize(
    "sent, wanted", PAIRS, ids=[f"{CODEC_NAMES[a]}-to-{CODEC_NAMES[b]}" for a, b in PAIRS]
)
def test_batches_are_stored_in_the_topic_codec(
    broker: BrokerProcess, sent: int, wanted: int
) -> None:
    topic = new_topic(broker, {"compression.type": CODEC_NAMES[wanted]})
    recs = records(5)
    resp = produce(broker.bootstrap, topic, build_batch(recs, compression=sent))
    assert resp.error_code == ErrorCode.none
    (batch,) = stored_batches(broker, topic)
    h = read_header(batch)
    assert h.compression == wanted
    assert h.crc == crc32c.crc32c(batch[CRC_START:])
    assert [(r.key, r.value, r.timestamp) for r in decode_records(batch)] == [
        (k, v, ts) for ts, k, v, _ in recs
    ]
    assert consume_all(broker, topic, 5) == [(k, v) for _ts, k, v, _ in recs]


def test_a_batch_in_the_topic_codec_is_kept_as_sent(broker: BrokerProcess) -> None:
    topic = new_topic(broker, {"compression.type": "gzip", "compression.gzip.level": "1"})
    sent = build_batch(records(5), compression=GZIP)  # at zlib's level 6, not 1
    assert produce(broker.bootstrap, topic, sent).error_code == ErrorCode.none
    (batch,) = stored_batches(broker, topic)
    assert batch[CRC_START:] == sent[CRC_START:]


def test_producer_keeps_the_producer_codec(broker: BrokerProcess) -> None:
    topic = new_topic(broker, {})
    assert produce(
        broker.bootstrap, topic, build_batch(records(3), compression=LZ4)
    ).error_code == (ErrorCode.none)
    (batch,) = stored_batches(broker, topic)
    assert read_header(batch).compression == LZ4


def test_librdkafka_gzip_to_a_zstd_topic(broker: BrokerProcess) -> None:
    topic = new_topic(broker, {"compression.type": "zstd", "compression.zstd.level": "19"})
    p = Producer(
        {
            "bootstrap.servers": broker.bootstrap,
            "compression.type": "gzip",
            "enable.idempotence": True,
            "linger.ms": 50,
        }
    )
    sent = [(f"k{i}".encode(), f"payload {i} ".encode() * 50) for i in range(200)]
    for k, v in sent:
        p.produce(topic, key=k, value=v, partition=0)
    assert p.flush(TIMEOUT) == 0
    batches = stored_batches(broker, topic)
    assert batches and all(read_header(b).compression == ZSTD for b in batches)
    assert consume_all(broker, topic, len(sent)) == sent


def test_future_timestamps_are_refused_by_default(broker: BrokerProcess) -> None:
    """Kafka 4's message.timestamp.after.max.ms default: one hour."""
    topic = new_topic(broker, {})
    now = int(time.time() * 1000)
    recs = [(now, b"a", b"ok", []), (now + 2 * HOUR, b"b", b"late", []), (now, b"c", b"ok", [])]
    resp = produce(broker.bootstrap, topic, build_batch(recs))
    assert resp.error_code == ErrorCode.invalid_timestamp
    assert [e.batch_index for e in resp.record_errors] == [1]
    assert "out of range" in resp.error_message
    assert stored_batches(broker, topic) == []
    fine = produce(broker.bootstrap, topic, build_batch([(now + 60_000, b"a", b"soon", [])]))
    assert fine.error_code == ErrorCode.none


def test_before_max_ms_refuses_old_records(broker: BrokerProcess) -> None:
    topic = new_topic(broker, {"message.timestamp.before.max.ms": "60000"})
    now = int(time.time() * 1000)
    recs = [(now - HOUR, b"a", b"old", []), (now, b"b", b"new", []), (now - HOUR, b"c", b"o", [])]
    resp = produce(broker.bootstrap, topic, build_batch(recs, compression=GZIP))
    assert resp.error_code == ErrorCode.invalid_timestamp
    assert [e.batch_index for e in resp.record_errors] == [0, 2]
    ok = produce(broker.bootstrap, topic, build_batch([(now, b"b", b"new", [])]))
    assert ok.error_code == ErrorCode.none


def test_after_max_ms_zero_and_log_append_time(broker: BrokerProcess) -> None:
    strict = new_topic(broker, {"message.timestamp.after.max.ms": "0"})
    future = int(time.time() * 1000) + 120_000
    resp = produce(broker.bootstrap, strict, build_batch([(future, b"a", b"x", [])]))
    assert resp.error_code == ErrorCode.invalid_timestamp
    # LogAppendTime topics take the broker's clock: the producer's does not matter
    stamped = new_topic(
        broker,
        {"message.timestamp.after.max.ms": "0", "message.timestamp.type": "LogAppendTime"},
    )
    resp = produce(broker.bootstrap, stamped, build_batch([(future, b"a", b"x", [])]))
    assert resp.error_code == ErrorCode.none


def test_a_batch_too_large_once_recompressed_is_refused(broker: BrokerProcess) -> None:
    """max.message.bytes applies to the stored batch, as in Kafka: gzip'd
    repetitive values that fit, stored uncompressed, no longer do."""
    topic = new_topic(broker, {"compression.type": "uncompressed", "max.message.bytes": "4000"})
    now = int(time.time() * 1000)
    big = build_batch([(now, b"k", b"x" * 10_000, [])], compression=GZIP)
    assert len(big) < 4000
    resp = produce(broker.bootstrap, topic, big)
    assert resp.error_code == ErrorCode.message_too_large
    assert "max.message.bytes 4000" in resp.error_message
    assert stored_batches(broker, topic) == []
    small = build_batch([(now, b"k", b"x" * 1000, [])], compression=GZIP)
    assert produce(broker.bootstrap, topic, small).error_code == ErrorCode.none


def test_gzip_of_several_members_recompresses_whole() -> None:
    """The validator reads every gzip member, as Java does; so must recompression
    and the timestamp walk (zlib alone stopped after the first member: a stored
    batch with half its records, and an IndexError on produce)."""
    now = int(time.time() * 1000)
    recs = [(now - (HOUR if i == 4 else 0), f"k{i}".encode(), b"v" * 30, []) for i in range(6)]
    plain = build_batch(recs)
    body = plain[HEADER_SIZE:]
    two = bytearray(plain[:HEADER_SIZE]) + gzip.compress(body[:100]) + gzip.compress(body[100:])
    struct.pack_into(">i", two, 8, len(two) - 12)
    struct.pack_into(">h", two, 21, GZIP)
    struct.pack_into(">I", two, 17, crc32c.crc32c(bytes(two[CRC_START:])))
    vb = validate_produce(bytes(two), 1 << 20, api_version=9)

    assert [ts for _o, ts in record_timestamps(vb.data) or ()] == [r[0] for r in recs]
    assert [i for i, _m in timestamp_violations(vb, now, 60_000, HOUR)] == [4]
    out = recompress(vb, LZ4)
    assert read_header(out.data).compression == LZ4
    assert [(r.key, r.timestamp) for r in decode_records(out.data)] == [(k, t) for t, k, *_ in recs]
