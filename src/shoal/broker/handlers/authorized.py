"""The authorized-operations bit sets of Metadata, DescribeCluster,
DescribeGroups and DescribeTopicPartitions: bit N set when the client may do
AclOperation N on the resource, over the operations Kafka lists for its type."""

from __future__ import annotations

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.security.acls import AclOperation, ResourceType

#: what Kafka answers when the client did not ask for the bits
NOT_REQUESTED = -(2**31)

_OPS = AclOperation
SUPPORTED: dict[ResourceType, tuple[AclOperation, ...]] = {
    ResourceType.TOPIC: (
        _OPS.READ, _OPS.WRITE, _OPS.CREATE, _OPS.DESCRIBE, _OPS.DELETE, _OPS.ALTER,
        _OPS.DESCRIBE_CONFIGS, _OPS.ALTER_CONFIGS,
    ),
    ResourceType.GROUP: (_OPS.READ, _OPS.DESCRIBE, _OPS.DELETE),
    ResourceType.CLUSTER: (
        _OPS.CREATE, _OPS.CLUSTER_ACTION, _OPS.DESCRIBE_CONFIGS, _OPS.ALTER_CONFIGS,
        _OPS.IDEMPOTENT_WRITE, _OPS.ALTER, _OPS.DESCRIBE,
    ),
}  # fmt: skip


def authorized_operations(
    broker: Broker, client: Client, rtype: ResourceType, name: str, requested: bool = True
) -> int:
    """The bit set for one resource (all of its operations without an authorizer)."""
    if not requested:
        return NOT_REQUESTED
    bits = 0
    for op in SUPPORTED[rtype]:
        if broker.authorize(client, op, rtype, name, False):
            bits |= 1 << int(op)
    return bits
