"""Fetch byte limits at the wire, as KIP-74 defines them: the first partition
with data returns at least one whole batch, however small the limits; every
other partition returns only what fits in what is left, and a partition that
gets nothing still reports its high watermark."""

from __future__ import annotations

import datetime
from typing import Any

from kio.schema.errors import ErrorCode

from harness import BrokerProcess
from wire import RawClient, make_batch


def create(bootstrap: str, name: str, partitions: int) -> None:
    from kio.schema.create_topics.v7 import request as ct

    body = ct.CreateTopicsRequest(
        topics=(
            ct.CreatableTopic(
                name=name,
                num_partitions=partitions,
                replication_factor=1,
                assignments=(),
                configs=(),
            ),
        ),
        timeout=datetime.timedelta(seconds=10),
        validate_only=False,
    )
    with RawClient(bootstrap) as c:
        assert c.call(19, 7, body).topics[0].error_code == ErrorCode.none


def produce(bootstrap: str, topic: str, partition: int, records: bytes) -> None:
    from kio.schema.produce.v9 import request as pr

    body = pr.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(seconds=10),
        topic_data=(
            pr.TopicProduceData(
                name=topic,
                partition_data=(pr.PartitionProduceData(index=partition, records=records),),
            ),
        ),
    )
    with RawClient(bootstrap) as c:
        resp = c.call(0, 9, body).responses[0].partition_responses[0]
    assert resp.error_code == ErrorCode.none


def fetch(bootstrap: str, topic: str, max_bytes: int, partition_max: int) -> list[Any]:
    from kio.schema.fetch.v12 import request as fr

    body = fr.FetchRequest(
        max_wait=datetime.timedelta(milliseconds=10),
        min_bytes=1,
        max_bytes=max_bytes,
        isolation_level=0,
        session_id=0,
        session_epoch=-1,
        topics=(
            fr.FetchTopic(
                topic=topic,
                partitions=tuple(
                    fr.FetchPartition(
                        partition=p,
                        fetch_offset=0,
                        partition_max_bytes=partition_max,
                        current_leader_epoch=-1,
                        last_fetched_epoch=-1,
                        log_start_offset=-1,
                    )
                    for p in (0, 1)
                ),
            ),
        ),
        forgotten_topics_data=(),
        rack_id="",
    )
    with RawClient(bootstrap) as c:
        parts = c.call(1, 12, body).responses[0].partitions
    return sorted(parts, key=lambda p: p.partition_index)


def sizes(parts: list[Any]) -> list[int]:
    return [len(p.records or b"") for p in parts]


def test_fetch_limits(broker: BrokerProcess, topic_name: str) -> None:
    create(broker.bootstrap, topic_name, 2)
    batches = [make_batch([bytes([65 + p]) * 2000]) for p in (0, 1)]
    for p, b in enumerate(batches):
        produce(broker.bootstrap, topic_name, p, b)
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
