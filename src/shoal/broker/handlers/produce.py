"""Produce: validate batches, append them in request order, answer after commit."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client, Deferred
from shoal.broker.topics import Topic
from shoal.config import TOPIC_KEYS
from shoal.config_catalog import COMPRESSION_CODECS
from shoal.meta.store import PartitionRecord
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.protocol.produce_response import PartitionAnswer, ProduceAnswer
from shoal.protocol.recompress import recompress, timestamp_violations
from shoal.protocol.records import BatchRejected, LargeBatch, ValidatedBatch, validate_produce
from shoal.security.acls import AclOperation, ResourceType
from shoal.storage.errors import AppendTimeout, Fenced, StorageError, StorageFull
from shoal.storage.producers import SequenceError
from shoal.txn.state import TV2
from shoal.values import value

log = logging.getLogger("shoal.produce")
#: Decompressed bytes a batch may take on the event loop (about a millisecond);
#: beyond, it is checked in a worker thread.
INLINE_DECOMPRESS = 1 << 20

# (topic name, or id from v13, partition, base-offset future or error,
# stream id or -1, log append time)
_Slot = tuple[
    "str | uuid.UUID", int, "asyncio.Future[int] | ErrorCode | KafkaError", int, int | None
]


@value
class _Checked:
    """A partition's batch past every check but its transaction's, which is
    made for the request's batches together before any is appended."""

    name: str
    index: int
    topic: Topic
    part: PartitionRecord
    batch: ValidatedBatch
    size: int
    log_append: bool


@dataclass(frozen=True, slots=True)
class _Policy:
    """A topic's configs that every produce to it reads, typed once: looked
    up key by key they cost as much as the batch's own checks. Kept on the
    topic, valid while it keeps the same overrides dict (altering configs
    replaces it; broker configs are static while running)."""

    overrides: dict[str, str]
    log_append: bool
    max_bytes: int
    compacted: bool
    before_max_ms: int
    after_max_ms: int
    codec: str  # compression.type
    level: int | None  # compression.<codec>.level, if the codec has one


def _policy(broker: Broker, topic: Topic) -> _Policy:
    p = topic.produce_policy
    if p is not None and p.overrides is topic.overrides:
        return p  # type: ignore[no-any-return]
    eff = broker.topics.effective
    codec = str(eff(topic, "compression.type"))
    level_key = f"compression.{codec}.level"
    p = _Policy(
        topic.overrides,
        eff(topic, "message.timestamp.type") == "LogAppendTime",
        broker.topics.max_message_bytes(topic),
        "compact" in str(eff(topic, "cleanup.policy")),
        int(eff(topic, "message.timestamp.before.max.ms")),
        int(eff(topic, "message.timestamp.after.max.ms")),
        codec,
        int(eff(topic, level_key)) if level_key in TOPIC_KEYS else None,
    )
    topic.produce_policy = p
    return p


async def handle_produce(broker: Broker, client: Client, header: RequestHeader, body: Any) -> Any:
    slots: list[_Slot] = []
    checked: list[tuple[int, _Checked]] = []  # with their place in slots
    tid = body.transactional_id
    for td in body.topic_data:
        # v13+ names topics by id (KIP-516)
        ref: str | uuid.UUID = td.topic_id if header.api_version >= 13 else td.name
        name = ref if isinstance(ref, str) else _name_of(broker, ref)
        refused: ErrorCode | None = None
        if tid is not None and not broker.authorize(
            client, AclOperation.WRITE, ResourceType.TRANSACTIONAL_ID, tid
        ):
            refused = ErrorCode.transactional_id_authorization_failed
        elif name is None:
            refused = ErrorCode.unknown_topic_id
        elif not broker.authorize(client, AclOperation.WRITE, ResourceType.TOPIC, name):
            # one decision (and at most one denial logged) per topic, as Kafka
            refused = ErrorCode.topic_authorization_failed
        for pd in td.partition_data:
            if refused is not None or name is None:
                slots.append((ref, pd.index, refused or ErrorCode.unknown_topic_id, -1, None))
                continue
            got = _check(broker, client, header.api_version, name, pd.index, pd.records)
            if isinstance(got, _Large):
                got = await _check_large(client, header.api_version, got)
            if isinstance(got, _Checked):
                checked.append((len(slots), got))
                slots.append((ref, pd.index, ErrorCode.none, -1, None))  # set at the append
            else:
                slots.append((ref, got[1], got[2], got[3], got[4]))
    if checked:
        batches = [c for _, c in checked]
        refusals: list[KafkaError | StorageError | None]
        if tid is None and not any(c.batch.header.is_transactional for c in batches):
            refusals = [None] * len(batches)  # nothing transactional to check
        else:
            refusals = await _check_transactional(broker, tid, header.api_version, batches)
        for (at, c), refusal in zip(checked, refusals, strict=True):
            if refusal is not None:
                got = _refused(refusal, c.name, c.index, client)
            else:
                got = _append_now(broker, client, c) or await _append(broker, client, c)
            slots[at] = (slots[at][0], got[1], got[2], got[3], got[4])
    if body.acks == 0:
        for slot in slots:
            fut = slot[2]
            if isinstance(fut, asyncio.Future):
                fut.add_done_callback(_swallow)
        return None
    timeout = max(body.timeout.total_seconds(), 0.0)
    return Deferred(_respond(broker, client, header, slots, timeout))


