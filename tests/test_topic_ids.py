"""Topic ids (KIP-516) at the wire: Metadata, Fetch v13+ and Produce v13
address topics by id; an id the broker does not know is UNKNOWN_TOPIC_ID; a
topic keeps its id across a restart."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from harness import BrokerProcess
from wire import RawClient, create_topic, fetch_request, make_batch, produce, topic_id


def fetch_by_id(
    bootstrap: str,
    tid: uuid.UUID,
    partitions: dict[int, int],
    version: int = 17,
) -> Any:
    with RawClient(bootstrap) as c:
        return c.call(1, version, fetch_request(tid, partitions, version=version))


def test_metadata_and_fetch_by_id(broker: BrokerProcess, topic_name: str) -> None:
    assert create_topic(broker.bootstrap, topic_name, 2) == ErrorCode.none
    batch = make_batch([b"by-id"])
    assert produce(broker.bootstrap, topic_name, batch, partition=1).error_code == 0
    tid = topic_id(broker.bootstrap, topic_name)

    from kio.schema.metadata.v13 import request as mr

    unknown = uuid.uuid4()
    body = mr.MetadataRequest(
        topics=(
            mr.MetadataRequestTopic(topic_id=tid, name=None),
            mr.MetadataRequestTopic(topic_id=unknown, name=None),
        ),
        allow_auto_topic_creation=False,
        include_topic_authorized_operations=False,
    )
    with RawClient(broker.bootstrap) as c:
        md = c.call(3, 13, body)
    assert md.error_code == ErrorCode.none
    known, missing = md.topics
    assert (known.name, known.topic_id, known.error_code) == (topic_name, tid, ErrorCode.none)
    assert len(known.partitions) == 2
    assert (missing.topic_id, missing.error_code) == (unknown, ErrorCode.unknown_topic_id)

    for version in (13, 17):
        resp = fetch_by_id(broker.bootstrap, tid, {0: 0, 1: 0}, version)
        assert resp.error_code == ErrorCode.none
        (t,) = resp.responses
        assert t.topic_id == tid
        parts = {p.partition_index: p for p in t.partitions}
        assert b"by-id" in parts[1].records and parts[1].high_watermark == 1
        assert parts[0].records in (b"", None) and parts[0].error_code == ErrorCode.none


def test_fetch_unknown_topic_id(broker: BrokerProcess) -> None:
    unknown = uuid.uuid4()
    resp = fetch_by_id(broker.bootstrap, unknown, {0: 0, 3: 0})
    (t,) = resp.responses
    assert t.topic_id == unknown
    assert [p.error_code for p in t.partitions] == [ErrorCode.unknown_topic_id] * 2


def produce_by_id(bootstrap: str, tid: uuid.UUID, records: bytes, partition: int = 0) -> Any:
    from kio.schema.produce.v13 import request as pr

    body = pr.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(seconds=10),
        topic_data=(
            pr.TopicProduceData(
                topic_id=tid,
                partition_data=(pr.PartitionProduceData(index=partition, records=records),),
            ),
        ),
    )
    with RawClient(bootstrap) as c:
        return c.call(0, 13, body).responses[0]


def test_produce_by_id(broker: BrokerProcess, topic_name: str) -> None:
    assert create_topic(broker.bootstrap, topic_name, 1) == ErrorCode.none
    tid = topic_id(broker.bootstrap, topic_name)
    t = produce_by_id(broker.bootstrap, tid, make_batch([b"a", b"b"]))
    assert t.topic_id == tid
    assert [(p.error_code, p.base_offset) for p in t.partition_responses] == [(0, 0)]
    unknown = uuid.uuid4()
    t = produce_by_id(broker.bootstrap, unknown, make_batch([b"x"]))
    assert t.topic_id == unknown
    assert t.partition_responses[0].error_code == ErrorCode.unknown_topic_id
    resp = fetch_by_id(broker.bootstrap, tid, {0: 0})
    assert resp.responses[0].partitions[0].high_watermark == 2


def test_delete_topics_by_id(broker: BrokerProcess, topic_name: str) -> None:
    from kio.schema.delete_topics.v6 import request as dt

    assert create_topic(broker.bootstrap, topic_name, 1) == ErrorCode.none
    tid = topic_id(broker.bootstrap, topic_name)
    unknown = uuid.uuid4()
    zero = uuid.UUID(int=0)  # what a client sends beside a name
    body = dt.DeleteTopicsRequest(
        topics=(
            dt.DeleteTopicState(name=None, topic_id=tid),
            dt.DeleteTopicState(name=None, topic_id=unknown),
            dt.DeleteTopicState(name=topic_name, topic_id=unknown),
            dt.DeleteTopicState(name="never-created-" + topic_name, topic_id=zero),
        ),
        timeout=datetime.timedelta(seconds=10),
    )
    with RawClient(broker.bootstrap) as c:
        by_id, missing, both, by_name = c.call(20, 6, body).responses
    assert (by_id.name, by_id.topic_id, by_id.error_code) == (topic_name, tid, ErrorCode.none)
    assert (missing.topic_id, missing.error_code) == (unknown, ErrorCode.unknown_topic_id)
    assert both.error_code == ErrorCode.invalid_request
    assert by_name.error_code == ErrorCode.unknown_topic_or_partition
    assert fetch_by_id(broker.bootstrap, tid, {0: 0}).responses[0].partitions[0].error_code == (
        ErrorCode.unknown_topic_id
    )


def test_list_offsets_v10_and_describe_cluster_v2(broker: BrokerProcess, topic_name: str) -> None:
    from kio.schema.describe_cluster.v2 import request as dc
    from kio.schema.list_offsets.v10 import request as lo

    assert create_topic(broker.bootstrap, topic_name, 1) == ErrorCode.none
    assert produce(broker.bootstrap, topic_name, make_batch([b"a", b"b"])).error_code == 0
    body = lo.ListOffsetsRequest(
        replica_id=-1,
        isolation_level=0,
        timeout=datetime.timedelta(seconds=5),
        topics=(
            lo.ListOffsetsTopic(
                name=topic_name,
                partitions=tuple(
                    lo.ListOffsetsPartition(partition_index=0, timestamp=ts) for ts in (-1, -2, -5)
                ),
            ),
        ),
    )
    with RawClient(broker.bootstrap) as c:
        parts = c.call(2, 10, body).topics[0].partitions
        cluster = c.call(
            60,
            2,
            dc.DescribeClusterRequest(
                include_cluster_authorized_operations=False, include_fenced_brokers=True
            ),
        )
    # latest, earliest, latest tiered (nothing is tiered: -1, as Kafka without remote storage)
    assert [(p.error_code, p.offset) for p in parts] == [(0, 2), (0, 0), (0, -1)]
    assert cluster.error_code == ErrorCode.none
    assert [b.is_fenced for b in cluster.brokers] == [False]
