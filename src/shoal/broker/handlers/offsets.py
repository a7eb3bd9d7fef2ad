"""OffsetCommit, OffsetFetch and OffsetDelete.

A commit is checked against the group (generation, member) and each partition
against the topic catalog and `offset.metadata.max.bytes`; the valid part is
queued for the offset writer at once and answered when it is durable, through
`Deferred`, so a client's pipelined commits share transactions.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from collections.abc import Callable
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client, Deferred
from shoal.broker.txn_io import settle_group_offsets
from shoal.group.offsets import CommittedOffset, OffsetWriteError, TopicPartition, now_ms
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import AclOperation, ResourceType

log = logging.getLogger("shoal.offsets")
ZERO = datetime.timedelta(0)


def _partition_exists(broker: Broker, topic: str, index: int) -> bool:
    t = broker.topics.get(topic)
    return t is not None and 0 <= index < len(t.partitions)


def _topic_name(broker: Broker, t: Any) -> str | None:
    """A request topic's name: v10 (Kafka 4.1) names topics by id; None for
    an id no topic has (UNKNOWN_TOPIC_ID)."""
    if not hasattr(t, "topic_id"):
        return str(t.name)
    topic = broker.topics.by_id(t.topic_id)
    return topic.name if topic is not None else None


async def handle_offset_commit(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(8, header.api_version)
    groups = broker.groups
    if not broker.authorize(client, AclOperation.READ, ResourceType.GROUP, body.group_id):
        group_code = ErrorCode.group_authorization_failed
    else:
        group_code = groups.check_commit(
            body.group_id,
            int(body.generation_id_or_member_epoch),
            body.member_id,
            getattr(body, "group_instance_id", None),
            header.api_version,
        )
    if group_code != ErrorCode.none:
        log.info(
            "offset commit for group %s from %s (member %r, generation %d): %s",
            body.group_id,
            client,
            body.member_id,
            body.generation_id_or_member_epoch,
            group_code.name,
        )
    max_meta = groups.config.offset_metadata_max_bytes
    codes: dict[TopicPartition, ErrorCode] = {}
    entries: dict[TopicPartition, CommittedOffset] = {}
    stamp = now_ms()
    keys: list[str] = []
    for t in body.topics:
        name = _topic_name(broker, t)
        keys.append(_key_topic(t, name))
        for p in t.partitions:
            key = (keys[-1], int(p.partition_index))
            meta = p.committed_metadata or ""
            if group_code != ErrorCode.none:
                codes[key] = group_code
            elif name is None:
                codes[key] = ErrorCode.unknown_topic_id
                log.info(
                    "offset commit for group %s from %s: unknown topic id %s",
                    body.group_id,
                    client,
                    t.topic_id,
                )
            elif not broker.authorize(client, AclOperation.READ, ResourceType.TOPIC, name):
                codes[key] = ErrorCode.topic_authorization_failed
            elif not _partition_exists(broker, name, key[1]):
                codes[key] = ErrorCode.unknown_topic_or_partition
            elif len(meta) > max_meta:
                codes[key] = ErrorCode.offset_metadata_too_large
            else:
                codes[key] = ErrorCode.none
                entries[key] = CommittedOffset(
                    int(p.committed_offset),
                    int(getattr(p, "committed_leader_epoch", -1)),
                    meta,
                    stamp,
                )
    if not entries:
        return _commit_response(s, body, keys, codes)
    write = groups.commit(body.group_id, entries)
    return Deferred(_commit_when_durable(s, body, keys, codes, write, client))


async def _commit_when_durable(
    s: Schema,
    body: Any,
    keys: list[str],
    codes: dict[TopicPartition, ErrorCode],
    write: asyncio.Future[None],
    client: Client,
) -> Any:
    try:
        await asyncio.shield(write)
    except OffsetWriteError as exc:
        log.warning("offset commit for group %s from %s failed: %s", body.group_id, client, exc)
        for key, code in codes.items():
            if code == ErrorCode.none:
                codes[key] = ErrorCode.coordinator_not_available
    return _commit_response(s, body, keys, codes)


def _key_topic(t: Any, name: str | None) -> str:
    """The codes' key for a request topic: its name, or its unknown id."""
    return name if name is not None else f"id:{t.topic_id}"


