"""Fetch: read committed batches; long-poll until min_bytes or max_wait.

Topics come by name (v4-v12) or by id (v13+, UNKNOWN_TOPIC_ID for an id this
broker does not know). Fetch sessions (KIP-227, v7+) live in
shoal.broker.fetch_sessions: a full fetch reads every partition it names; an
incremental one reads only the session's pending partitions, so an idle
partition costs nothing per fetch.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.fetch_sessions import (
    FINAL_EPOCH,
    INVALID_SESSION_ID,
    CachedPartition,
    FetchSession,
    Key,
    Requested,
)
from shoal.broker.handlers import Client, Deferred
from shoal.broker.isolation import aborted_transactions, read_committed
from shoal.meta.store import AbortedTxn
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.fetch_response import FetchAnswer, FetchPartition
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import AclOperation, ResourceType
from shoal.security.quotas import CONSUMER_BYTE_RATE, user_of
from shoal.storage.errors import OffsetOutOfRange, StorageError

log = logging.getLogger("shoal.fetch")
ZERO = datetime.timedelta(0)
FIRST_ID_VERSION = 13  # Fetch v13+: topics by id (KIP-516)
FIRST_SESSION_VERSION = 7
#: A fetch of 10,000 partitions is read in slices of this many, giving the
#: event loop back in between, so that it does not hold up produce requests
#: for the whole of it.
YIELD_EVERY = 2000


@dataclass(slots=True)
class _Part:
    key: Key  # (topic name or id, partition), as the request names it
    offset: int
    max_bytes: int
    current_leader_epoch: int
    topic: str = ""
    stream_id: int = -1
    error: ErrorCode = ErrorCode.none
    records: bytes = b""
    high_watermark: int = -1
    log_start: int = -1
    owned: bool = True
    topic_id: int = -1
    preferred: int = -1  # cluster: fetch from this broker instead (same rack)
    # read_committed (isolation_level 1): see shoal.broker.isolation
    committed: bool = False
    last_stable: int = -1
    aborted: Sequence[AbortedTxn] = ()

    @property
    def index(self) -> int:
        return self.key[1]

    def has_more(self) -> bool:
        """Still worth reading next time: an error to repeat, or data the
        client has not moved past yet."""
        end = self.last_stable if self.committed and self.last_stable >= 0 else self.high_watermark
        return self.error != ErrorCode.none or 0 <= self.offset < end


@dataclass(frozen=True, slots=True)
class _Limits:
    max_wait: float
    min_bytes: int
    max_bytes: int
    rack: str | None
    committed: bool  # isolation_level read_committed


async def handle_fetch(broker: Broker, client: Client, header: RequestHeader, body: Any) -> Any:
    version = header.api_version
    uses_ids = version >= FIRST_ID_VERSION

    def ref(t: Any) -> str | uuid.UUID:
        r: str | uuid.UUID = t.topic_id if uses_ids else t.topic
        return r

    # librdkafka's fetches carry no session: each names every assigned
    # partition, so this loop runs 10,000 times per fetch on a fleet consumer.
    parts: list[_Part] = []
    for t in body.topics:
        name = ref(t)
        parts.extend(
            [
                _Part(
                    (name, p.partition),
                    p.fetch_offset,
                    p.partition_max_bytes,
                    getattr(p, "current_leader_epoch", -1),
                )
                for p in t.partitions
            ]
        )
    limits = _limits(broker, client, body)
    if version < FIRST_SESSION_VERSION:
        return Deferred(_full(broker, client, header, parts, limits, None))
    session_id, epoch = int(body.session_id), int(body.session_epoch)
    if epoch == FINAL_EPOCH and session_id == INVALID_SESSION_ID:
        return Deferred(_full(broker, client, header, parts, limits, None))
    requested = [Requested(p.key, p.offset, p.max_bytes, p.current_leader_epoch) for p in parts]
    forgotten = [(ref(t), i) for t in body.forgotten_topics_data or () for i in t.partitions]
    try:
        ctx = broker.fetch_sessions.context(
            session_id, epoch, uses_ids, requested, forgotten, time.monotonic() * 1000
        )
    except KafkaError as exc:
        log.info("fetch session %d from %s: %s", body.session_id, client, exc)
        return _error_response(header, exc.code)
    if ctx.session is None or ctx.full:
        return Deferred(_full(broker, client, header, parts, limits, ctx.session))
    return Deferred(_incremental(broker, client, header, ctx.session, limits))


def _limits(broker: Broker, client: Client, body: Any) -> _Limits:
    cap = int(broker.config["fetch.max.wait.cap.ms"])
    max_wait = min(max(body.max_wait.total_seconds() * 1000, 0), cap) / 1000
    max_bytes = min(
        int(getattr(body, "max_bytes", 0x7FFFFFFF)), int(broker.config["fetch.response.max.bytes"])
    )
    quota_cap = broker.quotas.max_bytes_in_window(
        CONSUMER_BYTE_RATE, user_of(client.principal), client.client_id or ""
    )
    if quota_cap is not None:  # over it, the connection throttles after the fact
        max_bytes = min(max_bytes, quota_cap)
    rack = getattr(body, "rack_id", None) or None
    return _Limits(max_wait, max(int(body.min_bytes), 0), max_bytes, rack, read_committed(body))


def _resolve(
    broker: Broker, client: Client, header: RequestHeader, parts: list[_Part], limits: _Limits
) -> None:
    """Topic, ownership and leader epoch of each partition; errors per partition."""
    rack = limits.rack
    by_name: dict[str | uuid.UUID, Any] = {}
    for p in parts:
        ref = p.key[0]
        if ref not in by_name:
            by_name[ref] = (
                broker.topics.get(ref) if isinstance(ref, str) else broker.topics.by_id(ref)
            )
    # one decision (and at most one denial logged) per topic, as Kafka
    denied = {
        t.name
        for t in by_name.values()
        if t is not None
        and not broker.authorize(client, AclOperation.READ, ResourceType.TOPIC, t.name)
    }
    cluster = broker.cluster
    committed = limits.committed
    last_ref: object = None
    topic = None
    for p in parts:
        ref, index = p.key
        if ref is not last_ref:  # grouped by topic: one lookup (a UUID hash from v13) per run
            topic, last_ref = by_name[ref], ref
        p.stream_id = -1
        p.committed = committed
        try:
            if topic is None:
                if isinstance(ref, str):
                    p.topic = ref
                    raise KafkaError(ErrorCode.unknown_topic_or_partition)
                raise KafkaError(ErrorCode.unknown_topic_id)  # v13+, the zero id included
            p.topic = topic.name
            if denied and topic.name in denied:
                raise KafkaError(ErrorCode.topic_authorization_failed)
            records = topic.partitions
            if not 0 <= index < len(records):
                raise KafkaError(ErrorCode.unknown_topic_or_partition)
            rec = records[index]
            p.topic_id = topic.id
            if cluster is not None:
                p.owned = cluster.owns(rec)
                # Every broker can read every stream; a non-owner serves only
                # consumers it was chosen for (same rack, KIP-392).
                # read_committed needs the owner's last stable offset.
                if not p.owned and (rack is None or rack != broker.node.rack or p.committed):
                    raise KafkaError(ErrorCode.not_leader_or_follower)
                if p.owned and header.api_version >= 11 and not p.committed:
                    p.preferred = cluster.read_replica(rec.owner, rack, f"{p.topic}-{index}")
            if p.current_leader_epoch >= 0:
                broker.check_leader_epoch(rec, p.current_leader_epoch)
            if p.preferred < 0:
                p.stream_id = rec.stream_id
        except KafkaError as exc:
            p.error = exc.code


async def _full(
    broker: Broker,
    client: Client,
    header: RequestHeader,
    parts: list[_Part],
    limits: _Limits,
    session: FetchSession | None,
) -> Any:
    """Every requested partition, answered; a new session remembers them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.max_wait
    large = int(broker.config["fetch.sessionless.pace.partitions"])
    paced = session is None and len(parts) >= large
    if paced:
        await _pace(broker, client, deadline)
    _resolve(broker, client, header, parts, limits)
    if session is not None:
        # From here on, commits mark the session's partitions pending.
        session.take_pending()
        _bind(broker, session, parts)
    while True:
        total = await _read_all(broker, client, parts, limits.max_bytes)
        remaining = deadline - loop.time()
        if total >= limits.min_bytes or remaining <= 0 or any(p.error for p in parts):
            break
        waiter = broker.engine.watch_any(p.stream_id for p in parts)
        if any(not p.owned and p.stream_id >= 0 for p in parts):
            # Read replicas learn of commits by polling the metadata store.
            remaining = min(remaining, max(broker.engine.config.reader_refresh_ms, 10) / 1000)
        if waiter is None:
            await asyncio.sleep(remaining)
            continue
        try:
            await asyncio.wait_for(waiter, remaining)
        except TimeoutError:
            pass  # wait_for cancelled the waiter: the streams sweep it out
    if session is None:
        if paced:
            client.state.large_fetch_answered = loop.time()
        return _response(header, parts, INVALID_SESSION_ID)
    _remember(session, parts, parts)
    return _response(header, parts, session.id)


