"""DescribeCluster: the cluster id, controller and brokers."""

from __future__ import annotations

import datetime
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.broker.handlers.authorized import authorized_operations
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, ResourceType


async def handle_describe_cluster(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(60, header.api_version)
    return s.DescribeClusterResponse(
        throttle_time=datetime.timedelta(0),
        error_code=ErrorCode.none,
        error_message=None,
        cluster_id=broker.cluster_id,
        controller_id=broker.controller_id(),
        brokers=tuple(
            # v2 (KIP-1073): only live brokers are listed, so none is fenced
            s.DescribeClusterBroker(
                broker_id=n.node_id, host=n.host, port=n.port, rack=n.rack, is_fenced=False
            )
            for n in await broker.advertised.nodes(broker.live_nodes(), client.listener)
        ),
        cluster_authorized_operations=authorized_operations(
            broker,
            client,
            ResourceType.CLUSTER,
            CLUSTER_NAME,
            bool(getattr(body, "include_cluster_authorized_operations", False)),
        ),
    )
