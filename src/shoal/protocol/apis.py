"""The API table: which versions Shoal speaks, and kio's codecs for each.

Maxima follow what Kafka 4.1 brokers offer, so current clients take Shoal for
a Kafka 4 broker; minima are Kafka 4's (Produce v3, Fetch v4...). Versions
that address topics by id (Fetch v13+, Produce v13) resolve ids through the
topic catalog.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import cache
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer

from shoal.protocol.errors import RequestDecodeError
from shoal.protocol.fetch_response import FetchAnswer
from shoal.protocol.frames import encode_size
from shoal.protocol.guard import guard_body
from shoal.protocol.headers import RequestHeader, body_offset, peek_header, response_header
from shoal.protocol.metadata_response import MetadataAnswer
from shoal.protocol.produce_response import ProduceAnswer
from shoal.protocol.sasl_response import SaslAuthenticateAnswer, SaslHandshakeAnswer
from shoal.values import value

API_VERSIONS = 18

#: api key -> (name, min version, max version)
SUPPORTED: dict[int, tuple[str, int, int]] = {
    0: ("Produce", 3, 13),
    1: ("Fetch", 4, 17),
    2: ("ListOffsets", 1, 10),
    3: ("Metadata", 0, 13),
    8: ("OffsetCommit", 2, 10),
    9: ("OffsetFetch", 1, 10),
    10: ("FindCoordinator", 0, 4),
    11: ("JoinGroup", 0, 9),
    12: ("Heartbeat", 0, 4),
    13: ("LeaveGroup", 0, 5),
    14: ("SyncGroup", 0, 5),
    15: ("DescribeGroups", 0, 6),
    16: ("ListGroups", 0, 5),
    17: ("SaslHandshake", 1, 1),
    18: ("ApiVersions", 0, 4),
    19: ("CreateTopics", 2, 7),
    20: ("DeleteTopics", 1, 6),
    21: ("DeleteRecords", 0, 2),
    22: ("InitProducerId", 0, 5),
    23: ("OffsetForLeaderEpoch", 2, 4),
    24: ("AddPartitionsToTxn", 0, 5),
    25: ("AddOffsetsToTxn", 0, 4),
    26: ("EndTxn", 0, 5),
    27: ("WriteTxnMarkers", 1, 1),
    28: ("TxnOffsetCommit", 0, 5),
    29: ("DescribeAcls", 1, 3),
    30: ("CreateAcls", 1, 3),
    31: ("DeleteAcls", 1, 3),
    32: ("DescribeConfigs", 1, 4),
    33: ("AlterConfigs", 0, 2),
    34: ("AlterReplicaLogDirs", 1, 2),
    35: ("DescribeLogDirs", 1, 4),
    36: ("SaslAuthenticate", 0, 2),
    37: ("CreatePartitions", 0, 3),
    42: ("DeleteGroups", 0, 2),
    43: ("ElectLeaders", 0, 2),
    44: ("IncrementalAlterConfigs", 0, 1),
    45: ("AlterPartitionReassignments", 0, 1),
    46: ("ListPartitionReassignments", 0, 0),
    47: ("OffsetDelete", 0, 0),
    48: ("DescribeClientQuotas", 0, 1),
    49: ("AlterClientQuotas", 0, 1),
    50: ("DescribeUserScramCredentials", 0, 0),
    51: ("AlterUserScramCredentials", 0, 0),
    55: ("DescribeQuorum", 0, 2),
    60: ("DescribeCluster", 0, 2),
    61: ("DescribeProducers", 0, 0),
    65: ("DescribeTransactions", 0, 0),
    66: ("ListTransactions", 0, 1),
    68: ("ConsumerGroupHeartbeat", 0, 1),
    69: ("ConsumerGroupDescribe", 0, 1),
    74: ("ListConfigResources", 0, 1),
    75: ("DescribeTopicPartitions", 0, 0),
}


def api_name(api_key: int) -> str:
    entry = SUPPORTED.get(api_key)
    return entry[0] if entry else f"api-{api_key}"


def is_supported(api_key: int, api_version: int) -> bool:
    entry = SUPPORTED.get(api_key)
    return entry is not None and entry[1] <= api_version <= entry[2]


@cache
def request_type(api_key: int, api_version: int) -> type[Any]:
    return load_request_schema(api_key, api_version)


@cache
def response_type(api_key: int, api_version: int) -> type[Any]:
    return load_response_schema(api_key, api_version)


@cache
def _reader(api_key: int, api_version: int) -> Callable[[Any, int], tuple[Any, int]]:
    return entity_reader(request_type(api_key, api_version))


@cache
def _writer(api_key: int, api_version: int) -> Callable[[Any, Any], None]:
    return entity_writer(response_type(api_key, api_version))


def is_flexible(api_key: int, api_version: int) -> bool:
    return bool(request_type(api_key, api_version).__flexible__)


@value
class Request:
    header: RequestHeader
    body: Any


def decode_request(frame: bytes, header: RequestHeader | None = None) -> Request:
    """Decode a whole frame (without its size prefix) whose version is supported.
    The guard bounds every count first: kio's native reader would abort the
    process on a huge one, and reads null where the schema forbids it.
    `header`: the frame's, if the caller peeked it already."""
    if header is None:
        header = peek_header(frame)
    if not is_supported(header.api_key, header.api_version):
        raise RequestDecodeError(f"unsupported {api_name(header.api_key)} v{header.api_version}")
    cls = request_type(header.api_key, header.api_version)
    pos = body_offset(frame, header, bool(cls.__flexible__))
    frame = guard_body(frame, pos, cls)  # before kio allocates what the frame claims
    try:
        body, _size = _reader(header.api_key, header.api_version)(frame, pos)
    except Exception as exc:  # kio raises a variety of decode errors
        raise RequestDecodeError(
            f"cannot decode {api_name(header.api_key)} v{header.api_version}: {exc}"
        ) from exc
    return Request(header, body)


def encode_response(header: RequestHeader, body: Any) -> bytes:
    """Size prefix, response header, body. ApiVersions always answers with header
    v0 so that a client that guessed a version can still read it."""
    if isinstance(  # written by hand, for speed
        body,
        ProduceAnswer | FetchAnswer | MetadataAnswer | SaslHandshakeAnswer | SaslAuthenticateAnswer,
    ):
        return body.frame(header.correlation_id)
    flexible = bool(type(body).__flexible__) and header.api_key != API_VERSIONS
    out = io.BytesIO()
    out.write(b"\x00\x00\x00\x00")
    out.write(response_header(header.correlation_id, flexible))
    _writer(int(body.__api_key__), int(body.__version__))(out, body)
    data = out.getbuffer()
    data[0:4] = encode_size(len(data) - 4)
    del data
    return out.getvalue()
