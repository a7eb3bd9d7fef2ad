"""Produce: validate batches, append them in request order, answer after commit."""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client, Deferred
from shoal.broker.topics import Topic
from shoal.config import TOPIC_KEYS
from shoal.config_catalog import COMPRESSION_CODECS
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.protocol.recompress import recompress, timestamp_violations
from shoal.protocol.records import BatchRejected, LargeBatch, ValidatedBatch, validate_produce
from shoal.security.acls import AclOperation, ResourceType
from shoal.storage.errors import AppendTimeout, Fenced, StorageError
from shoal.storage.producers import SequenceError

log = logging.getLogger("shoal.produce")
#: Decompressed bytes a batch may take on the event loop (about a millisecond);
#: beyond, it is checked in a worker thread.
INLINE_DECOMPRESS = 1 << 20
ZERO = datetime.timedelta(0)

# (topic, partition, base-offset future or error, log start offset, log append time)
_Slot = tuple[str, int, "asyncio.Future[int] | ErrorCode | KafkaError", int, int | None]


async def handle_produce(broker: Broker, client: Client, header: RequestHeader, body: Any) -> Any:
    slots: list[_Slot] = []
    for td in body.topic_data:
        refused: ErrorCode | None = None
        if body.transactional_id is not None:
            # Transactions come with their own issue; say so instead of storing
            # batches whose markers would never arrive.
            refused = ErrorCode.transactional_id_authorization_failed
        elif not broker.authorize(client, AclOperation.WRITE, ResourceType.TOPIC, td.name):
            # one decision (and at most one denial logged) per topic, as Kafka
            refused = ErrorCode.topic_authorization_failed
        for pd in td.partition_data:
            if refused is not None:
                slots.append((td.name, pd.index, refused, -1, None))
            else:
                slots.append(
                    await _append(broker, client, header.api_version, td.name, pd.index, pd.records)
                )
    if body.acks == 0:
        for slot in slots:
            fut = slot[2]
            if isinstance(fut, asyncio.Future):
                fut.add_done_callback(_swallow)
        return None
    timeout = max(body.timeout.total_seconds(), 0.0)
    return Deferred(_respond(broker, client, header, slots, timeout))


async def _append(
    broker: Broker,
    client: Client,
    api_version: int,
    topic_name: str,
    index: int,
    records: bytes | None,
) -> _Slot:
    try:
        topic, part = broker.partition(topic_name, index)
        if broker.mirrors and topic_name in broker.mirrors:
            forward = broker.forwarders.get(topic_name)
            if forward is not None and records is not None:
                # Write-through: checked as any batch, then the link forwards it.
                validate_produce(
                    records, broker.topics.max_message_bytes(topic), api_version=api_version
                )
                forwarded = asyncio.ensure_future(forward(topic_name, index, bytes(records)))
                return topic_name, index, forwarded, -1, None
            raise KafkaError(
                ErrorCode.invalid_request,
                f"topic {topic_name!r} is a read-only mirror of link "
                f"{broker.mirrors[topic_name]!r}: produce to the source cluster, or promote "
                f"it first (shoal link promote {topic_name})",
            )
        broker.check_owner(part)
        if records is None:
            raise KafkaError(ErrorCode.corrupt_message, "null record set")
        log_append = broker.topics.effective(topic, "message.timestamp.type") == "LogAppendTime"
        try:
            batch = _prepare(broker, topic, records, api_version, log_append, INLINE_DECOMPRESS)
        except LargeBatch:
            # A few kilobytes can decompress to tens of megabytes (tens of
            # milliseconds): such a batch is checked, and recompressed, in a
            # worker thread (cramjam releases the GIL), not on the event loop.
            batch = await asyncio.to_thread(
                _prepare, broker, topic, records, api_version, log_append, None
            )
        append_time = int(time.time() * 1000) if log_append else None
        fut = await broker.engine.append(part.stream_id, [batch], part.leader_epoch, append_time)
        broker.record_traffic(topic, part, len(records), 0)
        start, _end = await broker.engine.bounds(part.stream_id)
        return topic_name, index, fut, start, append_time
    except KafkaError as exc:
        log.info(
            "produce to %s-%d from %s rejected: %s (%s)",
            topic_name,
            index,
            client,
            exc.code.name,
            exc,
        )
        return topic_name, index, exc, -1, None
    except SequenceError as exc:
        log.info("produce to %s-%d from %s rejected: %s", topic_name, index, client, exc)
        return topic_name, index, ErrorCode[exc.code], -1, None
    except StorageError as exc:
        log.warning("produce to %s-%d from %s failed: %s", topic_name, index, client, exc)
        return topic_name, index, ErrorCode.not_leader_or_follower, -1, None


