"""DescribeTopicPartitions (KIP-966): Metadata's topic half, paginated.

Topics come in name order, at most `response_partition_limit` partitions per
answer (capped by the broker); `next_cursor` says where the next request
starts. Never creates a topic. Unknown topics asked by name get
UNKNOWN_TOPIC_OR_PARTITION; when listing all, topics the client may not
DESCRIBE are left out, as Metadata does.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.broker.handlers.authorized import authorized_operations
from shoal.broker.topics import Topic
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import AclOperation, ResourceType

ZERO = datetime.timedelta(0)
#: Kafka's max.request.partition.size.limit default
MAX_PARTITIONS = 2000
NO_ID = uuid.UUID(int=0)


async def handle_describe_topic_partitions(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(75, header.api_version)
    limit = MAX_PARTITIONS
    if body.response_partition_limit > 0:
        limit = min(limit, body.response_partition_limit)
    cursor = body.cursor
    start_name = cursor.topic_name if cursor is not None else ""
    start_part = cursor.partition_index if cursor is not None else 0

    if body.topics:
        names = sorted({t.name for t in body.topics})
        listing = False
    else:
        names = sorted(t.name for t in broker.topics.all())
        listing = True
    names = [n for n in names if n >= start_name]

    out: list[Any] = []
    next_cursor = None
    budget = limit
    for name in names:
        if budget <= 0:
            next_cursor = s.Cursor(topic_name=name, partition_index=0)
            break
        allowed = broker.authorize(client, AclOperation.DESCRIBE, ResourceType.TOPIC, name, False)
        topic = broker.topics.get(name)
        if listing and not allowed:
            continue
        if not allowed or topic is None:
            code = (
                ErrorCode.topic_authorization_failed
                if not allowed
                else ErrorCode.unknown_topic_or_partition
            )
            out.append(
                s.DescribeTopicPartitionsResponseTopic(
                    error_code=code, name=name, topic_id=NO_ID, is_internal=False,
                    partitions=(), topic_authorized_operations=0,
                )
            )  # fmt: skip
            continue
        first = start_part if name == start_name else 0
        last = min(len(topic.partitions), first + budget)
        budget -= last - first
        out.append(_topic(s, broker, client, topic, first, last))
        if last < len(topic.partitions):
            next_cursor = s.Cursor(topic_name=name, partition_index=last)
            break
    return s.DescribeTopicPartitionsResponse(
        throttle_time=ZERO, topics=tuple(out), next_cursor=next_cursor
    )


def _topic(s: Schema, broker: Broker, client: Client, topic: Topic, first: int, last: int) -> Any:
    page = topic.partitions[first:last]
    parts = []
    for p, leader in zip(page, broker.leaders(page), strict=True):
        replicas = (leader,) if leader >= 0 else ()
        parts.append(
            s.DescribeTopicPartitionsResponsePartition(
                error_code=ErrorCode.none if leader >= 0 else ErrorCode.leader_not_available,
                partition_index=p.partition,
                leader_id=leader,
                leader_epoch=p.leader_epoch,
                replica_nodes=replicas,
                isr_nodes=replicas,
                eligible_leader_replicas=(),
                last_known_elr=(),
                offline_replicas=(),
            )
        )
    return s.DescribeTopicPartitionsResponseTopic(
        error_code=ErrorCode.none,
        name=topic.name,
        topic_id=topic.topic_uuid,
        is_internal=False,
        partitions=tuple(parts),
        topic_authorized_operations=authorized_operations(
            broker, client, ResourceType.TOPIC, topic.name
        ),
    )
