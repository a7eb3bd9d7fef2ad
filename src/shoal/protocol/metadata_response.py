"""MetadataResponse v0-v13 written straight to bytes.

A client that asks for every topic (admin tools, librdkafka consumers with a
regex subscription, on every refresh) gets one entry per partition: with
100,000 partitions, building and serialising kio entities for them held the
event loop for seconds, past librdkafka's request timeout. This writes the
same bytes (tests/test_metadata_response.py checks them against kio's for
every version) with a few struct packs per partition. Tagged fields are never
set. A partition's replicas and in-sync replicas are its leader alone (brokers
hold no data), none while it has no leader.
"""

from __future__ import annotations

import datetime
import struct
import uuid
from dataclasses import dataclass, field

from shoal.protocol.primitives import I16, I32, count, response_frame, string

MIN_VERSION, MAX_VERSION = 0, 13
FLEXIBLE_FROM = 9
NO_OPERATIONS = -(2**31)  # authorized operations not asked for

_PART = struct.Struct(">hii")  # error code, index, leader
_PART_EPOCH = struct.Struct(">hiii")  # ... leader epoch (v7+)
_ZERO = datetime.timedelta(0)
_MS = datetime.timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class BrokerEntry:
    node_id: int
    host: str
    port: int
    rack: str | None = None


@dataclass(frozen=True, slots=True)
class TopicEntry:
    """A topic's answer; `partitions` holds (index, error code, leader,
    leader epoch) tuples, leader -1 for none."""

    error_code: int
    name: str | None
    topic_id: uuid.UUID | None = None
    partitions: tuple[tuple[int, int, int, int], ...] = ()
    authorized_operations: int = NO_OPERATIONS


@dataclass(frozen=True, slots=True)
class MetadataAnswer:
    version: int
    brokers: tuple[BrokerEntry, ...]
    cluster_id: str | None
    controller_id: int
    topics: tuple[TopicEntry, ...]
    cluster_authorized_operations: int = NO_OPERATIONS
    throttle_time: datetime.timedelta = field(default=_ZERO)
    error_code: int = 0  # v13

    def __post_init__(self) -> None:
        if not MIN_VERSION <= self.version <= MAX_VERSION:
            raise ValueError(f"MetadataResponse v{self.version} is not written here")

    def frame(self, correlation_id: int) -> bytes:
        """Size prefix, response header and body."""
        flexible = self.version >= FLEXIBLE_FROM
        return response_frame(correlation_id, flexible, lambda out: _body(out, self, flexible))


def _body(out: list[bytes], r: MetadataAnswer, flexible: bool) -> None:
    v = r.version
    put = out.append
    tag = b"\x00" if flexible else b""
    if v >= 3:
        put(I32.pack(r.throttle_time // _MS))
    put(count(len(r.brokers), flexible))
    for b in r.brokers:
        put(I32.pack(b.node_id) + string(b.host, flexible) + I32.pack(b.port))
        if v >= 1:
            put(string(b.rack, flexible))
        put(tag)
    if v >= 2:
        put(string(r.cluster_id, flexible))
    if v >= 1:
        put(I32.pack(r.controller_id))
    put(count(len(r.topics), flexible))
    # A partition's replica arrays: its leader alone, or empty.
    one = count(1, flexible)
    none = count(0, flexible)
    offline = none if v >= 5 else b""
    for t in r.topics:
        put(I16.pack(t.error_code))
        put(string(t.name if v >= 10 else t.name or "", flexible))
        if v >= 10:
            put(t.topic_id.bytes if t.topic_id is not None else bytes(16))
        if v >= 1:
            put(b"\x00")  # is_internal: Shoal's internal state is not in topics
        put(count(len(t.partitions), flexible))
        for index, error, leader, epoch in t.partitions:
            head = (
                _PART_EPOCH.pack(error, index, leader, epoch)
                if v >= 7
                else _PART.pack(error, index, leader)
            )
            replicas = one + I32.pack(leader) if leader >= 0 else none
            put(head + replicas + replicas + offline + tag)
        if v >= 8:
            put(I32.pack(t.authorized_operations))
        put(tag)
    if 8 <= v <= 10:
        put(I32.pack(r.cluster_authorized_operations))
    if v >= 13:
        put(I16.pack(r.error_code))
    put(tag)
