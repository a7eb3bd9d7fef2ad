"""The hand-written MetadataResponse is byte for byte what kio writes, for
every version Shoal offers and any content."""

from __future__ import annotations

import datetime
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.protocol.apis import encode_response
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.protocol.metadata_response import (
    MAX_VERSION,
    MIN_VERSION,
    NO_OPERATIONS,
    BrokerEntry,
    MetadataAnswer,
    TopicEntry,
)

CODES = [ErrorCode.none, ErrorCode.leader_not_available, ErrorCode.unknown_topic_or_partition]
i32 = st.integers(-(2**31), 2**31 - 1)
codes = st.sampled_from([int(c.value) for c in CODES])
names = st.text(min_size=1, max_size=200)
brokers = st.builds(
    BrokerEntry,
    node_id=i32,
    host=st.text(max_size=60),
    port=st.integers(0, 65535),
    rack=st.text(max_size=20) | st.none(),
)
partitions = st.tuples(i32, codes, st.integers(-1, 2**31 - 1), i32)
topics = st.builds(
    TopicEntry,
    error_code=codes,
    name=names,
    topic_id=st.uuids() | st.none(),
    partitions=st.lists(partitions, max_size=4).map(tuple),
    authorized_operations=st.just(NO_OPERATIONS) | st.integers(0, 2**12),
)


def kio_frame(a: MetadataAnswer, correlation_id: int) -> bytes:
    s = Schema(3, a.version)
    fields: dict[str, object] = {
        "throttle_time": a.throttle_time,
        "brokers": tuple(
            s.MetadataResponseBroker(node_id=b.node_id, host=b.host, port=b.port, rack=b.rack)
            for b in a.brokers
        ),
        "cluster_id": a.cluster_id,
        "controller_id": a.controller_id,
        "topics": tuple(
            s.MetadataResponseTopic(
                error_code=ErrorCode(t.error_code),
                name=t.name,
                topic_id=t.topic_id if t.topic_id is not None else uuid.UUID(int=0),
                is_internal=False,
                partitions=tuple(
                    s.MetadataResponsePartition(
                        error_code=ErrorCode(error),
                        partition_index=index,
                        leader_id=leader,
                        leader_epoch=epoch,
                        replica_nodes=(leader,) if leader >= 0 else (),
                        isr_nodes=(leader,) if leader >= 0 else (),
                        offline_replicas=(),
                    )
                    for index, error, leader, epoch in t.partitions
                ),
                topic_authorized_operations=t.authorized_operations,
            )
            for t in a.topics
        ),
        "cluster_authorized_operations": a.cluster_authorized_operations,
        "error_code": ErrorCode(a.error_code),
    }
    body = s.MetadataResponse(**fields)  # Schema drops what the version lacks
    return encode_response(RequestHeader(3, a.version, correlation_id, "c", 0), body)


@pytest.mark.parametrize("version", range(MIN_VERSION, MAX_VERSION + 1))
@settings(max_examples=15, deadline=None)
@given(
    brokers=st.lists(brokers, max_size=3).map(tuple),
    cluster_id=st.text(max_size=30) | st.none(),
    controller_id=i32,
    topics=st.lists(topics, min_size=1, max_size=4).map(tuple),
    cluster_ops=st.just(NO_OPERATIONS) | st.integers(0, 2**12),
    throttle_ms=st.integers(0, 2**31 - 1),
    error_code=codes,
    correlation_id=i32,
)
def test_same_bytes_as_kio(
    version: int,
    brokers: tuple[BrokerEntry, ...],
    cluster_id: str | None,
    controller_id: int,
    topics: tuple[TopicEntry, ...],
    cluster_ops: int,
    throttle_ms: int,
    error_code: int,
    correlation_id: int,
) -> None:
    answer = MetadataAnswer(
        version,
        brokers,
        cluster_id,
        controller_id,
        topics,
        cluster_ops,
        datetime.timedelta(milliseconds=throttle_ms),
        error_code,
    )
    assert answer.frame(correlation_id) == kio_frame(answer, correlation_id)


@pytest.mark.parametrize("version", [MIN_VERSION - 1, MAX_VERSION + 1])
def test_versions_it_does_not_write(version: int) -> None:
    with pytest.raises(ValueError, match=f"v{version}"):
        MetadataAnswer(version, (), None, 0, ())
