"""Kafka's framing: a signed 32-bit big-endian size, then that many bytes."""

from __future__ import annotations

import struct

from shoal.protocol.errors import FrameError

SIZE_PREFIX = 4
_SIZE = struct.Struct(">i")


def decode_size(prefix: bytes, max_size: int) -> int:
    """Validate a frame's size prefix before reading the body, so a hostile or
    broken peer cannot make the broker allocate more than socket.request.max.bytes."""
    if len(prefix) != SIZE_PREFIX:
        raise FrameError(f"size prefix must be 4 bytes, got {len(prefix)}")
    (size,) = _SIZE.unpack(prefix)
    if size < 0:
        raise FrameError(f"negative frame size {size}")
    if size > max_size:
        raise FrameError(f"frame of {size} bytes exceeds socket.request.max.bytes={max_size}")
    if size < 8:
        raise FrameError(f"frame of {size} bytes is shorter than a request header")
    return int(size)


def encode_size(length: int) -> bytes:
    return _SIZE.pack(length)
