"""What an operator may change from the console, each authorized as the
Kafka API doing the same would authorize it (same ACLs, same audit trail):

| action | Kafka API equivalent | permission |
| --- | --- | --- |
| create a topic | CreateTopics | CREATE on the cluster or the topic |
| change a topic config | IncrementalAlterConfigs | ALTER_CONFIGS on the topic |
| reset a group's offsets | OffsetCommit | READ on the group and the topic |
| move a partition | AlterPartitionReassignments | ALTER on the cluster |
| drain a broker | (shoal cluster drain) | ALTER on the cluster |
| abort an open transaction | InitProducerId (a new incarnation) | WRITE on the transactional id |

Bad input raises ActionError with a message naming the bad value; a denial
raises Denied. Nothing here parses HTTP: the app passes plain strings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from shoal.broker.broker import Broker
from shoal.broker.handlers.reassignments import alter_reassignment
from shoal.console.auth import ConsoleUser
from shoal.console.data import bounds
from shoal.group.offsets import CommittedOffset
from shoal.meta.cluster import ClusterStore
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType
from shoal.storage.errors import StorageError
from shoal.txn.state import TxnError

log = logging.getLogger("shoal.console.actions")


class ActionError(ValueError):
    """Bad input or a refusal by the broker; the message says which."""


class Denied(ActionError):
    """The user's principal may not do this."""


