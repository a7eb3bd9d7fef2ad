"""AlterPartitionReassignments and ListPartitionReassignments.

A partition has one replica here, its owner: a reassignment to [N] asks the
controller to move the partition to broker N, which moves no data (the new
owner opens the stream from the shared store). replicas=null cancels a move
not yet carried out. A single-node broker has nowhere to move anything.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType

log = logging.getLogger("shoal.reassignments")
ZERO = datetime.timedelta(0)


async def handle_alter_partition_reassignments(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(45, header.api_version)
    if not broker.authorize(client, AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
        return s.AlterPartitionReassignmentsResponse(
            throttle_time=ZERO,
            error_code=ErrorCode.cluster_authorization_failed,
            error_message=f"{client.principal} may not ALTER the cluster",
            responses=(),
        )
    # v1 (KIP-860): a client may forbid a change of replication factor (1 here)
    allow_rf_change = bool(getattr(body, "allow_replication_factor_change", True))
    topics = []
    for t in body.topics:
        parts = []
        for p in t.partitions:
            code, message = ErrorCode.none, None
            try:
                if not allow_rf_change and p.replicas is not None and len(p.replicas) != 1:
                    raise KafkaError(
                        ErrorCode.invalid_replication_factor,
                        f"the replication factor would change from 1 to {len(p.replicas)}",
                    )
                await alter_reassignment(broker, t.name, p.partition_index, p.replicas)
                log.info(
                    "reassignment of %s-%d to %s requested by %s",
                    t.name,
                    p.partition_index,
                    p.replicas,
                    client,
                )
            except KafkaError as exc:
                code, message = exc.code, str(exc)
                log.info(
                    "reassignment of %s-%d from %s refused: %s",
                    t.name,
                    p.partition_index,
                    client,
                    message,
                )
            broker.audit.admin(
                client, "AlterPartitionReassignments", "TOPIC", t.name, code.name,
                partition=p.partition_index,
                replicas=None if p.replicas is None else list(p.replicas),
            )  # fmt: skip
            parts.append(
                s.ReassignablePartitionResponse(
                    partition_index=p.partition_index, error_code=code, error_message=message
                )
            )
        topics.append(s.ReassignableTopicResponse(name=t.name, partitions=tuple(parts)))
    return s.AlterPartitionReassignmentsResponse(
        throttle_time=ZERO,
        allow_replication_factor_change=allow_rf_change,
        error_code=ErrorCode.none,
        error_message=None,
        responses=tuple(topics),
    )


async def alter_reassignment(broker: Broker, topic: str, index: int, replicas: Any) -> None:
    """Request (replicas: [node]) or cancel (None) a move; the console uses it too."""
    _topic, part = broker.partition(topic, index)  # UNKNOWN_TOPIC_OR_PARTITION
    cluster = broker.cluster
    owner = broker.node.node_id if cluster is None else part.owner
    if replicas is not None and list(replicas) == [owner]:
        return  # already there: nothing to move, as Kafka accepts a same-replica plan
    if cluster is None:
        raise KafkaError(
            ErrorCode.invalid_replica_assignment,
            "a single-node broker has no other broker to move to",
        )
    if replicas is None:
        if not await cluster.store.cancel_move(topic, index):
            raise KafkaError(
                ErrorCode.no_reassignment_in_progress,
                f"no reassignment of {topic}-{index} in progress",
            )
        return
    if len(replicas) != 1:
        raise KafkaError(
            ErrorCode.invalid_replica_assignment,
            "data lives in the object store: give exactly one broker, the new owner",
        )
    target = int(replicas[0])
    if target not in {b.node_id for b in cluster.live}:
        raise KafkaError(ErrorCode.invalid_replica_assignment, f"broker {target} is not live")
    await cluster.store.request_move(topic, index, target)


async def handle_list_partition_reassignments(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(46, header.api_version)
    if not broker.authorize(client, AclOperation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME):
        return s.ListPartitionReassignmentsResponse(
            throttle_time=ZERO,
            error_code=ErrorCode.cluster_authorization_failed,
            error_message=f"{client.principal} may not DESCRIBE the cluster",
            topics=(),
        )
    wanted: dict[str, set[int]] | None = None
    if body.topics is not None:
        wanted = {t.name: set(t.partition_indexes) for t in body.topics}
    rows = await broker.cluster.store.reassignments() if broker.cluster is not None else []
    by_topic: dict[str, list[Any]] = {}
    for r in rows:
        if r.moved_ms is not None:
            continue  # done
        if wanted is not None and r.partition not in wanted.get(r.topic, set()):
            continue
        source = [] if r.source_node is None else [r.source_node]
        by_topic.setdefault(r.topic, []).append(
            s.OngoingPartitionReassignment(
                partition_index=r.partition,
                replicas=(*source, r.target_node),
                adding_replicas=(r.target_node,),
                removing_replicas=tuple(source),
            )
        )
    return s.ListPartitionReassignmentsResponse(
        throttle_time=ZERO,
        error_code=ErrorCode.none,
        error_message=None,
        topics=tuple(
            s.OngoingTopicReassignment(name=n, partitions=tuple(ps)) for n, ps in by_topic.items()
        ),
    )
