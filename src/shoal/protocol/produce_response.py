"""ProduceResponse v3-v13 written straight to bytes.

librdkafka sends one produce request per partition, so a broker with
thousands of busy partitions answers thousands of produce requests a second;
building and serialising kio entities for each cost about as much as the rest
of the request. This writes the same bytes (tests/test_produce_response.py
checks them against kio's for every version) with a few struct packs. Tagged
fields are never set (current_leader and node_endpoints, v10+, are written
only when a NOT_LEADER answer carries a new leader, which Shoal does not send).
"""

from __future__ import annotations

import datetime
import struct
import uuid
from dataclasses import field

from shoal.protocol.primitives import I32, count, response_frame, string
from shoal.values import value

MIN_VERSION, MAX_VERSION = 3, 13
FLEXIBLE_FROM = 9
TOPIC_IDS_FROM = 13  # topics named by id (KIP-516), not by name

_PART_V3 = struct.Struct(">ihqq")  # index, error, base offset, log append time
_PART_V5 = struct.Struct(">ihqqq")  # ... log start offset
_ZERO = datetime.timedelta(0)
_MS = datetime.timedelta(milliseconds=1)


@value
class PartitionAnswer:
    index: int
    error_code: int
    base_offset: int = -1
    log_append_time_ms: int = -1
    log_start_offset: int = -1
    record_errors: tuple[tuple[int, str | None], ...] = ()
    error_message: str | None = None


@value
class ProduceAnswer:
    """A produce response of one version: (topic, partitions) in request
    order; the topic is its name, or its id from v13."""

    version: int
    responses: tuple[tuple[str | uuid.UUID, tuple[PartitionAnswer, ...]], ...]
    throttle_time: datetime.timedelta = field(default=_ZERO)

    def __post_init__(self) -> None:
        if not MIN_VERSION <= self.version <= MAX_VERSION:
            raise ValueError(f"ProduceResponse v{self.version} is not written here")

    def frame(self, correlation_id: int) -> bytes:
        """Size prefix, response header and body."""
        flexible = self.version >= FLEXIBLE_FROM
        return response_frame(correlation_id, flexible, lambda out: _body(out, self, flexible))


def _body(out: list[bytes], r: ProduceAnswer, flexible: bool) -> None:
    v = r.version
    put = out.append
    put(count(len(r.responses), flexible))
    for ref, parts in r.responses:
        if v >= TOPIC_IDS_FROM:
            put(ref.bytes if isinstance(ref, uuid.UUID) else bytes(16))
        else:
            put(string(ref if isinstance(ref, str) else "", flexible))
        put(count(len(parts), flexible))
        for p in parts:
            if v >= 5:
                put(
                    _PART_V5.pack(
                        p.index,
                        p.error_code,
                        p.base_offset,
                        p.log_append_time_ms,
                        p.log_start_offset,
                    )
                )
            else:
                put(_PART_V3.pack(p.index, p.error_code, p.base_offset, p.log_append_time_ms))
            if v >= 8:
                put(count(len(p.record_errors), flexible))
                for batch_index, message in p.record_errors:
                    put(I32.pack(batch_index))
                    put(string(message, flexible))
                    if flexible:
                        put(b"\x00")
                put(string(p.error_message, flexible))
            if flexible:
                put(b"\x00")  # partition's tagged fields
        if flexible:
            put(b"\x00")  # topic's tagged fields
    put(I32.pack(r.throttle_time // _MS))
    if flexible:
        put(b"\x00")