def _commit_response(
    s: Schema, body: Any, keys: list[str], codes: dict[TopicPartition, ErrorCode]
) -> Any:
    """`keys`: each request topic's key in `codes`."""
    by_id = s.version >= 10
    return s.OffsetCommitResponse(
        throttle_time=ZERO,
        topics=tuple(
            s.OffsetCommitResponseTopic(
                **({"topic_id": t.topic_id} if by_id else {"name": t.name}),
                partitions=tuple(
                    s.OffsetCommitResponsePartition(
                        partition_index=p.partition_index,
                        error_code=codes[(k, int(p.partition_index))],
                    )
                    for p in t.partitions
                ),
            )
            for t, k in zip(body.topics, keys, strict=True)
        ),
    )


async def handle_offset_fetch(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """v1-7 ask for one group, v8+ for several; `topics` null means every
    partition the group has committed (v2+)."""
    version = header.api_version
    group_ids = [g.group_id for g in body.groups] if version >= 8 else [body.group_id]
    pending = broker.groups.pending_writes(group_ids)
    if broker.txn.unsettled(group_ids):  # transactions' offsets (shoal.broker.txn_io)
        pending.append(asyncio.ensure_future(settle_group_offsets(broker, group_ids)))
    if pending:
        return Deferred(_fetch_after(pending, broker, client, header, body))
    return _fetch_response(broker, client, header, body)


async def _fetch_after(
    pending: list[asyncio.Future[None]],
    broker: Broker,
    client: Client,
    header: RequestHeader,
    body: Any,
) -> Any:
    await asyncio.gather(*(asyncio.shield(f) for f in pending), return_exceptions=True)
    return _fetch_response(broker, client, header, body)


def _fetch_response(broker: Broker, client: Client, header: RequestHeader, body: Any) -> Any:
    """Kafka: DESCRIBE on the group, and on each topic (topics the principal
    may not describe are left out of an "all topics" answer)."""
    version = header.api_version
    s = Schema(9, version)

    def group_code(group_id: str, member_id: str | None = None, epoch: int = -1) -> ErrorCode:
        if not broker.authorize(client, AclOperation.DESCRIBE, ResourceType.GROUP, group_id):
            return ErrorCode.group_authorization_failed
        gated = broker.groups.gate(group_id)
        if gated is not None:
            return gated
        code = broker.groups.check_fetch(group_id, member_id, epoch)  # v9+: KIP-848 members
        if code != ErrorCode.none:
            log.info(
                "offset fetch for group %s from %s (member %r, epoch %d): %s",
                group_id,
                client,
                member_id,
                epoch,
                code.name,
            )
        return code

    def visible(topic: str, log_denial: bool) -> bool:
        return broker.authorize(
            client, AclOperation.DESCRIBE, ResourceType.TOPIC, topic, log_denial
        )

    if version >= 8:
        return s.OffsetFetchResponse(
            throttle_time=ZERO,
            groups=tuple(
                s.OffsetFetchResponseGroup(
                    group_id=g.group_id,
                    topics=_fetch_topics(
                        s,
                        broker,
                        g.group_id,
                        g.topics,
                        "OffsetFetchResponseTopics",
                        "OffsetFetchResponsePartitions",
                        visible,
                        bool(getattr(body, "require_stable", False)),
                    )
                    if code == ErrorCode.none
                    else (),
                    error_code=code,
                )
                for g in body.groups
                for code in (
                    group_code(
                        g.group_id,
                        getattr(g, "member_id", None),
                        int(getattr(g, "member_epoch", -1)),
                    ),
                )
            ),
        )
    code = group_code(body.group_id)
    return s.OffsetFetchResponse(
        throttle_time=ZERO,
        topics=_fetch_topics(
            s,
            broker,
            body.group_id,
            body.topics,
            "OffsetFetchResponseTopic",
            "OffsetFetchResponsePartition",
            visible,
            bool(getattr(body, "require_stable", False)),
        )
        if code == ErrorCode.none
        else (),
        error_code=code,
    )


def _fetch_topics(
    s: Schema,
    broker: Broker,
    group_id: str,
    topics: Any,
    topic_cls: str,
    part_cls: str,
    visible: Callable[[str, bool], bool],
    require_stable: bool = False,
) -> tuple[Any, ...]:
    committed = broker.groups.committed(group_id)
    by_id = s.version >= 10  # Kafka 4.1: topics named by id, both ways
    wanted: dict[str, list[int]] = {}
    ids: dict[str, uuid.UUID | None] = {}
    if topics is None:
        for name, index in sorted(committed):
            topic = broker.topics.get(name)
            if by_id and topic is None:
                continue  # a deleted topic has no id to answer with
            if visible(name, False):
                wanted.setdefault(name, []).append(index)
                ids[name] = topic.topic_uuid if topic is not None else None
    else:
        for t in topics:
            key = _key_topic(t, _topic_name(broker, t))
            wanted.setdefault(key, []).extend(int(i) for i in t.partition_indexes)
            ids[key] = getattr(t, "topic_id", None)
    make_topic = getattr(s, topic_cls)
    make_part = getattr(s, part_cls)
    out = []
    for name, indexes in wanted.items():
        parts = []
        unknown = name.startswith("id:") and by_id
        allowed = not unknown and (topics is None or visible(name, True))
        for index in indexes:
            c = committed.get((name, index)) if allowed else None
            code = (
                ErrorCode.none
                if allowed
                else ErrorCode.unknown_topic_id
                if unknown
                else ErrorCode.topic_authorization_failed
            )
            if allowed and require_stable and broker.txn.pending_offset(group_id, (name, index)):
                # a transaction's offset for it is pending (KIP-447)
                c, code = None, ErrorCode.unstable_offset_commit
            parts.append(
                make_part(
                    partition_index=index,
                    committed_offset=c.offset if c is not None else -1,
                    committed_leader_epoch=c.leader_epoch if c is not None else -1,
                    metadata=c.metadata if c is not None else "",
                    error_code=code,
                )
            )
        named = {"topic_id": ids[name]} if by_id else {"name": name}
        out.append(make_topic(**named, partitions=tuple(parts)))
    return tuple(out)


async def handle_offset_delete(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(47, header.api_version)
    if not broker.authorize(client, AclOperation.DELETE, ResourceType.GROUP, body.group_id):
        broker.audit.admin(
            client, "OffsetDelete", "GROUP", body.group_id, "GROUP_AUTHORIZATION_FAILED"
        )
        return s.OffsetDeleteResponse(
            error_code=ErrorCode.group_authorization_failed, throttle_time=ZERO, topics=()
        )
    keys: list[TopicPartition] = []
    unknown: set[TopicPartition] = set()
    denied: set[TopicPartition] = set()
    for t in body.topics:
        for p in t.partitions:
            key = (t.name, int(p.partition_index))
            if not broker.authorize(client, AclOperation.READ, ResourceType.TOPIC, t.name):
                denied.add(key)
            elif _partition_exists(broker, t.name, key[1]):
                keys.append(key)
            else:
                unknown.add(key)
    code, results = await broker.groups.delete_offsets(body.group_id, keys)
    broker.audit.admin(
        client, "OffsetDelete", "GROUP", body.group_id, code.name,
        partitions=[f"{t}-{i}" for t, i in keys],
    )  # fmt: skip
    if code != ErrorCode.none:
        log.info("offset delete for group %s from %s: %s", body.group_id, client, code.name)
        return s.OffsetDeleteResponse(error_code=code, throttle_time=ZERO, topics=())
    return s.OffsetDeleteResponse(
        error_code=ErrorCode.none,
        throttle_time=ZERO,
        topics=tuple(
            s.OffsetDeleteResponseTopic(
                name=t.name,
                partitions=tuple(
                    s.OffsetDeleteResponsePartition(
                        partition_index=p.partition_index,
                        error_code=ErrorCode.topic_authorization_failed
                        if (t.name, int(p.partition_index)) in denied
                        else ErrorCode.unknown_topic_or_partition
                        if (t.name, int(p.partition_index)) in unknown
                        else results.get((t.name, int(p.partition_index)), ErrorCode.none),
                    )
                    for p in t.partitions
                ),
            )
            for t in body.topics
        ),
    )
