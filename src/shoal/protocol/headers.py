"""Request and response headers (KIP-482 flexible versions included)."""

from __future__ import annotations

import struct

from shoal.protocol.errors import RequestDecodeError
from shoal.values import value

_FIXED = struct.Struct(">hhih")  # api_key, api_version, correlation_id, client_id length
_CORRELATION = struct.Struct(">i")


@value
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    client_id_end: int  # where the fixed header ends, before any tagged fields


def read_uvarint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Unsigned LEB128, as used by tagged fields; returns (value, new position).
    At most 5 bytes, as Kafka reads it."""
    result = 0
    for shift in range(0, 35, 7):
        if pos >= len(buf):
            raise RequestDecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
    raise RequestDecodeError("varint longer than 5 bytes")


def skip_tagged_fields(buf: bytes | memoryview, pos: int) -> int:
    count, pos = read_uvarint(buf, pos)
    if count * 2 > len(buf) - pos:  # a tag and a size of one byte each at least
        raise RequestDecodeError(f"{count} tagged fields cannot fit in {len(buf) - pos} bytes")
    for _ in range(count):
        _tag, pos = read_uvarint(buf, pos)
        size, pos = read_uvarint(buf, pos)
        pos += size
        if pos > len(buf):
            raise RequestDecodeError("tagged field runs past the frame")
    return pos


def peek_header(frame: bytes | memoryview) -> RequestHeader:
    """The fixed part every header version shares, enough to route or reject."""
    if len(frame) < _FIXED.size:
        raise RequestDecodeError(f"frame of {len(frame)} bytes has no request header")
    api_key, api_version, correlation_id, client_len = _FIXED.unpack_from(frame, 0)
    client_id: str | None = None
    end = _FIXED.size
    if client_len < -1:
        raise RequestDecodeError(f"client_id length {client_len}")
    if client_len >= 0:
        end = _FIXED.size + client_len
        if end > len(frame):
            raise RequestDecodeError("client_id runs past the frame")
        try:
            client_id = bytes(frame[_FIXED.size : end]).decode()
        except UnicodeDecodeError as exc:
            raise RequestDecodeError("client_id is not UTF-8") from exc
    return RequestHeader(api_key, api_version, correlation_id, client_id, end)


def body_offset(frame: bytes | memoryview, header: RequestHeader, flexible: bool) -> int:
    """Where the request body starts: after client_id, and after the header's
    tagged fields when the request version is flexible (header v2)."""
    pos = header.client_id_end
    if flexible:
        pos = skip_tagged_fields(frame, pos)
    return pos


def response_header(correlation_id: int, flexible: bool) -> bytes:
    """Response header v0, or v1 (an empty tagged-field section) when flexible."""
    head = _CORRELATION.pack(correlation_id)
    return head + b"\x00" if flexible else head
