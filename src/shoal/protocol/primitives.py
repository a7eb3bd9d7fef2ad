"""Kafka's wire primitives for the hand-written response encoders (and the
request guard): a count of array items and a string, in the classic form
(int32 / int16 length) or the flexible one (unsigned varint of length + 1,
0 for null), and the size-prefixed response frame around a body."""

from __future__ import annotations

import struct
from collections.abc import Callable

from shoal.protocol.frames import encode_size
from shoal.protocol.headers import response_header

I16 = struct.Struct(">h")
I32 = struct.Struct(">i")


_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))


def uvarint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]  # counts and lengths of small answers, built once
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def count(n: int, flexible: bool) -> bytes:
    return uvarint(n + 1) if flexible else I32.pack(n)


def string(s: str | None, flexible: bool) -> bytes:
    if s is None:
        return b"\x00" if flexible else I16.pack(-1)
    raw = s.encode()
    return (uvarint(len(raw) + 1) if flexible else I16.pack(len(raw))) + raw


def response_frame(
    correlation_id: int, flexible: bool, write_body: Callable[[list[bytes]], None]
) -> bytes:
    """Size prefix, response header, then the parts `write_body` appends."""
    out = [b"", response_header(correlation_id, flexible)]
    write_body(out)
    data = b"".join(out)
    return encode_size(len(data)) + data
