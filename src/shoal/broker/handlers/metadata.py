"""Metadata: brokers, topics, partition leaders; auto-creates topics."""

from __future__ import annotations

import logging
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.broker.handlers.authorized import authorized_operations
from shoal.broker.topics import Topic
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.protocol.metadata_response import BrokerEntry, MetadataAnswer, TopicEntry
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType

log = logging.getLogger("shoal.metadata")
_NONE = int(ErrorCode.none.value)
_NO_LEADER = int(ErrorCode.leader_not_available.value)


async def handle_metadata(broker: Broker, client: Client, header: RequestHeader, body: Any) -> Any:
    version = header.api_version
    allow_auto = bool(getattr(body, "allow_auto_topic_creation", True))
    requested = body.topics
    topic_ops = bool(getattr(body, "include_topic_authorized_operations", False))
    results: list[TopicEntry] = []
    if requested is None or (version == 0 and not requested):
        topics = sorted(
            (t for t in broker.topics.all() if _visible(broker, client, t.name)),
            key=lambda t: t.name,
        )
        results = [_topic(broker, t, client, topic_ops) for t in topics]
    else:
        # Each topic's own checks, then the named topics found (or
        # auto-created) together, then one entry per topic in order.
        entries: list[TopicEntry | str] = []  # a name: to be looked up
        for req in requested:
            name = req.name
            if name is None:  # v10+: by topic id (KIP-516)
                by_id = broker.topics.by_id(req.topic_id)
                if by_id is None or not _visible(broker, client, by_id.name):
                    entries.append(TopicEntry(ErrorCode.unknown_topic_id, None, req.topic_id))
                    continue
                name = by_id.name
            try:
                broker.require(client, AclOperation.DESCRIBE, ResourceType.TOPIC, name)
                if allow_auto and broker.topics.get(name) is None:
                    _require_create(broker, client, name)
            except KafkaError as exc:
                entries.append(_failed(client, name, exc))
                continue
            entries.append(name)
        names = [e for e in entries if isinstance(e, str)]
        found = dict(
            zip(names, await broker.topics.get_or_create_many(names, allow_auto), strict=True)
        )
        for entry in entries:
            if not isinstance(entry, str):
                results.append(entry)
                continue
            topic = found[entry]
            if isinstance(topic, Topic):
                results.append(_topic(broker, topic, client, topic_ops))
            elif topic is None:
                results.append(TopicEntry(ErrorCode.unknown_topic_or_partition, entry))
            else:
                results.append(_failed(client, entry, topic))
    nodes = await broker.advertised.nodes(broker.live_nodes(), client.listener)
    return MetadataAnswer(
        version=version,
        brokers=tuple(BrokerEntry(n.node_id, n.host, n.port, n.rack) for n in nodes),
        cluster_id=broker.cluster_id,
        controller_id=broker.controller_id(),
        topics=tuple(results),
        cluster_authorized_operations=authorized_operations(
            broker,
            client,
            ResourceType.CLUSTER,
            CLUSTER_NAME,
            bool(getattr(body, "include_cluster_authorized_operations", False)),
        ),
    )


def _failed(client: Client, name: str, exc: KafkaError) -> TopicEntry:
    if exc.code != ErrorCode.unknown_topic_or_partition:
        log.info("metadata for %r from %s: %s", name, client, exc)
    return TopicEntry(exc.code, name)


def _visible(broker: Broker, client: Client, name: str) -> bool:
    """Kafka lists only the topics a principal may DESCRIBE, silently."""
    return broker.authorize(client, AclOperation.DESCRIBE, ResourceType.TOPIC, name, False)


def _require_create(broker: Broker, client: Client, name: str) -> None:
    """Auto-creation needs CREATE on the cluster or on the topic."""
    if not broker.config["auto.create.topics.enable"]:
        return
    if broker.authorize(client, AclOperation.CREATE, ResourceType.CLUSTER, CLUSTER_NAME, False):
        return
    broker.require(client, AclOperation.CREATE, ResourceType.TOPIC, name)


def _topic(broker: Broker, topic: Topic, client: Client, ops: bool) -> TopicEntry:
    parts = topic.partitions
    return TopicEntry(
        ErrorCode.none,
        topic.name,
        topic.topic_uuid,
        tuple(
            (p.partition, _NONE if leader >= 0 else _NO_LEADER, leader, p.leader_epoch)
            for p, leader in zip(parts, broker.leaders(parts), strict=True)
        ),
        authorized_operations(broker, client, ResourceType.TOPIC, topic.name, ops),
    )
