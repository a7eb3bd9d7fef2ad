"""The hand-written FetchResponse is byte for byte what kio writes, for every
version Shoal offers and any content."""

from __future__ import annotations

import datetime
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.protocol.apis import encode_response
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.fetch_response import (
    MAX_VERSION,
    MIN_VERSION,
    FetchAnswer,
    FetchPartition,
)
from shoal.protocol.headers import RequestHeader

CODES = [
    ErrorCode.none,
    ErrorCode.offset_out_of_range,
    ErrorCode.unknown_topic_id,
    ErrorCode.fetch_session_id_not_found,
]
codes = st.sampled_from([int(c.value) for c in CODES])
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
offsets = st.just(-1) | i64
# null (read_uncommitted), empty, or a few (producer id, first offset) pairs
aborted = st.none() | st.lists(st.tuples(i64, i64), max_size=3).map(tuple)
# empty is the common case; null and a batch long enough for a 2-byte varint
records = st.just(b"") | st.none() | st.binary(min_size=1, max_size=300)
partitions = st.builds(
    FetchPartition,
    partition_index=i32,
    error_code=codes,
    high_watermark=offsets,
    last_stable_offset=offsets,
    log_start_offset=offsets,
    aborted=aborted,
    preferred_read_replica=st.just(-1) | i32,
    records=records,
)
topics = st.text(min_size=1, max_size=200) | st.uuids()
answers = st.lists(st.tuples(topics, st.lists(partitions, max_size=4).map(tuple)), max_size=4).map(
    tuple
)


def kio_frame(answer: FetchAnswer, correlation_id: int) -> bytes:
    s = Schema(1, answer.version)
    body = s.FetchResponse(
        throttle_time=answer.throttle_time,
        error_code=ErrorCode(answer.error_code),
        session_id=answer.session_id,
        responses=tuple(
            s.FetchableTopicResponse(
                # a name before v13, an id from v13 (the other side is blank)
                topic=ref if isinstance(ref, str) else "",
                topic_id=ref if isinstance(ref, uuid.UUID) else uuid.UUID(int=0),
                partitions=tuple(
                    s.PartitionData(
                        partition_index=p.partition_index,
                        error_code=ErrorCode(p.error_code),
                        high_watermark=p.high_watermark,
                        last_stable_offset=p.last_stable_offset,
                        log_start_offset=p.log_start_offset,
                        aborted_transactions=None
                        if p.aborted is None
                        else tuple(
                            s.AbortedTransaction(producer_id=pid, first_offset=first)
                            for pid, first in p.aborted
                        ),
                        preferred_read_replica=p.preferred_read_replica,
                        records=p.records,
                    )
                    for p in parts
                ),
            )
            for ref, parts in answer.responses
        ),
    )
    header = RequestHeader(1, answer.version, correlation_id, "c", 0)
    return encode_response(header, body)


@settings(max_examples=100, deadline=None)
@given(
    version=st.integers(MIN_VERSION, MAX_VERSION),
    error_code=codes,
    session_id=st.just(0) | i32,
    responses=answers,
    throttle_ms=st.integers(0, 2**31 - 1),
    correlation_id=i32,
)
def test_same_bytes_as_kio(
    version: int,
    error_code: int,
    session_id: int,
    responses: tuple[tuple[str | uuid.UUID, tuple[FetchPartition, ...]], ...],
    throttle_ms: int,
    correlation_id: int,
) -> None:
    answer = FetchAnswer(
        version, error_code, session_id, responses, datetime.timedelta(milliseconds=throttle_ms)
    )
    assert answer.frame(correlation_id) == kio_frame(answer, correlation_id)


@pytest.mark.parametrize("version", range(MIN_VERSION, MAX_VERSION + 1))
def test_long_arrays_and_many_partitions(version: int) -> None:
    """Counts past one varint byte: 200 aborted transactions, 200 partitions
    (quiet ones, as a fleet consumer on librdkafka gets), a 20 KB batch."""
    many_aborted = tuple((pid, pid * 10) for pid in range(200))
    quiet = tuple(FetchPartition(i, 0, 5, 5, 0) for i in range(200))
    busy = (
        FetchPartition(0, 0, 900, 800, 3, many_aborted, 2, bytes(range(256)) * 80),
        FetchPartition(1, 0, 900, 800, 3, (), -1, None),
    )
    answer = FetchAnswer(
        version, 0, 1234, (("a" * 300, quiet), (uuid.UUID(int=7), busy), ("b", ()))
    )
    assert answer.frame(5) == kio_frame(answer, 5)


def test_encode_response_writes_it() -> None:
    """The answer a handler returns is framed by the protocol edge as is."""
    answer = FetchAnswer(12, 0, 0, (("t", (FetchPartition(0, 0, 1),)),))
    header = RequestHeader(1, 12, 99, "c", 0)
    assert encode_response(header, answer) == answer.frame(99) == kio_frame(answer, 99)


@pytest.mark.parametrize("version", [MIN_VERSION - 1, MAX_VERSION + 1])
def test_versions_it_does_not_write(version: int) -> None:
    with pytest.raises(ValueError, match=f"v{version}"):
        FetchAnswer(version, 0, 0, ())
