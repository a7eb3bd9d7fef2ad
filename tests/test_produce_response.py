"""The hand-written ProduceResponse is byte for byte what kio writes, for
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
from shoal.protocol.produce_response import (
    MAX_VERSION,
    MIN_VERSION,
    PartitionAnswer,
    ProduceAnswer,
)

CODES = [ErrorCode.none, ErrorCode.not_leader_or_follower, ErrorCode.invalid_timestamp]
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
text = st.text(max_size=140) | st.none()
partitions = st.builds(
    PartitionAnswer,
    index=i32,
    error_code=st.sampled_from([int(c.value) for c in CODES]),
    base_offset=i64,
    log_append_time_ms=st.integers(-1, 2**41),
    log_start_offset=i64,
    record_errors=st.lists(st.tuples(i32, text), max_size=3).map(tuple),
    error_message=text,
)
topics = st.text(min_size=1, max_size=200) | st.uuids()
answers = st.lists(st.tuples(topics, st.lists(partitions, max_size=4).map(tuple)), max_size=4).map(
    tuple
)


def kio_frame(answer: ProduceAnswer, correlation_id: int) -> bytes:
    s = Schema(0, answer.version)
    body = s.ProduceResponse(
        responses=tuple(
            s.TopicProduceResponse(
                # a name before v13, an id from v13 (the other side is blank)
                name=ref if isinstance(ref, str) else "",
                topic_id=(ref if isinstance(ref, uuid.UUID) else uuid.UUID(int=0)),
                partition_responses=tuple(
                    s.PartitionProduceResponse(
                        index=p.index,
                        error_code=ErrorCode(p.error_code),
                        base_offset=p.base_offset,
                        log_append_time=(
                            None
                            if p.log_append_time_ms < 0
                            else datetime.datetime.fromtimestamp(
                                p.log_append_time_ms / 1000, datetime.UTC
                            )
                        ),
                        log_start_offset=p.log_start_offset,
                        record_errors=tuple(
                            s.BatchIndexAndErrorMessage(batch_index=i, batch_index_error_message=m)
                            for i, m in p.record_errors
                        )
                        if answer.version >= 8  # the field is v8+
                        else (),
                        error_message=p.error_message,
                    )
                    for p in parts
                ),
            )
            for ref, parts in answer.responses
        ),
        throttle_time=answer.throttle_time,
    )
    header = RequestHeader(0, answer.version, correlation_id, "c", 0)
    return encode_response(header, body)


@settings(max_examples=25, deadline=None)
@given(
    version=st.integers(MIN_VERSION, MAX_VERSION),
    responses=answers,
    throttle_ms=st.integers(0, 2**31 - 1),
    correlation_id=i32,
)
def test_same_bytes_as_kio(
    version: int,
    responses: tuple[tuple[str | uuid.UUID, tuple[PartitionAnswer, ...]], ...],
    throttle_ms: int,
    correlation_id: int,
) -> None:
    answer = ProduceAnswer(version, responses, datetime.timedelta(milliseconds=throttle_ms))
    assert answer.frame(correlation_id) == kio_frame(answer, correlation_id)


@pytest.mark.parametrize("version", [MIN_VERSION - 1, MAX_VERSION + 1])
def test_versions_it_does_not_write(version: int) -> None:
    with pytest.raises(ValueError, match=f"v{version}"):
        ProduceAnswer(version, ())