@dataclass(frozen=True, slots=True)
class _Large:
    """A batch that decompresses past INLINE_DECOMPRESS: checked again in a
    worker thread (see _check_large)."""

    name: str
    index: int
    topic: Topic
    part: PartitionRecord
    policy: _Policy
    records: bytes


def _check(
    broker: Broker,
    client: Client,
    api_version: int,
    topic_name: str,
    index: int,
    records: bytes | None,
) -> _Slot | _Checked | _Large:
    """Synchronous: most requests never wait here (see _check_large)."""
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
        policy = _policy(broker, topic)
        try:
            batch = _prepare(policy, records, api_version, INLINE_DECOMPRESS)
        except LargeBatch:
            return _Large(topic_name, index, topic, part, policy, records)
        return _Checked(topic_name, index, topic, part, batch, len(records), policy.log_append)
    except (KafkaError, StorageError) as exc:
        return _refused(exc, topic_name, index, client)


async def _check_large(client: Client, api_version: int, c: _Large) -> _Slot | _Checked:
    """A few kilobytes can decompress to tens of megabytes (tens of
    milliseconds): such a batch is checked, and recompressed, in a worker
    thread (cramjam releases the GIL), not on the event loop."""
    try:
        batch = await asyncio.to_thread(_prepare, c.policy, c.records, api_version, None)
        return _Checked(
            c.name, c.index, c.topic, c.part, batch, len(c.records), c.policy.log_append
        )
    except (KafkaError, StorageError) as exc:
        return _refused(exc, c.name, c.index, client)


def _append_now(broker: Broker, client: Client, c: _Checked) -> _Slot | None:
    """The append when the WAL has room (nearly always), without awaiting;
    None when it must wait for room (then _append)."""
    try:
        append_time = int(time.time() * 1000) if c.log_append else None
        fut = broker.engine.append_now(
            c.part.stream_id, [c.batch], c.part.leader_epoch, append_time
        )
        if fut is None:
            return None
        broker.record_traffic(c.topic, c.part, c.size, 0)
        return c.name, c.index, fut, c.part.stream_id, append_time
    except (KafkaError, StorageError) as exc:
        return _refused(exc, c.name, c.index, client)


async def _append(broker: Broker, client: Client, c: _Checked) -> _Slot:
    try:
        append_time = int(time.time() * 1000) if c.log_append else None
        fut = await broker.engine.append(
            c.part.stream_id, [c.batch], c.part.leader_epoch, append_time
        )
        broker.record_traffic(c.topic, c.part, c.size, 0)
        return c.name, c.index, fut, c.part.stream_id, append_time
    except (KafkaError, StorageError) as exc:
        return _refused(exc, c.name, c.index, client)


