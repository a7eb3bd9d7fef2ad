"""Metadata: brokers, topics, partition leaders; auto-creates topics."""

from __future__ import annotations

import datetime
import logging
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.broker.handlers.authorized import authorized_operations
from shoal.broker.topics import Topic
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType

log = logging.getLogger("shoal.metadata")
ZERO = datetime.timedelta(0)


async def handle_metadata(broker: Broker, client: Client, header: RequestHeader, body: Any) -> Any:
    s = Schema(3, header.api_version)
    version = header.api_version
    allow_auto = bool(getattr(body, "allow_auto_topic_creation", True))
    requested = body.topics
    topic_ops = bool(getattr(body, "include_topic_authorized_operations", False))
    results = []
    if requested is None or (version == 0 and not requested):
        topics = sorted(
            (t for t in broker.topics.all() if _visible(broker, client, t.name)),
            key=lambda t: t.name,
        )
        results = [_topic(s, broker, t, client, topic_ops) for t in topics]
    else:
        for req in requested:
            name = req.name
            if name is None:  # v10+: by topic id (KIP-516)
                by_id = broker.topics.by_id(req.topic_id)
                if by_id is None or not _visible(broker, client, by_id.name):
                    results.append(
                        s.MetadataResponseTopic(
                            error_code=ErrorCode.unknown_topic_id,
                            name=None,
                            topic_id=req.topic_id,
                            is_internal=False,
                            partitions=(),
                        )
                    )
                    continue
                name = by_id.name
            try:
                broker.require(client, AclOperation.DESCRIBE, ResourceType.TOPIC, name)
                if allow_auto and broker.topics.get(name) is None:
                    _require_create(broker, client, name)
                topic = await broker.topics.get_or_create(name, allow_auto)
                if topic is None:
                    raise KafkaError(ErrorCode.unknown_topic_or_partition)
                results.append(_topic(s, broker, topic, client, topic_ops))
            except KafkaError as exc:
                if exc.code != ErrorCode.unknown_topic_or_partition:
                    log.info("metadata for %r from %s: %s", name, client, exc)
                results.append(
                    s.MetadataResponseTopic(
                        error_code=exc.code,
                        name=name,
                        topic_id=None,
                        is_internal=False,
                        partitions=(),
                    )
                )
    return s.MetadataResponse(
        throttle_time=ZERO,
        error_code=ErrorCode.none,
        brokers=tuple(
            s.MetadataResponseBroker(node_id=n.node_id, host=n.host, port=n.port, rack=n.rack)
            for n in await broker.advertised.nodes(broker.live_nodes(), client.listener)
        ),
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


def _topic(s: Schema, broker: Broker, topic: Topic, client: Client, ops: bool) -> Any:
    parts = []
    for p, leader in zip(topic.partitions, broker.leaders(topic.partitions), strict=True):
        replicas = (leader,) if leader >= 0 else ()
        parts.append(
            s.MetadataResponsePartition(
                error_code=ErrorCode.none if leader >= 0 else ErrorCode.leader_not_available,
                partition_index=p.partition,
                leader_id=leader,
                leader_epoch=p.leader_epoch,
                replica_nodes=replicas,
                isr_nodes=replicas,
                offline_replicas=(),
            )
        )
    return s.MetadataResponseTopic(
        error_code=ErrorCode.none,
        name=topic.name,
        topic_id=topic.topic_uuid,
        is_internal=False,
        partitions=tuple(parts),
        topic_authorized_operations=authorized_operations(
            broker, client, ResourceType.TOPIC, topic.name, ops
        ),
    )
