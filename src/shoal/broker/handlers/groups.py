"""FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, ListGroups,
DescribeGroups and DeleteGroups: the classic group protocol at the edge.

The state machine is `shoal.group.coordinator`; these handlers translate
versions in and out. JoinGroup and SyncGroup wait for the rest of the group,
so they answer through `Deferred` and the connection keeps reading (a client
may heartbeat on the same connection meanwhile).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

from shoal.broker.broker import DENIED, Broker
from shoal.broker.handlers import Client, Deferred
from shoal.broker.handlers.authorized import authorized_operations
from shoal.group.coordinator import (
    CONSUMER,
    GroupSummary,
    JoinRequest,
    JoinResult,
    MemberSummary,
    SyncResult,
)
from shoal.group.embedded import encode_assignment, encode_subscription
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType

log = logging.getLogger("shoal.groups")
ZERO = datetime.timedelta(0)

KEY_GROUP, KEY_TRANSACTION = 0, 1
NO_AUTHORIZED_OPERATIONS = -(2**31)


def client_host(client: Client) -> str:
    """Kafka reports member hosts as `/ADDRESS`."""
    host = client.peer.rpartition(":")[0] or client.peer
    return f"/{host.strip('[]')}"


def _ms(value: Any) -> int:
    if isinstance(value, datetime.timedelta):
        return int(value.total_seconds() * 1000)
    return int(value)


async def handle_find_coordinator(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """One node alone coordinates everything; a cluster hashes each key to a
    live broker (rendezvous hashing, see shoal.cluster.member)."""
    s = Schema(10, header.api_version)
    key_type = int(getattr(body, "key_type", KEY_GROUP))
    keys = list(body.coordinator_keys) if header.api_version >= 4 else [body.key]
    code, message = ErrorCode.none, None
    if key_type not in (KEY_GROUP, KEY_TRANSACTION):
        code, message = ErrorCode.invalid_request, f"unknown coordinator key type {key_type}"
        log.info("FindCoordinator from %s: %s", client, message)
    node = broker.coordinator_node(keys[0]) if keys else broker.node
    (node,) = await broker.advertised.nodes([node], client.listener)
    codes = [
        code if code != ErrorCode.none else _may_find(broker, client, key_type, k) for k in keys
    ]
    if keys and codes[0] != ErrorCode.none:
        code = codes[0]
    found = code == ErrorCode.none
    if header.api_version >= 4:
        nodes = await broker.advertised.nodes(
            [broker.coordinator_node(key) for key in keys], client.listener
        )
        return s.FindCoordinatorResponse(
            throttle_time=ZERO,
            coordinators=tuple(
                s.Coordinator(
                    key=key,
                    node_id=n.node_id if c == ErrorCode.none else -1,
                    host=n.host if c == ErrorCode.none else "",
                    port=n.port if c == ErrorCode.none else -1,
                    error_code=c,
                    error_message=message,
                )
                for key, n, c in zip(keys, nodes, codes, strict=True)
            ),
        )
    return s.FindCoordinatorResponse(
        throttle_time=ZERO,
        error_code=code,
        error_message=message,
        node_id=node.node_id if found else -1,
        host=node.host if found else "",
        port=node.port if found else -1,
    )


def _may_find(broker: Broker, client: Client, key_type: int, key: str) -> ErrorCode:
    """Kafka: DESCRIBE on the group (or transactional id) to find its coordinator."""
    if key_type == KEY_TRANSACTION:
        rtype = ResourceType.TRANSACTIONAL_ID
    else:
        rtype = ResourceType.GROUP
    if broker.authorize(client, AclOperation.DESCRIBE, rtype, key):
        return ErrorCode.none
    return DENIED[rtype]


def _may(broker: Broker, client: Client, op: AclOperation, group_id: str) -> bool:
    return broker.authorize(client, op, ResourceType.GROUP, group_id)


async def handle_join_group(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(11, header.api_version)
    if not _may(broker, client, AclOperation.READ, body.group_id):
        return s.JoinGroupResponse(
            throttle_time=ZERO,
            error_code=ErrorCode.group_authorization_failed,
            generation_id=-1,
            protocol_type=None,
            protocol_name=None if s.version >= 7 else "",
            leader="",
            skip_assignment=False,
            member_id=body.member_id,
            members=(),
        )
    version = header.api_version
    session_ms = _ms(body.session_timeout)
    rebalance_ms = _ms(getattr(body, "rebalance_timeout", session_ms))
    req = JoinRequest(
        group_id=body.group_id,
        member_id=body.member_id,
        group_instance_id=getattr(body, "group_instance_id", None),
        client_id=client.client_id or "",
        client_host=client_host(client),
        session_timeout_ms=session_ms,
        rebalance_timeout_ms=rebalance_ms if rebalance_ms > 0 else session_ms,
        protocol_type=body.protocol_type,
        protocols=tuple((p.name, bytes(p.metadata)) for p in body.protocols),
        require_known_member_id=version >= 4,
        supports_skip_assignment=version >= 9,
        reason=getattr(body, "reason", None),
    )
    fut = broker.groups.join(req)
    return Deferred(_join_response(s, fut))


async def _join_response(s: Schema, fut: asyncio.Future[JoinResult]) -> Any:
    r = await asyncio.shield(fut)
    nullable_name = s.version >= 7
    return s.JoinGroupResponse(
        throttle_time=ZERO,
        error_code=r.error,
        generation_id=r.generation,
        protocol_type=r.protocol_type,
        protocol_name=r.protocol_name if nullable_name else (r.protocol_name or ""),
        leader=r.leader,
        skip_assignment=r.skip_assignment,
        member_id=r.member_id,
        members=tuple(
            s.JoinGroupResponseMember(
                member_id=m.member_id,
                group_instance_id=m.group_instance_id,
                metadata=m.metadata,
            )
            for m in r.members
        ),
    )


async def handle_sync_group(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(14, header.api_version)
    if not _may(broker, client, AclOperation.READ, body.group_id):
        return s.SyncGroupResponse(
            throttle_time=ZERO,
            error_code=ErrorCode.group_authorization_failed,
            protocol_type=None,
            protocol_name=None,
            assignment=b"",
        )
    assignments: dict[str, bytes] = {}
    for a in body.assignments:
        assignments[a.member_id] = bytes(a.assignment)
    fut = broker.groups.sync(
        body.group_id,
        int(body.generation_id),
        body.member_id,
        getattr(body, "group_instance_id", None),
        getattr(body, "protocol_type", None),
        getattr(body, "protocol_name", None),
        assignments,
    )
    return Deferred(_sync_response(s, fut))


async def _sync_response(s: Schema, fut: asyncio.Future[SyncResult]) -> Any:
    r = await asyncio.shield(fut)
    return s.SyncGroupResponse(
        throttle_time=ZERO,
        error_code=r.error,
        protocol_type=r.protocol_type,
        protocol_name=r.protocol_name,
        assignment=r.assignment,
    )


async def handle_heartbeat(broker: Broker, client: Client, header: RequestHeader, body: Any) -> Any:
    s = Schema(12, header.api_version)
    if not _may(broker, client, AclOperation.READ, body.group_id):
        return s.HeartbeatResponse(
            throttle_time=ZERO, error_code=ErrorCode.group_authorization_failed
        )
    code = broker.groups.heartbeat(
        body.group_id,
        int(body.generation_id),
        body.member_id,
        getattr(body, "group_instance_id", None),
    )
    return s.HeartbeatResponse(throttle_time=ZERO, error_code=code)


async def handle_leave_group(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """v0-2 name one member; v3+ a batch, each with its own error."""
    s = Schema(13, header.api_version)
    if not _may(broker, client, AclOperation.READ, body.group_id):
        return s.LeaveGroupResponse(
            throttle_time=ZERO, error_code=ErrorCode.group_authorization_failed, members=()
        )
    if header.api_version >= 3:
        leaving = [(m.member_id, m.group_instance_id) for m in body.members]
    else:
        leaving = [(body.member_id, None)]
    code, results = broker.groups.leave(body.group_id, leaving, str(client))
    if header.api_version < 3:
        return s.LeaveGroupResponse(
            throttle_time=ZERO, error_code=code if code != ErrorCode.none else results[0]
        )
    return s.LeaveGroupResponse(
        throttle_time=ZERO,
        error_code=code,
        members=tuple(
            s.MemberResponse(member_id=mid, group_instance_id=iid, error_code=err)
            for (mid, iid), err in zip(leaving, results, strict=True)
        ),
    )


async def handle_list_groups(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(16, header.api_version)
    states = tuple(getattr(body, "states_filter", ()) or ())
    types = tuple(getattr(body, "types_filter", ()) or ())
    everything = broker.authorize(
        client, AclOperation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME, False
    )
    return s.ListGroupsResponse(
        throttle_time=ZERO,
        error_code=ErrorCode.none,
        groups=tuple(
            s.ListedGroup(group_id=gid, protocol_type=ptype, group_state=state, group_type=kind)
            for gid, ptype, state, kind in broker.groups.list_groups(states, types)
            if everything
            or broker.authorize(client, AclOperation.DESCRIBE, ResourceType.GROUP, gid, False)
        ),
    )


async def handle_describe_groups(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """Unknown groups are described as Dead with no error, as Kafka does; a
    consumer-protocol group as a classic one would be (Kafka 4: protocol type
    `consumer`, members' subscriptions and assignments in the classic
    consumer protocol's encoding)."""
    s = Schema(15, header.api_version)
    out = []
    for gid in body.groups:
        if not _may(broker, client, AclOperation.DESCRIBE, gid):
            out.append(
                s.DescribedGroup(
                    error_code=ErrorCode.group_authorization_failed,
                    group_id=gid,
                    group_state="",
                    protocol_type="",
                    protocol_data="",
                    members=(),
                    authorized_operations=NO_AUTHORIZED_OPERATIONS,
                )
            )
            continue
        g = describe_consumer_group(broker, gid) or broker.groups.describe(gid)
        out.append(
            s.DescribedGroup(
                error_code=ErrorCode.none if gid else ErrorCode.invalid_group_id,
                error_message=None,
                group_id=gid,
                group_state=g.state,
                protocol_type=g.protocol_type,
                protocol_data=g.protocol_data,
                members=tuple(
                    s.DescribedGroupMember(
                        member_id=m.member_id,
                        group_instance_id=m.group_instance_id,
                        client_id=m.client_id,
                        client_host=m.client_host,
                        member_metadata=m.metadata,
                        member_assignment=m.assignment,
                    )
                    for m in g.members
                ),
                authorized_operations=authorized_operations(
                    broker,
                    client,
                    ResourceType.GROUP,
                    gid,
                    bool(getattr(body, "include_authorized_operations", False)),
                ),
            )
        )
    return s.DescribeGroupsResponse(throttle_time=ZERO, groups=tuple(out))


def describe_consumer_group(broker: Broker, group_id: str) -> GroupSummary | None:
    """A consumer-protocol group in DescribeGroups' terms, None if it is not one."""
    cg = broker.groups.consumer_group(group_id)
    if cg is None:
        return None
    topics = broker.groups.consumer.subscribed_topics(group_id)
    return GroupSummary(
        group_id,
        cg.state.value,
        CONSUMER,
        cg.assignor,
        tuple(
            MemberSummary(
                m.member_id,
                m.instance_id,
                m.client_id,
                m.client_host,
                encode_subscription(sorted(t for t in m.topic_names if t in topics)),
                encode_assignment(m.assigned),
            )
            for m in cg.members.values()
        ),
    )


async def handle_delete_groups(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(42, header.api_version)
    names = list(body.groups_names)
    allowed = [n for n in names if _may(broker, client, AclOperation.DELETE, n)]
    done = dict(zip(allowed, await broker.groups.delete_groups(allowed), strict=True))
    codes = [done.get(n, ErrorCode.group_authorization_failed) for n in names]
    for name, code in zip(names, codes, strict=True):
        broker.audit.admin(client, "DeleteGroups", "GROUP", name, code.name)
        if code != ErrorCode.none:
            log.info("delete group %r from %s: %s", name, client, code.name)
    return s.DeleteGroupsResponse(
        throttle_time=ZERO,
        results=tuple(
            s.DeletableGroupResult(group_id=name, error_code=code)
            for name, code in zip(names, codes, strict=True)
        ),
    )
