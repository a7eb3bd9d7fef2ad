"""Fetch: read committed batches; long-poll until min_bytes or max_wait."""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, field
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client, Deferred
from shoal.broker.isolation import aborted_transactions, read_committed
from shoal.meta.store import AbortedTxn
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import AclOperation, ResourceType
from shoal.security.quotas import CONSUMER_BYTE_RATE, user_of
from shoal.storage.errors import OffsetOutOfRange, StorageError

log = logging.getLogger("shoal.fetch")
ZERO = datetime.timedelta(0)


@dataclass(slots=True)
class _Part:
    topic: str
    index: int
    offset: int
    max_bytes: int
    current_leader_epoch: int
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
    aborted: list[AbortedTxn] = field(default_factory=list)


async def handle_fetch(broker: Broker, client: Client, header: RequestHeader, body: Any) -> Any:
    parts = [
        _Part(
            t.topic,
            p.partition,
            p.fetch_offset,
            p.partition_max_bytes,
            getattr(p, "current_leader_epoch", -1),
            committed=read_committed(body),
        )
        for t in body.topics
        for p in t.partitions
    ]
    rack = getattr(body, "rack_id", None) or None
    # one decision (and at most one denial logged) per topic, as Kafka
    denied = {
        t
        for t in {p.topic for p in parts}
        if not broker.authorize(client, AclOperation.READ, ResourceType.TOPIC, t)
    }
    for p in parts:
        try:
            if p.topic in denied:
                raise KafkaError(ErrorCode.topic_authorization_failed)
            topic, rec = broker.partition(p.topic, p.index)
            p.owned = broker.owns(rec)
            p.topic_id = topic.id
            if broker.cluster is not None:
                # Every broker can read every stream; a non-owner serves only
                # consumers it was chosen for (same rack, KIP-392).
                # read_committed needs the owner's last stable offset.
                if not p.owned and (rack is None or rack != broker.node.rack or p.committed):
                    raise KafkaError(ErrorCode.not_leader_or_follower)
                if p.owned and header.api_version >= 11 and not p.committed:
                    p.preferred = broker.cluster.read_replica(
                        rec.owner, rack, f"{p.topic}-{p.index}"
                    )
            broker.check_leader_epoch(rec, p.current_leader_epoch)
            if p.preferred < 0:
                p.stream_id = rec.stream_id
        except KafkaError as exc:
            p.error = exc.code
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
    min_bytes = max(int(body.min_bytes), 0)
    return Deferred(_run(broker, client, header, parts, max_wait, min_bytes, max_bytes))


async def _run(
    broker: Broker,
    client: Client,
    header: RequestHeader,
    parts: list[_Part],
    max_wait: float,
    min_bytes: int,
    max_bytes: int,
) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    while True:
        total = await _read_all(broker, client, parts, max_bytes)
        remaining = deadline - loop.time()
        if total >= min_bytes or remaining <= 0 or any(p.error for p in parts):
            break
        waiters = [w for p in parts if (w := broker.engine.watch(p.stream_id)) is not None]
        if any(not p.owned and p.stream_id >= 0 for p in parts):
            # Read replicas learn of commits by polling the metadata store.
            remaining = min(remaining, max(broker.engine.config.reader_refresh_ms, 10) / 1000)
        if not waiters:
            await asyncio.sleep(remaining)
            continue
        _done, pending = await asyncio.wait(
            waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        for w in pending:
            w.cancel()
    return _response(header, parts)


async def _read_all(broker: Broker, client: Client, parts: list[_Part], max_bytes: int) -> int:
    """Read every partition within the response budget. The first partition
    with data may exceed the budget by one batch (KIP-74), so a batch larger
    than the limits still gets through."""
    total = 0
    for p in parts:
        if p.stream_id < 0:
            continue
        budget = min(p.max_bytes, max_bytes - total)
        try:
            if budget <= 0 and total > 0:
                p.records = b""
                if p.owned:
                    p.log_start, p.high_watermark = await broker.engine.bounds(p.stream_id)
                    p.last_stable = await broker.engine.last_stable_offset(p.stream_id)
                continue
            # Only the first partition with data may overshoot; the others
            # read nothing they could not send.
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


def _response(header: RequestHeader, parts: list[_Part]) -> Any:
    s = Schema(1, header.api_version)
    by_topic: dict[str, list[Any]] = {}
    for p in parts:
        by_topic.setdefault(p.topic, []).append(
            s.PartitionData(
                partition_index=p.index,
                error_code=p.error,
                high_watermark=p.high_watermark,
                last_stable_offset=p.last_stable if p.last_stable >= 0 else p.high_watermark,
                log_start_offset=p.log_start,
                aborted_transactions=aborted_transactions(s, p.committed, p.aborted),
                preferred_read_replica=p.preferred,
                records=p.records,
            )
        )
    return s.FetchResponse(
        throttle_time=ZERO,
        error_code=ErrorCode.none,
        session_id=0,
        responses=tuple(
            s.FetchableTopicResponse(topic=name, partitions=tuple(ps))
            for name, ps in by_topic.items()
        ),
    )