def _refused(exc: KafkaError | StorageError, topic_name: str, index: int, client: Client) -> _Slot:
    """A partition's answer for a check or an append that failed, logged."""
    if isinstance(exc, KafkaError):
        log.info(
            "produce to %s-%d from %s rejected: %s (%s)",
            topic_name,
            index,
            client,
            exc.code.name,
            exc,
        )
        return topic_name, index, exc, -1, None
    if isinstance(exc, StorageFull):
        # Retriable for every client (librdkafka refreshes metadata and
        # retries; Java and kafka-python treat it as a retriable
        # InvalidMetadata error). Logged rate-limited by the DiskGuard.
        return topic_name, index, KafkaError(ErrorCode.kafka_storage_error, str(exc)), -1, None
    if isinstance(exc, SequenceError):
        log.info("produce to %s-%d from %s rejected: %s", topic_name, index, client, exc)
        return topic_name, index, ErrorCode[exc.code], -1, None
    log.warning("produce to %s-%d from %s failed: %s", topic_name, index, client, exc)
    return topic_name, index, ErrorCode.not_leader_or_follower, -1, None


def _prepare(
    policy: _Policy,
    records: bytes,
    api_version: int,
    inline_limit: int | None,
) -> ValidatedBatch:
    """Everything that reads inside the records: Kafka's checks, the
    timestamp window and recompression to the topic's codec. Synchronous and
    touching no shared mutable state, so it may run in a worker thread; with
    `inline_limit` it raises LargeBatch instead of decompressing past it (the
    later steps then decompress no more than that either)."""
    batch = validate_produce(
        records,
        policy.max_bytes,
        api_version=api_version,
        compacted=policy.compacted,
        log_append_time=policy.log_append,
        inline_limit=inline_limit,
    )
    if not policy.log_append:
        _check_timestamps(policy, batch)
    return _to_topic_codec(policy, batch)


async def _check_transactional(
    broker: Broker, tid: str | None, version: int, batches: list[_Checked]
) -> list[KafkaError | StorageError | None]:
    """The refusal of each batch, or None. A transactional batch needs a
    transactional id whose open transaction holds the partition, as Kafka 4
    verifies. From Produce v12 (a client on transaction version 2, KIP-890)
    the write itself adds the partition to the transaction: the request's
    partitions in one change of the id per producer (as Kafka's broker sends
    the coordinator one AddPartitionsToTxn per request), before any batch is
    appended. Before v12, AddPartitionsToTxn must have added it, and a
    partition not in it is INVALID_TXN_STATE, or TRANSACTION_ABORTABLE from
    v11 (the clients that know it)."""
    refusals: list[KafkaError | StorageError | None] = [None] * len(batches)
    joining: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(batches):
        h = c.batch.header
        if not h.is_transactional:
            if tid is not None:
                refusals[i] = KafkaError(
                    ErrorCode.invalid_record,
                    f"produce with transactional id {tid!r} carries a non-transactional batch",
                )
        elif tid is None:
            # Kafka's answer to transactional records without a transactional id
            refusals[i] = KafkaError(
                ErrorCode.transactional_id_authorization_failed,
                "transactional batch in a produce request without a transactional id",
            )
        elif version >= 12 and broker.txn.config.version >= TV2:
            joining.setdefault((h.producer_id, h.producer_epoch), []).append(i)
        else:
            code = broker.txn.check_write(tid, h.producer_id, h.producer_epoch, (c.name, c.index))
            if code == ErrorCode.invalid_txn_state and version >= 11:
                code = ErrorCode.transaction_abortable
            refusals[i] = _txn_refusal(code, tid, h.producer_id, h.producer_epoch)
    for (pid, epoch), at in joining.items():
        assert tid is not None  # joining holds transactional batches with an id
        tps = {(batches[i].name, batches[i].index) for i in at}
        refusal: KafkaError | StorageError | None
        try:
            code = await broker.txn.add_on_produce(tid, pid, epoch, tps)
            refusal = _txn_refusal(code, tid, pid, epoch)
        except StorageError as exc:  # finishing an interrupted end: its markers
            refusal = exc
        for i in at:
            refusals[i] = refusal
    return refusals


def _txn_refusal(code: ErrorCode, tid: str, producer_id: int, epoch: int) -> KafkaError | None:
    if code == ErrorCode.none:
        return None
    return KafkaError(
        code,
        f"transactional id {tid!r} (producer {producer_id} epoch {epoch}) "
        "cannot write to this partition in its transaction",
    )


