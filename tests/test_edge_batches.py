"""The v2 batch builder and decoder (protocol/batches.py): round trips through
the broker's own validator and through a real client consuming what we built."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import BrokerProcess
from shoal.protocol import batches as b
from shoal.protocol.records import read_header, record_timestamps, validate_batches
from wire import RawClient

keys = st.one_of(st.none(), st.binary(max_size=40))
headers = st.lists(
    st.tuples(st.text(max_size=10), st.one_of(st.none(), st.binary(max_size=20))), max_size=3
)
records = st.lists(st.tuples(st.integers(0, 2**41), keys, keys, headers), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(records, st.sampled_from(["none", "gzip", "snappy", "lz4", "zstd"]))
def test_round_trip(recs: list[Any], codec: str) -> None:
    data = b.build_batch(recs, compression=b.CODECS[codec], base_offset=100)
    [vb] = validate_batches(data, 1 << 30)
    assert vb.record_count == len(recs)
    h = read_header(data)
    assert h.base_timestamp == recs[0][0]
    assert h.max_timestamp == max(r[0] for r in recs)
    out = b.decode_records(data)
    assert [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in out] == [
        (100 + i, ts, k, v, [(hk, hv) for hk, hv in hs]) for i, (ts, k, v, hs) in enumerate(recs)
    ]
    if codec in ("none", "gzip"):
        # the broker's own record parser agrees on offsets and timestamps
        assert record_timestamps(data) == [(100 + i, r[0]) for i, r in enumerate(recs)]


def test_large_varints_and_sizes() -> None:
    big = b"x" * 70_000
    recs = [(1, None, big, [("h", big)]), (1 + 10**12, b"k", None, [])]
    data = b.build_batch(recs)
    out = b.decode_records(data)
    assert out[0].value == big and out[0].headers == (("h", big),)
    assert out[1].timestamp == 1 + 10**12 and out[1].value is None
    assert out[0].size == 70_000 + 1 + 70_000


def test_damage_is_detected() -> None:
    data = bytearray(b.build_batch([(5, b"k", b"v", [])]))
    data[-1] ^= 0xFF
    with pytest.raises(b.BatchDecodeError, match="CRC"):
        b.decode_records(bytes(data))
    with pytest.raises(b.BatchDecodeError):
        b.decode_records(bytes(data[:30]))
    with pytest.raises(ValueError):
        b.BatchBuilder().build()


def test_iter_batches_skips_partial_tail() -> None:
    one = b.build_batch([(1, None, b"a", [])])
    two = b.build_batch([(2, None, b"b", [])])
    assert [bytes(x) for x in b.iter_batches(one + two + two[:20])] == [one, two]


def _produce(bootstrap: str, topic: str, data: bytes) -> Any:
    from kio.schema.produce.v9 import request as pr

    body = pr.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(seconds=10),
        topic_data=(
            pr.TopicProduceData(
                name=topic, partition_data=(pr.PartitionProduceData(index=0, records=data),)
            ),
        ),
    )
    with RawClient(bootstrap) as c:
        return c.call(0, 9, body).responses[0].partition_responses[0]


@pytest.mark.parametrize("codec", ["none", "gzip", "lz4", "zstd", "snappy"])
def test_real_client_reads_built_batches(broker: BrokerProcess, codec: str) -> None:
    topic = f"batches-{uuid.uuid4().hex[:8]}"
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    sent = [
        (1_700_000_000_000 + i, f"dev-{i % 3}".encode(), f"v{i}".encode() * 20, [("i", b"%d" % i)])
        for i in range(50)
    ]
    for chunk in (sent[:20], sent[20:]):
        resp = _produce(broker.bootstrap, topic, b.build_batch(chunk, compression=b.CODECS[codec]))
        assert resp.error_code == 0
    c = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "x", "enable.auto.commit": False}
    )
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got: list[Any] = []
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=20)
        while len(got) < len(sent) and datetime.datetime.now() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got.append((m.timestamp()[1], m.key(), m.value(), m.headers()))
        assert [(ts, k, v, h) for ts, k, v, h in got] == [
            (ts, k, v, [(hk, hv) for hk, hv in hs]) for ts, k, v, hs in sent
        ]
    finally:
        c.close()
