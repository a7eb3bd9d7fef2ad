"""The classic consumer protocol's embedded encodings: the subscription a
member sends in JoinGroup and the assignment it receives in SyncGroup
(ConsumerProtocolSubscription / ConsumerProtocolAssignment, big-endian,
not flexible).

The coordinator reads them when a classic group converts to a consumer group
or a classic member joins one (its topics, the partitions it still owns, its
rack), and writes them when it answers such a member's SyncGroup or describes
a consumer group as DescribeGroups does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class MalformedProtocol(ValueError):
    """Embedded protocol bytes that do not parse."""


@dataclass(frozen=True, slots=True)
class Subscription:
    version: int
    topics: tuple[str, ...]
    owned: dict[str, frozenset[int]] = field(default_factory=dict)  # v1+
    rack_id: str | None = None  # v3+


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def unpack(self, fmt: str) -> tuple[int, ...]:
        try:
            out = struct.unpack_from(fmt, self.data, self.pos)
        except struct.error as exc:
            raise MalformedProtocol(str(exc)) from None
        self.pos += struct.calcsize(fmt)
        return out

    def string(self, nullable: bool = False) -> str | None:
        (n,) = self.unpack(">h")
        if n < 0:
            if nullable:
                return None
            raise MalformedProtocol("null string")
        if self.pos + n > len(self.data):
            raise MalformedProtocol("string past the end")
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise MalformedProtocol("string is not UTF-8") from None

    def count(self) -> int:
        (n,) = self.unpack(">i")
        if n > len(self.data):
            raise MalformedProtocol(f"array of {n} in {len(self.data)} bytes")
        return max(n, 0)

    def skip_bytes(self) -> None:
        (n,) = self.unpack(">i")
        if n > 0:
            if self.pos + n > len(self.data):
                raise MalformedProtocol("bytes past the end")
            self.pos += n

    def partitions(self) -> dict[str, frozenset[int]]:
        out: dict[str, frozenset[int]] = {}
        for _ in range(self.count()):
            topic = self.string()
            assert topic is not None
            n = self.count()
            parts = self.unpack(f">{n}i") if n else ()
            out[topic] = out.get(topic, frozenset()) | frozenset(parts)
        return {t: ps for t, ps in out.items() if ps}

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


def read_subscription(data: bytes) -> Subscription:
    """Any version; fields of later versions are read when present (clients
    may send a newer version than the one they announce to old brokers)."""
    r = _Reader(data)
    (version,) = r.unpack(">h")
    topics = []
    for _ in range(r.count()):
        topic = r.string()
        assert topic is not None
        topics.append(topic)
    r.skip_bytes()  # user data
    owned: dict[str, frozenset[int]] = {}
    rack = None
    if version >= 1 and not r.done:
        owned = r.partitions()
        if version >= 2 and not r.done:
            r.unpack(">i")  # generation id
            if version >= 3 and not r.done:
                rack = r.string(nullable=True)
    return Subscription(version, tuple(topics), owned, rack)


def read_assignment(data: bytes) -> dict[str, frozenset[int]]:
    """The partitions of a ConsumerProtocolAssignment (any version); empty
    bytes (a member that has not synced yet) are no partitions."""
    if not data:
        return {}
    r = _Reader(data)
    r.unpack(">h")
    return r.partitions()


def parse_subscription(data: bytes) -> list[str] | None:
    """Topic names from a ConsumerProtocolSubscription, None if malformed."""
    try:
        return list(read_subscription(data).topics)
    except MalformedProtocol:
        return None


def _string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def encode_subscription(topics: Iterable[str]) -> bytes:
    """ConsumerProtocolSubscription v0 (topics, no user data): how DescribeGroups
    shows a consumer-protocol member's subscription."""
    names = list(topics)
    return struct.pack(">hi", 0, len(names)) + b"".join(map(_string, names)) + struct.pack(">i", -1)


def encode_assignment(assignment: Mapping[str, Iterable[int]], version: int = 0) -> bytes:
    """ConsumerProtocolAssignment without user data, at `version` (0 to 3:
    the same fields; Kafka answers a classic member at its subscription's
    version)."""
    out = [struct.pack(">hi", max(0, min(version, 3)), len(assignment))]
    for topic in sorted(assignment):
        parts = sorted(assignment[topic])
        out.append(_string(topic) + struct.pack(f">i{len(parts)}i", len(parts), *parts))
    out.append(struct.pack(">i", -1))
    return b"".join(out)
