"""CreateTopics, DeleteTopics and CreatePartitions."""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.broker.handlers.configs import topic_config_entries
from shoal.broker.topics import Topic
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType

log = logging.getLogger("shoal.topics")
ZERO = datetime.timedelta(0)


async def handle_create_topics(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(19, header.api_version)
    # Each topic's own checks first, then every topic that passed them
    # created at once (TopicCatalog.create_many), then one result per topic
    # in the request's order.
    outcome: list[Topic | KafkaError | None] = []
    wanted: list[tuple[str, int, dict[str, str | None]]] = []
    seen: set[str] = set()
    for t in body.topics:
        try:
            _check_creatable(broker, client, t, seen)
        except KafkaError as exc:
            outcome.append(exc)
            continue
        outcome.append(None)
        wanted.append(
            (
                t.name,
                len(t.assignments) if t.assignments else t.num_partitions,
                {c.name: c.value for c in t.configs},
            )
        )
    created = iter(await broker.topics.create_many(wanted, validate_only=bool(body.validate_only)))
    results = []
    for t, early in zip(body.topics, outcome, strict=True):
        result = early if early is not None else next(created)
        topic = result if isinstance(result, Topic) else None
        code, message = ErrorCode.none, None
        if isinstance(result, KafkaError):
            code, message = result.code, str(result)
            log.info("create topic %r from %s: %s", t.name, client, message)
        broker.audit.admin(
            client, "CreateTopics", "TOPIC", t.name, code.name,
            partitions=t.num_partitions, validate_only=bool(body.validate_only),
        )  # fmt: skip
        configs = None
        if topic is not None and s.has("CreatableTopicResult", "configs"):
            configs = tuple(
                s.CreatableTopicConfigs(
                    name=e.name,
                    value=e.value,
                    read_only=False,
                    config_source=e.source,
                    is_sensitive=False,
                )
                for e in topic_config_entries(broker, topic)
            )
        results.append(
            s.CreatableTopicResult(
                name=t.name,
                topic_id=topic.topic_uuid if topic is not None else None,
                error_code=code,
                error_message=message,
                num_partitions=len(topic.partitions) if topic is not None else -1,
                replication_factor=1 if topic is not None else -1,
                configs=configs,
            )
        )
    return s.CreateTopicsResponse(throttle_time=ZERO, topics=tuple(results))


def _check_creatable(broker: Broker, client: Client, t: Any, seen: set[str]) -> None:
    """What CreateTopics checks of one topic before the catalog does: listed
    once, allowed to this client, a replication factor Kafka accepts."""
    if t.name in seen:
        raise KafkaError(ErrorCode.invalid_request, f"topic {t.name!r} listed twice")
    seen.add(t.name)
    if not broker.authorize(client, AclOperation.CREATE, ResourceType.CLUSTER, CLUSTER_NAME, False):
        broker.require(client, AclOperation.CREATE, ResourceType.TOPIC, t.name)
    if t.replication_factor == 0 or t.replication_factor < -1:
        raise KafkaError(
            ErrorCode.invalid_replication_factor,
            f"replication factor must be -1 or at least 1, got {t.replication_factor}",
        )


async def handle_delete_topics(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(20, header.api_version)
    # v6 names each topic by name or by id (KIP-516); earlier versions by name.
    wanted: list[tuple[str | None, uuid.UUID | None]] = (
        [(t.name, t.topic_id if t.topic_id and t.topic_id.int else None) for t in body.topics]
        if header.api_version >= 6
        else [(name, None) for name in body.topic_names]
    )
    # Each entry's name and permission first, then every topic that passed
    # deleted at once (TopicCatalog.delete_many), then one result per entry.
    resolved: list[str | KafkaError] = []
    for asked, topic_id in wanted:
        try:
            target = _delete_target(broker, asked, topic_id)
            broker.require(client, AclOperation.DELETE, ResourceType.TOPIC, target)
        except KafkaError as exc:
            resolved.append(exc)
            continue
        resolved.append(target)
    names = [r for r in resolved if isinstance(r, str)]
    outcomes = iter(await broker.topics.delete_many(names))
    deleted: list[Topic] = []
    results = []
    for (asked, topic_id), r in zip(wanted, resolved, strict=True):
        outcome = next(outcomes) if isinstance(r, str) else r
        name = r if isinstance(r, str) else asked
        code, message = ErrorCode.none, None
        if isinstance(outcome, KafkaError):
            code, message = outcome.code, str(outcome)
        else:
            topic_id = outcome.topic_uuid
            deleted.append(outcome)
            for p in outcome.partitions:
                broker.engine.forget(p.stream_id)
            log.info("deleted topic %s for %s", name, client)
        broker.audit.admin(client, "DeleteTopics", "TOPIC", name or str(topic_id), code.name)
        results.append(
            s.DeletableTopicResult(
                name=name, topic_id=topic_id, error_code=code, error_message=message
            )
        )
    await asyncio.gather(*(broker.groups.topic_deleted(t.name) for t in deleted))
    return s.DeleteTopicsResponse(throttle_time=ZERO, responses=tuple(results))


def _delete_target(broker: Broker, name: str | None, topic_id: uuid.UUID | None) -> str:
    """The topic a DeleteTopics entry means: Kafka takes a name or an id, not both."""
    if name is not None and topic_id is not None:
        raise KafkaError(ErrorCode.invalid_request, "give a topic name or a topic id, not both")
    if name is not None:
        return name
    if topic_id is None:
        raise KafkaError(ErrorCode.invalid_request, "neither a topic name nor a topic id")
    topic = broker.topics.by_id(topic_id)
    if topic is None:
        raise KafkaError(ErrorCode.unknown_topic_id, f"no topic with id {topic_id}")
    return topic.name


async def handle_create_partitions(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(37, header.api_version)
    # Each topic's permission and assignments first, then every topic that
    # passed grown at once (TopicCatalog.add_partitions_many), then one
    # result per topic in the request's order.
    checked: list[KafkaError | None] = []
    wanted: list[tuple[str, int]] = []
    for t in body.topics:
        try:
            broker.require(client, AclOperation.ALTER, ResourceType.TOPIC, t.name)
            _check_assignments(broker, t.name, t.count, t.assignments)
        except KafkaError as exc:
            checked.append(exc)
            continue
        checked.append(None)
        wanted.append((t.name, t.count))
    grown = iter(
        await broker.topics.add_partitions_many(wanted, validate_only=bool(body.validate_only))
    )
    results = []
    for t, early in zip(body.topics, checked, strict=True):
        outcome = early if early is not None else next(grown)
        code, message = ErrorCode.none, None
        if isinstance(outcome, KafkaError):
            code, message = outcome.code, str(outcome)
            log.info("create partitions %r from %s: %s", t.name, client, message)
        broker.audit.admin(
            client, "CreatePartitions", "TOPIC", t.name, code.name,
            count=t.count, validate_only=bool(body.validate_only),
        )  # fmt: skip
        results.append(
            s.CreatePartitionsTopicResult(name=t.name, error_code=code, error_message=message)
        )
    return s.CreatePartitionsResponse(throttle_time=ZERO, results=tuple(results))


def _check_assignments(broker: Broker, name: str, count: int, assignments: Any) -> None:
    """Kafka's checks of explicit assignments for new partitions: one list per
    new partition, each of brokers that exist, once each. A partition has one
    replica here (its owner, chosen by the controller), so each list names one
    broker."""
    if assignments is None:
        return
    topic = broker.topics.get(name)
    if topic is None:
        return  # add_partitions answers UNKNOWN_TOPIC_OR_PARTITION
    added = count - len(topic.partitions)
    if added > 0 and len(assignments) != added:
        raise KafkaError(
            ErrorCode.invalid_replica_assignment,
            f"increasing the partition count by {added} needs {added} assignments, "
            f"not {len(assignments)}",
        )
    brokers = {n.node_id for n in broker.live_nodes()}
    for i, a in enumerate(assignments):
        ids = list(a.broker_ids)
        unknown = sorted(set(ids) - brokers)
        if unknown:
            raise KafkaError(
                ErrorCode.invalid_replica_assignment,
                f"assignment {i} names unknown broker(s) {unknown}; brokers: {sorted(brokers)}",
            )
        if len(ids) != 1:
            raise KafkaError(
                ErrorCode.invalid_replica_assignment,
                f"assignment {i} has {len(ids)} replicas: data lives in the object store, "
                "so each partition has one replica, its owner",
            )
