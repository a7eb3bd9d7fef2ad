"""Requests for the guard and fuzz tests (issue 18): a valid request of every API
and version Shoal offers, built from kio's schema with every field present (two
elements per array, tagged fields set) so that mutating its bytes reaches every
count, string and tag the decoder reads; and hand-made frames that abort kio's
native decoder unless the guard refuses them first."""

from __future__ import annotations

import datetime
import struct
import uuid
from dataclasses import fields
from typing import Any

from kio.schema.errors import ErrorCode
from kio.serial._introspect import (
    EntityField,
    EntityTupleField,
    PrimitiveTupleField,
    classify_field,
    get_schema_field_type,
)

from shoal.protocol.apis import SUPPORTED, request_type
from wire import make_batch, request_frame

VERSIONS = [(key, v) for key, (_n, lo, hi) in SUPPORTED.items() for v in range(lo, hi + 1)]

_VALUES: dict[str, Any] = {
    "bool": True,
    "int8": 1,
    "uint8": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 1,
    "uint32": 1,
    "int64": 1,
    "uint64": 1,
    "float64": 1.5,
    "error_code": ErrorCode.none,
    "timedelta_i32": datetime.timedelta(milliseconds=50),
    "timedelta_i64": datetime.timedelta(milliseconds=50),
    "datetime_i64": datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    "uuid": uuid.UUID(int=0x5A5A_0001),
    "string": "sample",
    "bytes": b"\x01\x02",
}


def _primitive(kafka_type: str) -> Any:
    if kafka_type == "records":
        return make_batch([b"sample"], base_timestamp=1_700_000_000_000)
    return _VALUES[kafka_type]


def sample_body(cls: type[Any], per_array: int = 2) -> Any:
    values: dict[str, Any] = {}
    for field in fields(cls):
        kind = classify_field(field)
        if isinstance(kind, EntityTupleField):
            values[field.name] = tuple(sample_body(kind.type_, per_array) for _ in range(per_array))
        elif isinstance(kind, EntityField):
            values[field.name] = sample_body(kind.type_, per_array)
        elif isinstance(kind, PrimitiveTupleField):
            item = _primitive(get_schema_field_type(field))
            values[field.name] = (item,) * per_array
        else:
            values[field.name] = _primitive(get_schema_field_type(field))
    return cls(**values)


def sample_frame(api_key: int, version: int, correlation_id: int = 1) -> bytes:
    """The whole frame, size prefix included."""
    body = sample_body(request_type(api_key, version))
    return request_frame(api_key, version, body, correlation_id, client_id="sample")


# --- hostile frames ---------------------------------------------------------------

HUGE_COMPACT = b"\xff\xff\xff\xff\x0f"  # uvarint 2^32 - 1: a compact count of 2^32 - 2
HUGE_INT32 = struct.pack(">i", 0x7FFFFFFF)


def header(api_key: int, version: int, flexible: bool, client_id: bytes = b"fuzz") -> bytes:
    head = struct.pack(">hhih", api_key, version, 1, len(client_id)) + client_id
    return head + (b"\x00" if flexible else b"")


def compact_str(text: bytes) -> bytes:
    return bytes([len(text) + 1]) + text


def legacy_str(text: bytes) -> bytes:
    return struct.pack(">h", len(text)) + text


FETCH_FIXED = struct.pack(">iiiibii", -1, 500, 1, 1 << 20, 0, 0, -1)  # up to session_epoch
PRODUCE_FIXED = struct.pack(">hi", -1, 10_000)  # acks, timeout

#: name -> (frame without its size prefix, words the rejection must contain)
ABORTS: dict[str, tuple[bytes, str]] = {
    "metadata-v9-issue": (
        bytes.fromhex("000000170003000900000001000466757a7a00ffffffff0f000000")[4:],
        "topics: 4294967294 elements",
    ),
    "metadata-v1-issue": (
        bytes.fromhex("000000120003000100000001000466757a7a7fffffff")[4:],
        "topics: 2147483647 elements",
    ),
    "produce-v9-topics": (
        header(0, 9, True) + b"\x00" + PRODUCE_FIXED + HUGE_COMPACT + b"\x00\x00",
        "topic_data: 4294967294 elements",
    ),
    "produce-v9-partitions": (
        header(0, 9, True)
        + b"\x00"
        + PRODUCE_FIXED
        + b"\x02"
        + compact_str(b"fuzz")
        + HUGE_COMPACT
        + b"\x00\x00",
        "topic_data.partition_data: 4294967294 elements",
    ),
    "produce-v3-topics": (
        header(0, 3, False) + legacy_str(b"") + PRODUCE_FIXED + HUGE_INT32,
        "topic_data: 2147483647 elements",
    ),
    "fetch-v12-topics": (
        header(1, 12, True) + FETCH_FIXED + HUGE_COMPACT + b"\x01\x01\x00",
        "topics: 4294967294 elements",
    ),
    "fetch-v12-partitions": (
        header(1, 12, True) + FETCH_FIXED + b"\x02" + compact_str(b"fuzz") + HUGE_COMPACT,
        "topics.partitions: 4294967294 elements",
    ),
    "fetch-v12-forgotten": (
        header(1, 12, True) + FETCH_FIXED + b"\x01" + HUGE_COMPACT + b"\x01\x00",
        "forgotten_topics_data: 4294967294 elements",
    ),
    "fetch-v4-partitions": (
        header(1, 4, False)
        + struct.pack(">iiiib", -1, 500, 1, 1 << 20, 0)
        + struct.pack(">i", 1)
        + legacy_str(b"fuzz")
        + HUGE_INT32,
        "topics.partitions: 2147483647 elements",
    ),
}
