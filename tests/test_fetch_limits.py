"""Fetch byte limits at the wire, as KIP-74 defines them: the first partition
with data returns at least one whole batch, however small the limits; every
other partition returns only what fits in what is left, and a partition that
gets nothing still reports its high watermark."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from harness import BrokerProcess
from wire import RawClient, create_topic, fetch_request, make_batch, produce


def fetch(bootstrap: str, topic: str, max_bytes: int, partition_max: int) -> list[Any]:
    body = fetch_request(topic, {0: 0, 1: 0}, max_bytes, partition_max)
    with RawClient(bootstrap) as c:
        parts = c.call(1, 12, body).responses[0].partitions
    return sorted(parts, key=lambda p: p.partition_index)


def sizes(parts: list[Any]) -> list[int]:
    return [len(p.records or b"") for p in parts]


def test_fetch_limits(broker: BrokerProcess, topic_name: str) -> None:
    assert create_topic(broker.bootstrap, topic_name, 2) == ErrorCode.none
    batches = [make_batch([bytes([65 + p]) * 2000]) for p in (0, 1)]
    for p, b in enumerate(batches):
        assert produce(broker.bootstrap, topic_name, b, partition=p).error_code == 0
    one = len(batches[0])

    everything = fetch(broker.bootstrap, topic_name, 1 << 20, 1 << 20)
    assert sizes(everything) == [one, one]
    assert [bytes([65 + i]) * 2000 in p.records for i, p in enumerate(everything)] == [True] * 2

    # Limits below one batch: the first partition still gets its batch, the
    # second nothing, and both report where their log ends.
    tiny = fetch(broker.bootstrap, topic_name, 10, 10)
    assert sizes(tiny) == [one, 0]
    assert [p.high_watermark for p in tiny] == [1, 1]
    assert all(p.error_code == ErrorCode.none for p in tiny)

    # Room for one batch in the response: the second does not fit.
    assert sizes(fetch(broker.bootstrap, topic_name, one + 100, 1 << 20)) == [one, 0]
    # A per-partition limit below one batch holds back every partition but the first.
    assert sizes(fetch(broker.bootstrap, topic_name, 1 << 20, 10)) == [one, 0]
