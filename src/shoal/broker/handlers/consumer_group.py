"""ConsumerGroupHeartbeat and ConsumerGroupDescribe: the consumer group
protocol (KIP-848) at the edge.

The state machine is `shoal.group.consumer`, driven by the coordinator in
`shoal.group.coordinator`; these handlers authorize, translate topic ids (the
wire) to names (the machine, the offsets store) and back, and fold versions.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.broker.handlers.authorized import authorized_operations
from shoal.broker.handlers.groups import NO_AUTHORIZED_OPERATIONS, client_host
from shoal.group.consumer import HeartbeatRequest, RequestError
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import AclOperation, ResourceType

log = logging.getLogger("shoal.groups")
ZERO = datetime.timedelta(0)
MEMBER_TYPE_CLASSIC, MEMBER_TYPE_CONSUMER = 0, 1


def _ms(value: Any) -> int:
    if isinstance(value, datetime.timedelta):
        return int(value.total_seconds() * 1000)
    return int(value)


def _owned(broker: Broker, topic_partitions: Any) -> dict[str, frozenset[int]] | None:
    """Owned partitions by topic name; ids of unknown topics are dropped (the
    topic is gone, so is the partition)."""
    if topic_partitions is None:
        return None
    if not topic_partitions:
        return {}
    names = {t.topic_uuid: t.name for t in broker.topics.all()}
    out: dict[str, frozenset[int]] = {}
    for tp in topic_partitions:
        name = names.get(tp.topic_id)
        if name is not None and tp.partitions:
            out[name] = out.get(name, frozenset()) | frozenset(int(p) for p in tp.partitions)
    return out


def _topic_ids(
    broker: Broker, assignment: Mapping[str, frozenset[int]]
) -> list[tuple[uuid.UUID, str, list[int]]]:
    out = []
    for name in sorted(assignment):
        topic = broker.topics.get(name)
        if topic is not None:
            out.append((topic.topic_uuid, name, sorted(assignment[name])))
    return out


def _hidden(
    broker: Broker, client: Client, group_id: str, member_id: str, regex: str | None
) -> frozenset[str] | None:
    """Topics the member's expression matches that its principal may not
    DESCRIBE (Kafka leaves them out of what a regex subscribes to). None when
    there is no authorizer or no expression."""
    if not broker.authorizer.enabled:
        return None
    if regex is None:
        cg = broker.groups.consumer_group(group_id)
        member = cg.members.get(member_id) if cg is not None else None
        regex = member.topic_regex if member is not None else None
    if not regex:
        return None
    try:
        pattern = broker.groups.consumer.regex(regex)
    except RequestError:
        return None  # the heartbeat itself is refused for it
    return frozenset(
        t.name
        for t in broker.topics.all()
        if pattern.fullmatch(t.name)
        and not broker.authorize(client, AclOperation.DESCRIBE, ResourceType.TOPIC, t.name, False)
    )


async def handle_consumer_group_heartbeat(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(68, header.api_version)
    groups = broker.groups
    interval = datetime.timedelta(milliseconds=groups.consumer.config.heartbeat_interval_ms)

    def refuse(code: ErrorCode, message: str) -> Any:
        log.info(
            "consumer group heartbeat for group %s from %s refused: %s (%s)",
            body.group_id,
            client,
            code.name,
            message,
        )
        return s.ConsumerGroupHeartbeatResponse(
            throttle_time=ZERO,
            error_code=code,
            error_message=message,
            member_id=body.member_id or None,
            member_epoch=-1,
            heartbeat_interval=interval,
            assignment=None,
        )

    if not broker.authorize(client, AclOperation.READ, ResourceType.GROUP, body.group_id):
        return refuse(ErrorCode.group_authorization_failed, "not authorized on the group")
    names = body.subscribed_topic_names
    if names is not None:
        denied = [
            n
            for n in names
            if not broker.authorize(client, AclOperation.DESCRIBE, ResourceType.TOPIC, n)
        ]
        if denied:
            return refuse(
                ErrorCode.topic_authorization_failed,
                f"not authorized to describe topics {', '.join(sorted(denied))}",
            )
    member_id = body.member_id
    if header.api_version == 0 and not member_id and int(body.member_epoch) == 0:
        member_id = str(uuid.uuid4())  # v0: the coordinator names new members
    regex = getattr(body, "subscribed_topic_regex", None)
    req = HeartbeatRequest(
        group_id=body.group_id,
        member_id=member_id,
        member_epoch=int(body.member_epoch),
        instance_id=body.instance_id,
        rack_id=body.rack_id,
        rebalance_timeout_ms=_ms(body.rebalance_timeout),
        subscribed_topic_names=tuple(names) if names is not None else None,
        subscribed_topic_regex=regex,
        hidden_topics=_hidden(broker, client, body.group_id, member_id, regex),
        server_assignor=body.server_assignor,
        owned=_owned(broker, body.topic_partitions),
        client_id=client.client_id or "",
        client_host=client_host(client),
    )
    r = groups.consumer_heartbeat(req)
    assignment = None
    if r.assignment is not None:
        assignment = s.Assignment(
            topic_partitions=tuple(
                s.TopicPartitions(topic_id=tid, partitions=tuple(parts))
                for tid, _name, parts in _topic_ids(broker, r.assignment)
            )
        )
    return s.ConsumerGroupHeartbeatResponse(
        throttle_time=ZERO,
        error_code=r.error,
        error_message=r.message,
        member_id=r.member_id,
        member_epoch=r.member_epoch,
        heartbeat_interval=datetime.timedelta(milliseconds=r.heartbeat_interval_ms),
        assignment=assignment,
    )


async def handle_consumer_group_describe(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """A group that does not exist, or is a classic group, is GROUP_ID_NOT_FOUND
    (as Kafka answers)."""
    s = Schema(69, header.api_version)
    include_ops = bool(body.include_authorized_operations)

    def assignment(parts: Mapping[str, frozenset[int]]) -> Any:
        return s.Assignment(
            topic_partitions=tuple(
                s.TopicPartitions(topic_id=tid, topic_name=name, partitions=tuple(ps))
                for tid, name, ps in _topic_ids(broker, parts)
            )
        )

    def failed(gid: str, code: ErrorCode, message: str | None) -> Any:
        return s.DescribedGroup(
            error_code=code,
            error_message=message,
            group_id=gid,
            group_state="",
            group_epoch=-1,
            assignment_epoch=-1,
            assignor_name="",
            members=(),
            authorized_operations=NO_AUTHORIZED_OPERATIONS,
        )

    out = []
    for gid in body.group_ids:
        if not broker.authorize(client, AclOperation.DESCRIBE, ResourceType.GROUP, gid):
            out.append(failed(gid, ErrorCode.group_authorization_failed, None))
            continue
        if not gid:
            out.append(failed(gid, ErrorCode.invalid_group_id, "GroupId can't be empty."))
            continue
        gated = broker.groups.gate(gid)
        if gated is not None:
            out.append(failed(gid, gated, None))
            continue
        cg = broker.groups.consumer_group(gid)
        if cg is None:
            kind = "is not a consumer group" if broker.groups.group_type(gid) else "not found"
            out.append(failed(gid, ErrorCode.group_id_not_found, f"Group {gid} {kind}."))
            continue
        out.append(
            s.DescribedGroup(
                error_code=ErrorCode.none,
                error_message=None,
                group_id=gid,
                group_state=cg.state.value,
                group_epoch=cg.epoch,
                assignment_epoch=cg.assignment_epoch,
                assignor_name=cg.assignor,
                members=tuple(
                    s.Member(
                        member_id=m.member_id,
                        instance_id=m.instance_id,
                        rack_id=m.rack_id,
                        member_epoch=m.epoch,
                        client_id=m.client_id,
                        client_host=m.client_host,
                        subscribed_topic_names=m.topic_names,
                        subscribed_topic_regex=m.topic_regex,
                        assignment=assignment(m.assigned),
                        target_assignment=assignment(cg.target.get(m.member_id, {})),
                        member_type=MEMBER_TYPE_CONSUMER
                        if m.classic is None
                        else MEMBER_TYPE_CLASSIC,
                    )
                    for m in cg.members.values()
                ),
                authorized_operations=authorized_operations(
                    broker, client, ResourceType.GROUP, gid, include_ops
                ),
            )
        )
    return s.ConsumerGroupDescribeResponse(throttle_time=ZERO, groups=tuple(out))