async def _pace(broker: Broker, client: Client, deadline: float) -> None:
    """Hold a large fetch without a session until fetch.sessionless.pace.ms
    after the connection's previous one was answered (never past its max
    wait). librdkafka has no fetch sessions: its consumer names every
    assigned partition in each fetch and sends the next as soon as an answer
    arrives, and with records trickling into a few of 10,000 partitions
    every fetch is answered at once. Each costs the broker a few µs per
    partition, so one consumer would keep the event loop busy with fetches
    at any record rate, and produce requests wait behind them. Held, the
    consumer's records arrive at most this much later, more per answer, and
    its share of the loop is bounded."""
    pace = int(broker.config["fetch.sessionless.pace.ms"]) / 1000
    loop = asyncio.get_running_loop()
    hold = min(client.state.large_fetch_answered + pace, deadline) - loop.time()
    if hold > 0:
        await asyncio.sleep(hold)


async def _incremental(
    broker: Broker,
    client: Client,
    header: RequestHeader,
    session: FetchSession,
    limits: _Limits,
) -> Any:
    """Only partitions with news: those the request changed or whose stream
    advanced since the session last looked (its pending set)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.max_wait
    looked: dict[Key, _Part] = {}
    answered: dict[Key, _Part] = {}
    polled: set[Key] = set()  # read replicas: no commit notifications, so re-read
    woken: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    session.wake = wake
    try:
        while True:
            if woken.done():
                woken = loop.create_future()
            keys = set(session.take_pending()) | polled
            now = [_cached_part(k, c) for k in keys if (c := session.partitions.get(k)) is not None]
            _resolve(broker, client, header, now, limits)
            _bind(broker, session, now)
            budget = limits.max_bytes - sum(len(p.records) for p in answered.values())
            await _read_all(broker, client, now, budget)
            for p in now:
                looked[p.key] = p
                cached = session.partitions.get(p.key)
                if cached is not None and (
                    p.records
                    or p.error
                    or p.high_watermark != cached.high_watermark
                    or p.log_start != cached.log_start
                    or p.preferred >= 0
                ):
                    answered[p.key] = p
                if not p.owned and p.stream_id >= 0:
                    polled.add(p.key)
            total = sum(len(p.records) for p in answered.values())
            remaining = deadline - loop.time()
            if (
                total >= limits.min_bytes
                or remaining <= 0
                or any(p.error for p in answered.values())
                or broker.fetch_sessions.get(session.id) is not session
            ):
                break
            if session.pending:
                continue  # news arrived while reading
            if polled:
                remaining = min(remaining, max(broker.engine.config.reader_refresh_ms, 10) / 1000)
            try:
                await asyncio.wait_for(asyncio.shield(woken), remaining)
            except TimeoutError:
                pass
    finally:
        if session.wake is wake:
            session.wake = None
    parts = list(answered.values())
    _remember(session, parts, looked.values())
    return _response(header, parts, session.id)


def _cached_part(key: Key, c: CachedPartition) -> _Part:
    return _Part(key, c.fetch_offset, c.max_bytes, c.leader_epoch)


def _bind(broker: Broker, session: FetchSession, parts: Iterable[_Part]) -> None:
    for p in parts:
        broker.fetch_sessions.bind(session, p.key, p.stream_id, not p.owned)


def _remember(session: FetchSession, answered: Iterable[_Part], looked: Iterable[_Part]) -> None:
    """What the client now knows; partitions with more to say stay pending."""
    for p in answered:
        cached = session.partitions.get(p.key)
        if cached is not None:
            cached.high_watermark, cached.log_start = p.high_watermark, p.log_start
    for p in looked:
        if p.has_more() or (not p.owned and p.stream_id >= 0):
            session.keep(p.key)


async def _read_all(broker: Broker, client: Client, parts: list[_Part], max_bytes: int) -> int:
    """Read every partition within the response budget. The first partition
    with data may exceed the budget by one batch (KIP-74), so a batch larger
    than the limits still gets through."""
    total = 0
    engine = broker.engine
    await engine.open_all(p.stream_id for p in parts if p.stream_id >= 0 and p.owned)
    for i, p in enumerate(parts):
        if i and not i % YIELD_EVERY:
            await asyncio.sleep(0)  # let produce requests in between
        if p.stream_id < 0:
            continue
        budget = min(p.max_bytes, max_bytes - total)
        try:
            if budget <= 0 and total > 0:
                p.records = b""
                if p.owned:
                    known = engine.position(p.stream_id)
                    if known is None:
                        p.log_start, p.high_watermark = await engine.bounds(p.stream_id)
                        p.last_stable = await engine.last_stable_offset(p.stream_id)
                    else:
                        p.log_start, p.high_watermark, p.last_stable = known
                continue
            if p.owned and (known := engine.position(p.stream_id)) is not None:
                start, hw, lso = known
                if start <= p.offset <= hw and p.offset >= (lso if p.committed else hw):
                    # Nothing new, as for most partitions of a fleet
                    # consumer's fetch. read_nowait would say the same, but
                    # its ReadResult and the bookkeeping below cost a third
                    # more of a 10,000-partition fetch (measured).
                    p.log_start, p.high_watermark, p.last_stable = known
                    p.records = b""
                    continue
            # Only the first partition with data may overshoot; the others
            # read nothing they could not send. A tail in the LogCache is
            # read without a coroutine.
            result = (
                engine.read_nowait(p.stream_id, p.offset, max(budget, 1), total == 0, p.committed)
                if p.owned
                else None
            )
            if result is None:
                result = await _read(broker, p, max(budget, 1), at_least_one=total == 0)
        except OffsetOutOfRange as exc:
            log.info(
                "fetch %s-%d at %d from %s: out of range [%d, %d]",
                p.topic,
                p.index,
                p.offset,
                client,
                exc.start,
                exc.end,
            )
            p.error = ErrorCode.offset_out_of_range
            p.log_start, p.high_watermark = exc.start, exc.end
            continue
        except StorageError as exc:
            log.warning(
                "fetch %s-%d at %d from %s failed: %s", p.topic, p.index, p.offset, client, exc
            )
            p.error = ErrorCode.kafka_storage_error
            continue
        p.records = b"".join(result.chunks)
        total += len(p.records)
        if broker.cluster is not None and p.records:
            broker.cluster.record(p.topic_id, p.index, 0, len(p.records))
        p.high_watermark, p.log_start = result.high_watermark, result.log_start_offset
        p.last_stable = result.last_stable_offset
        if p.committed and p.records:
            p.aborted = await broker.engine.aborted_between(p.stream_id, p.offset, p.last_stable)
    return total


async def _read(broker: Broker, p: _Part, budget: int, at_least_one: bool) -> Any:
    if not p.owned:
        return await broker.engine.read_only(p.stream_id, p.offset, budget, at_least_one)
    return await broker.engine.read(p.stream_id, p.offset, budget, at_least_one, p.committed)


def _response(header: RequestHeader, parts: list[_Part], session_id: int) -> FetchAnswer:
    """Written straight to bytes (shoal.protocol.fetch_response): librdkafka
    names every assigned partition in every fetch, so a fleet consumer's
    answer lists thousands of quiet partitions, and kio entities for them
    were a third of the event loop's time."""
    by_topic: dict[str | uuid.UUID, list[FetchPartition]] = {}
    last_ref: object = None
    answers: list[FetchPartition] = []
    for p in parts:
        ref, index = p.key
        if ref is not last_ref:  # a request's partitions come grouped by topic (one object)
            answers = by_topic.setdefault(ref, [])
            last_ref = ref
        hw = p.high_watermark
        answers.append(
            FetchPartition(
                index,
                p.error,
                hw,
                p.last_stable if p.last_stable >= 0 else hw,
                p.log_start,
                aborted_transactions(p.committed, p.aborted),
                p.preferred,
                p.records,
            )
        )
    return FetchAnswer(
        header.api_version,
        ErrorCode.none,
        session_id,
        tuple((ref, tuple(ps)) for ref, ps in by_topic.items()),
        ZERO,
    )


def _error_response(header: RequestHeader, code: ErrorCode) -> FetchAnswer:
    """A session error answers the whole request, with no partitions."""
    return FetchAnswer(header.api_version, code, INVALID_SESSION_ID, (), ZERO)
