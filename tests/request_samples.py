"""A valid request of every API and version Shoal offers, built from kio's
schema with every field present (two elements per array, tagged fields set),
so that mutating its bytes reaches every count, string and tag the decoder reads."""

from __future__ import annotations

import datetime
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