def _int(form: Mapping[str, str], name: str, lo: int | None = None) -> int:
    raw = (form.get(name) or "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise ActionError(f"{name}: {raw!r} is not a whole number") from None
    if lo is not None and value < lo:
        raise ActionError(f"{name}: {value} must be at least {lo}")
    return value


def _text(form: Mapping[str, str], name: str) -> str:
    value = (form.get(name) or "").strip()
    if not value:
        raise ActionError(f"{name} is required")
    return value


def _require(
    broker: Broker, who: ConsoleUser, op: AclOperation, rtype: ResourceType, name: str
) -> None:
    if not broker.authorize(who, op, rtype, name):
        raise Denied(f"{who.principal} may not {op.name} {rtype.name} {name!r}")


def _done(
    broker: Broker, who: ConsoleUser, action: str, rtype: str, name: str, **kv: object
) -> None:
    broker.audit.admin(who, action, rtype, name, "NONE", **kv)
    log.info("console: %s %s %r by %s %s", action, rtype, name, who, kv or "")


def _kafka(exc: KafkaError) -> ActionError:
    return ActionError(f"{exc.code.name.upper()}: {exc}")


def parse_configs(raw: str) -> dict[str, str | None]:
    """`key=value` per line (or comma-separated) -> dict; names the bad line."""
    out: dict[str, str | None] = {}
    for line in raw.replace(",", "\n").splitlines():
        line = line.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ActionError(f"config {line!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


async def create_topic(broker: Broker, who: ConsoleUser, form: Mapping[str, str]) -> str:
    name = _text(form, "name")
    partitions = _int(form, "partitions", 1)
    configs = parse_configs(form.get("configs", ""))
    if not broker.authorize(who, AclOperation.CREATE, ResourceType.CLUSTER, CLUSTER_NAME, False):
        _require(broker, who, AclOperation.CREATE, ResourceType.TOPIC, name)
    try:
        await broker.topics.create(name, partitions, configs)
    except KafkaError as exc:
        raise _kafka(exc) from None
    _done(broker, who, "CreateTopics", "TOPIC", name, partitions=partitions, configs=configs)
    return f"created topic {name} with {partitions} partition{'' if partitions == 1 else 's'}"


async def alter_topic_config(broker: Broker, who: ConsoleUser, form: Mapping[str, str]) -> str:
    topic = _text(form, "topic")
    key = _text(form, "key")
    value = (form.get("value") or "").strip()
    if broker.topics.get(topic) is None:
        raise ActionError(f"no topic {topic!r}")
    _require(broker, who, AclOperation.ALTER_CONFIGS, ResourceType.TOPIC, topic)
    try:
        if value:
            await broker.topics.alter_configs(topic, {key: value}, [], replace=False)
        else:
            await broker.topics.alter_configs(topic, {}, [key], replace=False)
    except KafkaError as exc:
        raise _kafka(exc) from None
    _done(broker, who, "IncrementalAlterConfigs", "TOPIC", topic, configs={key: value or None})
    return f"{topic}: {key} = {value}" if value else f"{topic}: {key} back to its default"


async def reset_offsets(broker: Broker, who: ConsoleUser, form: Mapping[str, str]) -> str:
    """Set every committed partition of one topic (or one partition) of an
    empty group to the earliest, the latest or a given offset."""
    group = _text(form, "group")
    topic_name = _text(form, "topic")
    to = _text(form, "to")
    only = (form.get("partition") or "").strip()
    topic = broker.topics.get(topic_name)
    if topic is None:
        raise ActionError(f"no topic {topic_name!r}")
    parts = topic.partitions
    if only:
        index = _int(form, "partition", 0)
        if index >= len(parts):
            raise ActionError(f"partition: topic {topic_name!r} has no partition {index}")
        parts = [parts[index]]
    if to not in ("earliest", "latest"):
        _int(form, "to", 0)
    _require(broker, who, AclOperation.READ, ResourceType.GROUP, group)
    _require(broker, who, AclOperation.READ, ResourceType.TOPIC, topic_name)
    code = broker.groups.check_commit(group, -1, "", None)
    if code != ErrorCode.none:
        if code == ErrorCode.unknown_member_id:
            raise ActionError(f"group {group!r} has active members: stop its consumers first")
        raise ActionError(f"group {group!r}: {code.name.upper()}")
    now = int(time.time() * 1000)
    entries = {}
    for p in parts:
        start, end = await bounds(broker, p)
        offset = start if to == "earliest" else end if to == "latest" else int(to)
        if not start <= offset <= end:
            raise ActionError(
                f"to: offset {offset} is outside {topic_name}-{p.partition}'s {start}..{end}"
            )
        entries[(topic_name, p.partition)] = CommittedOffset(offset, -1, "", now)
    await broker.groups.commit(group, entries)
    _done(broker, who, "OffsetCommit", "GROUP", group, topic=topic_name, to=to)
    n = len(entries)
    return f"group {group}: {n} partition{'' if n == 1 else 's'} of {topic_name} reset to {to}"


async def move_partition(broker: Broker, who: ConsoleUser, form: Mapping[str, str]) -> str:
    topic = _text(form, "topic")
    partition = _int(form, "partition", 0)
    target = _int(form, "to", 0)
    _require(broker, who, AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME)
    try:
        await alter_reassignment(broker, topic, partition, [target])
    except KafkaError as exc:
        raise _kafka(exc) from None
    _done(
        broker, who, "AlterPartitionReassignments", "TOPIC", topic, partition=partition, to=target
    )
    return f"move of {topic}-{partition} to broker {target} requested"


async def drain_broker(broker: Broker, who: ConsoleUser, form: Mapping[str, str]) -> str:
    node = _int(form, "node", 0)
    undo = form.get("undo") == "1"
    _require(broker, who, AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME)
    if broker.cluster is None:
        raise ActionError("a single-node broker has no other broker to drain to")
    if not await ClusterStore(broker.meta).set_draining(node, not undo):
        raise ActionError(f"node: broker {node} is not registered")
    _done(broker, who, "DrainBroker", "CLUSTER", str(node), undo=undo)
    return f"broker {node} takes partitions again" if undo else f"broker {node} draining"


async def abort_transaction(broker: Broker, who: ConsoleUser, form: Mapping[str, str]) -> str:
    """End a hanging transaction the way a restarted producer does: a new
    incarnation of the transactional id (InitProducerId) bumps its epoch,
    aborts what the old one left open and fences it. Only on the id's
    coordinator, and only an Ongoing transaction (one being committed or
    aborted is finished by the coordinator itself)."""
    tid = _text(form, "transactional_id")
    _require(broker, who, AclOperation.WRITE, ResourceType.TRANSACTIONAL_ID, tid)
    node = broker.coordinator_node(tid).node_id
    if node != broker.node.node_id:
        raise ActionError(
            f"transactional_id: {tid!r} is coordinated by broker {node}: use its console"
        )
    try:
        a = await broker.txn.abort_open(tid)
    except TxnError as exc:
        raise ActionError(f"transactional_id: {exc}") from None
    except (StorageError, OSError) as exc:
        raise ActionError(f"could not abort {tid!r} now ({exc}); try again") from None
    parts = ", ".join(f"{t}-{p}" for t, p in a.partitions) or "no partitions"
    _done(broker, who, "InitProducerId", "TRANSACTIONAL_ID", tid, aborted=True,
          producer_id=a.producer_id, producer_epoch=a.producer_epoch)  # fmt: skip
    return (
        f"aborted the open transaction of {tid} on {parts}; producer {a.producer_id} epoch "
        f"{a.producer_epoch} is fenced (the id is now producer {a.new_producer_id} epoch "
        f"{a.new_epoch})"
    )


ACTIONS = {
    "create-topic": create_topic,
    "alter-config": alter_topic_config,
    "reset-offsets": reset_offsets,
    "move-partition": move_partition,
    "drain-broker": drain_broker,
    "abort-transaction": abort_transaction,
}
