"""ElectLeaders and DescribeQuorum.

A partition has one replica, its owner, so the owner is always the preferred
leader: an election of a partition whose owner is live succeeds at once and
changes nothing (a partition whose owner is gone is given a new one by the
controller, not by an election). The cluster's metadata lives in SQL, not in a
KRaft log; DescribeQuorum answers with the controller as a one-voter quorum and
the other live brokers as observers, so quorum tools show who controls.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType

log = logging.getLogger("shoal.leaders")
ZERO = datetime.timedelta(0)
PREFERRED, UNCLEAN = 0, 1
METADATA_TOPIC = "__cluster_metadata"
UNKNOWN = -1  # offsets and times a SQL metadata store does not have


async def handle_elect_leaders(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(43, header.api_version)
    if not broker.authorize(client, AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
        return s.ElectLeadersResponse(
            throttle_time=ZERO,
            error_code=ErrorCode.cluster_authorization_failed,
            replica_election_results=(),
        )
    election = getattr(body, "election_type", PREFERRED)
    if body.topic_partitions is None:
        asked = [(t.name, [p.partition for p in t.partitions]) for t in broker.topics.all()]
    else:
        asked = [(t.topic, list(t.partitions)) for t in body.topic_partitions]
    live = None if broker.cluster is None else {b.node_id for b in broker.cluster.live}
    results = []
    for name, indexes in asked:
        topic = broker.topics.get(name)
        parts = []
        for index in indexes:
            code, message = ErrorCode.none, None
            if election not in (PREFERRED, UNCLEAN):
                code, message = ErrorCode.invalid_request, f"unknown election type {election}"
            elif topic is None or not 0 <= index < len(topic.partitions):
                code, message = ErrorCode.unknown_topic_or_partition, f"no partition {name}-{index}"
            elif live is not None and topic.partitions[index].owner not in live:
                code = ErrorCode.eligible_leaders_not_available
                message = f"{name}-{index} has no live owner yet; the controller is assigning one"
            parts.append(
                s.PartitionResult(partition_id=index, error_code=code, error_message=message)
            )
        results.append(s.ReplicaElectionResult(topic=name, partition_result=tuple(parts)))
    log.info("elect leaders (type %d) from %s: owners already lead", election, client)
    broker.audit.admin(client, "ElectLeaders", "CLUSTER", CLUSTER_NAME, "none")
    return s.ElectLeadersResponse(
        throttle_time=ZERO, error_code=ErrorCode.none, replica_election_results=tuple(results)
    )


async def handle_describe_quorum(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(55, header.api_version)
    if not broker.authorize(client, AclOperation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME):
        return s.DescribeQuorumResponse(
            error_code=ErrorCode.cluster_authorization_failed,
            error_message=f"{client.principal} may not DESCRIBE the cluster",
            topics=(),
            nodes=(),
        )
    controller = broker.controller_id()
    nodes = await broker.advertised.nodes(broker.live_nodes(), client.listener)

    def replica(node_id: int) -> Any:
        return s.ReplicaState(
            replica_id=node_id,
            replica_directory_id=None,
            log_end_offset=UNKNOWN,
            last_fetch_timestamp=UNKNOWN,
            last_caught_up_timestamp=UNKNOWN,
        )

    topics = []
    for t in body.topics:
        parts = []
        for p in t.partitions:
            if t.topic_name != METADATA_TOPIC or p.partition_index != 0:
                parts.append(
                    s.PartitionData(
                        partition_index=p.partition_index,
                        error_code=ErrorCode.unknown_topic_or_partition,
                        error_message=f"the quorum is {METADATA_TOPIC}-0",
                        leader_id=-1, leader_epoch=-1, high_watermark=-1,
                        current_voters=(), observers=(),
                    )
                )  # fmt: skip
                continue
            parts.append(
                s.PartitionData(
                    partition_index=0,
                    error_code=ErrorCode.none,
                    error_message=None,
                    leader_id=controller,
                    leader_epoch=0,
                    high_watermark=UNKNOWN,
                    current_voters=(replica(controller),) if controller >= 0 else (),
                    observers=tuple(replica(n.node_id) for n in nodes if n.node_id != controller),
                )
            )
        topics.append(s.TopicData(topic_name=t.topic_name, partitions=tuple(parts)))
    voters: tuple[Any, ...] = ()
    if s.has("DescribeQuorumResponse", "nodes"):  # v2+: the voters' endpoints
        voters = tuple(
            s.Node(
                node_id=n.node_id,
                listeners=(s.Listener(name=client.listener, host=n.host, port=n.port),),
            )
            for n in nodes
            if n.node_id == controller
        )
    return s.DescribeQuorumResponse(
        error_code=ErrorCode.none, error_message=None, topics=tuple(topics), nodes=voters
    )