def _prepare(
    broker: Broker,
    topic: Topic,
    records: bytes,
    api_version: int,
    log_append: bool,
    inline_limit: int | None,
) -> ValidatedBatch:
    """Everything that reads inside the records: Kafka's checks, the
    timestamp window and recompression to the topic's codec. Synchronous and
    touching no shared mutable state, so it may run in a worker thread; with
    `inline_limit` it raises LargeBatch instead of decompressing past it (the
    later steps then decompress no more than that either)."""
    batch = validate_produce(
        records,
        broker.topics.max_message_bytes(topic),
        api_version=api_version,
        compacted="compact" in str(broker.topics.effective(topic, "cleanup.policy")),
        log_append_time=log_append,
        inline_limit=inline_limit,
    )
    if batch.header.is_transactional:
        # Kafka's answer to transactional records without a transactional id
        raise KafkaError(
            ErrorCode.transactional_id_authorization_failed,
            "transactional batch in a produce request without a transactional id",
        )
    if not log_append:
        _check_timestamps(broker, topic, batch)
    return _to_topic_codec(broker, topic, batch)


def _check_timestamps(broker: Broker, topic: Topic, batch: ValidatedBatch) -> None:
    """message.timestamp.before/after.max.ms on a CreateTime topic, as Kafka:
    INVALID_TIMESTAMP naming each record outside the window."""
    bad = timestamp_violations(
        batch,
        int(time.time() * 1000),
        int(broker.topics.effective(topic, "message.timestamp.before.max.ms")),
        int(broker.topics.effective(topic, "message.timestamp.after.max.ms")),
    )
    if bad:
        raise BatchRejected(
            ErrorCode.invalid_timestamp,
            f"{len(bad)} record(s) with a timestamp out of range: {bad[0][1]}",
            tuple(bad),
        )


def _to_topic_codec(broker: Broker, topic: Topic, batch: ValidatedBatch) -> ValidatedBatch:
    """Recompress to the topic's compression.type unless it is `producer` or
    the batch is in that codec already (Kafka keeps those as they are)."""
    wanted = str(broker.topics.effective(topic, "compression.type"))
    if wanted == "producer":
        return batch
    codec = COMPRESSION_CODECS[wanted]
    if batch.header.compression == codec:
        return batch
    level_key = f"compression.{wanted}.level"
    level = int(broker.topics.effective(topic, level_key)) if level_key in TOPIC_KEYS else None
    out = recompress(batch, codec, level)
    limit = broker.topics.max_message_bytes(topic)
    if len(out.data) > limit:
        # Kafka checks the batch it stores, after recompression
        raise KafkaError(
            ErrorCode.message_too_large,
            f"batch of {len(out.data)} bytes in {wanted} exceeds max.message.bytes {limit}",
        )
    return out


async def _respond(
    broker: Broker, client: Client, header: RequestHeader, slots: list[_Slot], timeout: float
) -> Any:
    pending = [s[2] for s in slots if isinstance(s[2], asyncio.Future)]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    s = Schema(0, header.api_version)
    by_topic: dict[str, list[Any]] = {}
    for topic_name, index, fut, start, append_time in slots:
        base = -1
        message: str | None = None
        record_errors: tuple[Any, ...] = ()
        if isinstance(fut, asyncio.Future):
            code = _outcome(fut, topic_name, index, client)
            if code == ErrorCode.none:
                base = fut.result()
        elif isinstance(fut, KafkaError):
            code, message = fut.code, str(fut)
            if isinstance(fut, BatchRejected) and s.has(
                "PartitionProduceResponse", "record_errors"
            ):
                record_errors = tuple(
                    s.BatchIndexAndErrorMessage(batch_index=i, batch_index_error_message=m)
                    for i, m in fut.record_errors
                )
        else:
            code = fut
        by_topic.setdefault(topic_name, []).append(
            s.PartitionProduceResponse(
                index=index,
                error_code=code,
                base_offset=base,
                log_append_time=(
                    datetime.datetime.fromtimestamp(append_time / 1000, datetime.UTC)
                    if append_time is not None and code == ErrorCode.none
                    else None
                ),
                log_start_offset=start,
                record_errors=record_errors,
                error_message=message,
            )
        )
    return s.ProduceResponse(
        responses=tuple(
            s.TopicProduceResponse(name=name, partition_responses=tuple(parts))
            for name, parts in by_topic.items()
        ),
        throttle_time=ZERO,
    )


def _outcome(fut: asyncio.Future[int], topic: str, index: int, client: Client) -> ErrorCode:
    if not fut.done():
        # Still uploading: the client retries; the data may still commit, as
        # with any Kafka request that times out.
        log.warning("produce to %s-%d from %s timed out waiting for commit", topic, index, client)
        fut.add_done_callback(_swallow)
        return ErrorCode.request_timed_out
    exc = fut.exception()
    if exc is None:
        return ErrorCode.none
    log.warning("produce to %s-%d from %s failed: %s", topic, index, client, exc)
    if isinstance(exc, Fenced):
        return ErrorCode.not_leader_or_follower
    if isinstance(exc, AppendTimeout):
        return ErrorCode.request_timed_out
    if isinstance(exc, StorageError):
        return ErrorCode.kafka_storage_error
    return ErrorCode.unknown_server_error


def _swallow(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