def _check_timestamps(policy: _Policy, batch: ValidatedBatch) -> None:
    """message.timestamp.before/after.max.ms on a CreateTime topic, as Kafka:
    INVALID_TIMESTAMP naming each record outside the window."""
    bad = timestamp_violations(
        batch, int(time.time() * 1000), policy.before_max_ms, policy.after_max_ms
    )
    if bad:
        raise BatchRejected(
            ErrorCode.invalid_timestamp,
            f"{len(bad)} record(s) with a timestamp out of range: {bad[0][1]}",
            tuple(bad),
        )


def _to_topic_codec(policy: _Policy, batch: ValidatedBatch) -> ValidatedBatch:
    """Recompress to the topic's compression.type unless it is `producer` or
    the batch is in that codec already (Kafka keeps those as they are)."""
    wanted = policy.codec
    if wanted == "producer":
        return batch
    codec = COMPRESSION_CODECS[wanted]
    if batch.header.compression == codec:
        return batch
    out = recompress(batch, codec, policy.level)
    limit = policy.max_bytes
    if len(out.data) > limit:
        # Kafka checks the batch it stores, after recompression
        raise KafkaError(
            ErrorCode.message_too_large,
            f"batch of {len(out.data)} bytes in {wanted} exceeds max.message.bytes {limit}",
        )
    return out


async def _respond(
    broker: Broker, client: Client, header: RequestHeader, slots: list[_Slot], timeout: float
) -> ProduceAnswer:
    # Committed already (the usual case by the time a pipelined request's
    # turn comes): answered without asyncio.wait's waiter, callbacks and timer,
    # and without yielding, so the connection sends the answers one group
    # commit completes in one write.
    pending = [s[2] for s in slots if isinstance(s[2], asyncio.Future) and not s[2].done()]
    if pending:
        # A request's appends commit in the order they were made (one WAL
        # object after another), so its last is nearly always the last to
        # complete: one waiter on it, not one callback on each of a fleet
        # request's hundreds, then whatever is left (an append that waited
        # for its stream to open).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await asyncio.wait(pending[-1:], timeout=timeout)
        left = [f for f in pending if not f.done()]
        if left:
            await asyncio.wait(left, timeout=max(deadline - loop.time(), 0.0))
    by_topic: dict[str | uuid.UUID, list[PartitionAnswer]] = {}
    for topic_name, index, fut, stream_id, append_time in slots:
        base = -1
        start = -1
        message: str | None = None
        record_errors: tuple[tuple[int, str | None], ...] = ()
        if isinstance(fut, asyncio.Future):
            code = _outcome(fut, str(topic_name), index, client)
            if code == ErrorCode.none:
                base = fut.result()
                start = broker.engine.log_start(stream_id)
        elif isinstance(fut, KafkaError):
            code, message = fut.code, str(fut)
            if isinstance(fut, BatchRejected):
                record_errors = tuple(fut.record_errors)
        else:
            code = fut
        by_topic.setdefault(topic_name, []).append(
            PartitionAnswer(
                index,
                int(code),
                base,
                append_time if append_time is not None and code == ErrorCode.none else -1,
                start,
                record_errors,
                message,
            )
        )
    # Written straight to bytes (shoal.protocol.produce_response): the kio
    # entities cost about as much as the rest of a one-partition request.
    return ProduceAnswer(
        header.api_version, tuple((ref, tuple(parts)) for ref, parts in by_topic.items())
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
    if isinstance(exc, SequenceError):
        # found when the stream's first append took its offsets (batched open)
        log.info("produce to %s-%d from %s rejected: %s", topic, index, client, exc)
        return ErrorCode[exc.code]
    log.warning("produce to %s-%d from %s failed: %s", topic, index, client, exc)
    if isinstance(exc, Fenced):
        return ErrorCode.not_leader_or_follower
    if isinstance(exc, AppendTimeout):
        return ErrorCode.request_timed_out
    if isinstance(exc, StorageError):
        return ErrorCode.kafka_storage_error
    return ErrorCode.unknown_server_error


def _name_of(broker: Broker, topic_id: uuid.UUID) -> str | None:
    topic = broker.topics.by_id(topic_id)
    return topic.name if topic is not None else None


def _swallow(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
