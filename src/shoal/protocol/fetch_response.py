"""FetchResponse v4-v17 written straight to bytes.

librdkafka does not use fetch sessions (KIP-227): every Fetch names every
partition a consumer is assigned and every answer lists each of them, nearly
all empty in a fleet of quiet partitions. Building and serialising kio
entities for 10,000 such entries was about a third of the broker's event-loop
time. This writes the same bytes (tests/test_fetch_response.py checks them
against kio's for every version) with one struct pack per partition that has
no aborted transactions, the records appended as they are (joined once, with
the rest of the frame). Tagged fields are never set (diverging_epoch,
current_leader, snapshot_id per partition, node_endpoints, v12+): Shoal
neither truncates logs by leader epoch nor answers NOT_LEADER with a new
leader here.
"""

from __future__ import annotations

import datetime
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from shoal.protocol.primitives import I32, count, response_frame, string, uvarint

MIN_VERSION, MAX_VERSION = 4, 17
FLEXIBLE_FROM = 12
TOPIC_IDS_FROM = 13  # topics named by id (KIP-516), not by name
SESSION_FROM = 7  # top-level error code and session id
LOG_START_FROM = 5
PREFERRED_REPLICA_FROM = 11

_Put = Callable[[bytes], None]
_ZERO = datetime.timedelta(0)
_MS = datetime.timedelta(milliseconds=1)
_TOP = struct.Struct(">hi")  # error code, session id
_ABORTED = struct.Struct(">qq")  # producer id, first offset
_ABORTED_FLEXIBLE = struct.Struct(">qqx")  # ... and its (empty) tagged fields
# A partition's fixed fields: index, error, high watermark, last stable offset
# (and log start offset from v5). Before its aborted transactions.
_HEAD_V4 = struct.Struct(">ihqq")
_HEAD_V5 = struct.Struct(">ihqqq")
# The same with no aborted-transaction entries (null or empty, the common
# case), packed in one go up to the records: ... aborted count (then, from
# v11, the preferred read replica) and, classic, the records' length.
_QUIET_V4 = struct.Struct(">ihqqii")
_QUIET_V5 = struct.Struct(">ihqqqii")
_QUIET_V11 = struct.Struct(">ihqqqiii")
_QUIET_V12 = struct.Struct(">ihqqqBi")  # count as a one-byte varint (0 null, 1 empty)
_EMPTY_FLEXIBLE = b"\x01\x00"  # records of length 0, the partition's tagged fields
_NULL_FLEXIBLE = b"\x00\x00"  # null records, the partition's tagged fields


class FetchPartition(NamedTuple):
    """One partition's answer. A tuple rather than a frozen dataclass: the
    broker builds one per partition per fetch (10,000 for a fleet consumer
    on librdkafka) and a frozen dataclass's __init__ costs about five times
    as much. `aborted` is None for read_uncommitted, else (producer id,
    first offset) pairs; `records` None is written as null."""

    partition_index: int
    error_code: int
    high_watermark: int
    last_stable_offset: int = -1
    log_start_offset: int = -1
    aborted: tuple[tuple[int, int], ...] | None = None
    preferred_read_replica: int = -1
    records: bytes | None = b""


@dataclass(frozen=True, slots=True)
class FetchAnswer:
    """A fetch response of one version: (topic, partitions) in request order;
    the topic is its name, or its id from v13."""

    version: int
    error_code: int
    session_id: int
    responses: tuple[tuple[str | uuid.UUID, tuple[FetchPartition, ...]], ...]
    throttle_time: datetime.timedelta = field(default=_ZERO)

    def __post_init__(self) -> None:
        if not MIN_VERSION <= self.version <= MAX_VERSION:
            raise ValueError(f"FetchResponse v{self.version} is not written here")

    def frame(self, correlation_id: int) -> bytes:
        """Size prefix, response header and body."""
        flexible = self.version >= FLEXIBLE_FROM
        return response_frame(correlation_id, flexible, lambda out: _body(out, self, flexible))


def _body(out: list[bytes], r: FetchAnswer, flexible: bool) -> None:
    v = r.version
    put = out.append
    put(I32.pack(r.throttle_time // _MS))
    if v >= SESSION_FROM:
        put(_TOP.pack(r.error_code, r.session_id))
    put(count(len(r.responses), flexible))
    for ref, parts in r.responses:
        if v >= TOPIC_IDS_FROM:
            put(ref.bytes if isinstance(ref, uuid.UUID) else bytes(16))
        else:
            put(string(ref if isinstance(ref, str) else "", flexible))
        put(count(len(parts), flexible))
        if flexible:
            _flexible_partitions(put, parts)
            put(b"\x00")  # topic's tagged fields
        else:
            _classic_partitions(put, parts, v)
    if flexible:
        put(b"\x00")  # node_endpoints never set


def _flexible_partitions(put: _Put, parts: tuple[FetchPartition, ...]) -> None:
    """v12+: compact arrays and bytes, tagged fields after each partition."""
    quiet = _QUIET_V12.pack
    for index, error, hw, lso, start, aborted, preferred, records in parts:
        if aborted:
            put(_HEAD_V5.pack(index, error, hw, lso, start))
            put(uvarint(len(aborted) + 1))
            put(b"".join([_ABORTED_FLEXIBLE.pack(pid, first) for pid, first in aborted]))
            put(I32.pack(preferred))
        else:
            put(quiet(index, error, hw, lso, start, aborted is not None, preferred))
        if records:
            put(uvarint(len(records) + 1))
            put(records)
            put(b"\x00")
        else:
            put(_EMPTY_FLEXIBLE if records is not None else _NULL_FLEXIBLE)


def _classic_partitions(put: _Put, parts: tuple[FetchPartition, ...], v: int) -> None:
    """v4-v11: int32 counts and lengths, -1 for null."""
    head = _HEAD_V5 if v >= LOG_START_FROM else _HEAD_V4
    with_start = v >= LOG_START_FROM
    with_preferred = v >= PREFERRED_REPLICA_FROM
    quiet = (_QUIET_V11 if with_preferred else _QUIET_V5 if with_start else _QUIET_V4).pack
    for index, error, hw, lso, start, aborted, preferred, records in parts:
        size = -1 if records is None else len(records)
        if aborted:
            put(
                head.pack(index, error, hw, lso, start)
                if with_start
                else head.pack(index, error, hw, lso)
            )
            put(I32.pack(len(aborted)))
            put(b"".join([_ABORTED.pack(pid, first) for pid, first in aborted]))
            if with_preferred:
                put(I32.pack(preferred))
            put(I32.pack(size))
        else:
            n = -1 if aborted is None else 0
            if with_preferred:
                put(quiet(index, error, hw, lso, start, n, preferred, size))
            elif with_start:
                put(quiet(index, error, hw, lso, start, n, size))
            else:
                put(quiet(index, error, hw, lso, n, size))
        if records:
            put(records)
