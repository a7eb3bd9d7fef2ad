"""The consumer group protocol (KIP-848): a state machine per group, sans-IO.

Where the classic protocol (`shoal.group.coordinator`) stops the whole group
for every change and lets a client compute the assignment, here the
coordinator computes a *target assignment* with a server-side assignor and
moves each member towards it on its own heartbeats:

- Every change of membership or subscriptions bumps the **group epoch**; the
  target is recomputed for it (its **assignment epoch**).
- A member converges through `reconcile`: it keeps what it has of its target,
  is asked to revoke the rest (UNREVOKED_PARTITIONS, same member epoch), and
  only once it no longer reports them does it move to the target epoch and
  receive new partitions — and among those, only the ones no other member
  still holds (UNRELEASED_PARTITIONS until they are freed). So a partition
  never has two owners, and members that keep their partitions never stop.
- A member's epoch fences it: a heartbeat or commit with another epoch is
  refused (FENCED_MEMBER_EPOCH, STALE_MEMBER_EPOCH).
- Session timeout (broker config, not the client's) and the member's rebalance
  timeout (time allowed to revoke) remove members; a static member (instance
  id) that leaves with epoch -2 keeps its partitions for the session timeout,
  and a restart with the same instance id takes them over without a rebalance.

No sockets, no event loop: calls carry the time (`now`, milliseconds on any
monotonic clock) and `next_deadline`/`expire` let a driver run the timers.
"""

from __future__ import annotations

import heapq
import logging
import re
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from shoal.group.assignors import ASSIGNORS, Assignment, MemberSpec
from shoal.group.embedded import (
    MalformedProtocol,
    encode_assignment,
    read_assignment,
    read_subscription,
)
from shoal.protocol.errors import ErrorCode

log = logging.getLogger("shoal.groups")

LEAVE_EPOCH = -1
LEAVE_STATIC_EPOCH = -2


class GroupState(StrEnum):
    EMPTY = "Empty"
    ASSIGNING = "Assigning"
    RECONCILING = "Reconciling"
    STABLE = "Stable"
    DEAD = "Dead"


class MigrationPolicy(StrEnum):
    """`group.consumer.migration.policy`: which online conversions of a group
    with members are allowed (KIP-848's migration between the protocols)."""

    BIDIRECTIONAL = "bidirectional"
    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    DISABLED = "disabled"

    @property
    def upgrade(self) -> bool:
        return self in (MigrationPolicy.BIDIRECTIONAL, MigrationPolicy.UPGRADE)

    @property
    def downgrade(self) -> bool:
        return self in (MigrationPolicy.BIDIRECTIONAL, MigrationPolicy.DOWNGRADE)


class MemberState(StrEnum):
    STABLE = "stable"
    UNREVOKED = "unrevoked_partitions"
    UNRELEASED = "unreleased_partitions"


@dataclass(frozen=True, slots=True)
class ConsumerGroupConfig:
    """`group.consumer.*` broker configs (Kafka's names and defaults)."""

    session_timeout_ms: int = 45_000
    heartbeat_interval_ms: int = 5_000
    max_size: int = 2**31 - 1
    assignors: tuple[str, ...] = ("uniform", "range")
    migration_policy: MigrationPolicy = MigrationPolicy.BIDIRECTIONAL

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ConsumerGroupConfig:
        return cls(
            session_timeout_ms=int(cfg["group.consumer.session.timeout.ms"]),
            heartbeat_interval_ms=int(cfg["group.consumer.heartbeat.interval.ms"]),
            max_size=int(cfg["group.consumer.max.size"]),
            assignors=parse_assignors(str(cfg["group.consumer.assignors"])),
            migration_policy=MigrationPolicy(str(cfg["group.consumer.migration.policy"]).lower()),
        )


def parse_assignors(value: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in value.split(",") if a.strip())


class Catalog(Protocol):
    """The topics a group may subscribe to: name -> (topic id, partitions)."""

    def topic(self, name: str) -> tuple[uuid.UUID, int] | None: ...

    def names(self) -> Iterable[str]: ...


class RequestError(Exception):
    """A heartbeat refused with a Kafka error code and a message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class HeartbeatRequest:
    """ConsumerGroupHeartbeat, versions folded: None means "unchanged"."""

    group_id: str
    member_id: str
    member_epoch: int
    instance_id: str | None = None
    rack_id: str | None = None
    rebalance_timeout_ms: int = -1
    subscribed_topic_names: tuple[str, ...] | None = None
    subscribed_topic_regex: str | None = None
    server_assignor: str | None = None
    owned: Mapping[str, frozenset[int]] | None = None
    # Topics its expression matches that the member may not see (its principal
    # lacks DESCRIBE): never assigned to it. None: unchanged.
    hidden_topics: frozenset[str] | None = None
    client_id: str = ""
    client_host: str = ""


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    error: ErrorCode
    message: str | None
    member_id: str
    member_epoch: int
    heartbeat_interval_ms: int
    assignment: Assignment | None = None  # None: unchanged since the last answer


@dataclass(frozen=True, slots=True)
class ClassicMeta:
    """A member speaking the classic protocol (JoinGroup, SyncGroup, Heartbeat)
    inside a consumer group: its own session timeout and the protocols it
    joined with (their names and embedded subscriptions)."""

    session_timeout_ms: int
    protocols: tuple[tuple[str, bytes], ...]

    @property
    def protocol_name(self) -> str:
        return self.protocols[0][0]

    @property
    def version(self) -> int:
        """Its embedded subscription's version, at which it gets assignments."""
        data = self.protocols[0][1]
        return int.from_bytes(data[:2], "big", signed=True) if len(data) >= 2 else 0


@dataclass(frozen=True, slots=True)
class ClassicJoin:
    """A classic JoinGroup to a consumer group, its subscription parsed."""

    group_id: str
    member_id: str
    instance_id: str | None
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]
    require_known_member_id: bool = True
    client_id: str = ""
    client_host: str = ""


@dataclass(frozen=True, slots=True)
class ClassicJoinResult:
    error: ErrorCode
    member_id: str
    generation: int = -1
    protocol_name: str | None = None


@dataclass(frozen=True, slots=True)
class ClassicSnapshot:
    """A classic group's member as it stands when the group converts."""

    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: tuple[tuple[str, bytes], ...]
    subscription: bytes  # its metadata for the group's chosen protocol
    assignment: bytes  # its last SyncGroup assignment


@dataclass(eq=False, slots=True)
class ConsumerMember:
    member_id: str
    instance_id: str | None = None
    rack_id: str | None = None
    client_id: str = ""
    client_host: str = ""
    rebalance_timeout_ms: int = 300_000
    topic_names: tuple[str, ...] = ()
    topic_regex: str | None = None
    hidden_topics: frozenset[str] = frozenset()
    server_assignor: str | None = None
    epoch: int = 0
    previous_epoch: int = -1
    state: MemberState = MemberState.STABLE
    assigned: Assignment = field(default_factory=dict)
    pending_revocation: Assignment = field(default_factory=dict)
    session_deadline: int = 0
    revocation_deadline: int | None = None
    classic: ClassicMeta | None = None  # None: it speaks the consumer protocol
    # A classic member told to rejoin, or that joined, must rejoin or sync
    # within its rebalance timeout (Kafka's join and sync timeouts).
    classic_deadline: int | None = None
    classic_awaited: str = ""

    def holds(self) -> set[tuple[str, int]]:
        """Partitions it may still be consuming: assigned or being revoked."""
        out = {(t, p) for t, ps in self.assigned.items() for p in ps}
        out.update((t, p) for t, ps in self.pending_revocation.items() for p in ps)
        return out


@dataclass(eq=False, slots=True)
class ConsumerGroup:
    group_id: str
    epoch: int = 0
    assignment_epoch: int = 0
    assignor: str = ""
    members: dict[str, ConsumerMember] = field(default_factory=dict)
    static: dict[str, str] = field(default_factory=dict)  # instance id -> member id
    target: dict[str, Assignment] = field(default_factory=dict)
    owners: dict[tuple[str, int], str] = field(default_factory=dict)
    topics: tuple[tuple[str, str, int], ...] = ()  # (name, id, partitions) assigned from
    state_ms: int = 0  # wall clock of becoming empty (offset expiry), set by the driver
    # (group epoch, topic names, expressions) of all members: see subscribed()
    subscriptions: tuple[int, frozenset[str], frozenset[str]] | None = None

    @property
    def state(self) -> GroupState:
        if not self.members:
            return GroupState.EMPTY
        if self.epoch != self.assignment_epoch:
            return GroupState.ASSIGNING
        for m in self.members.values():
            if m.epoch != self.assignment_epoch or m.state is not MemberState.STABLE:
                return GroupState.RECONCILING
        return GroupState.STABLE

    def subscribed(self, catalog: Catalog, regexes: Mapping[str, re.Pattern[str]]) -> set[str]:
        """Existing topics any member subscribes to, by name or expression.
        Called on every heartbeat: the members' union is cached per group epoch
        (every membership or subscription change bumps it), so a heartbeat
        costs the subscribed topics, not the members (plus the catalog's names
        when a member subscribes by expression)."""
        if self.subscriptions is None or self.subscriptions[0] != self.epoch:
            members = self.members.values()
            self.subscriptions = (
                self.epoch,
                frozenset(t for m in members for t in m.topic_names),
                frozenset(m.topic_regex for m in members if m.topic_regex),
            )
        _epoch, names, patterns = self.subscriptions
        out = {n for n in names if catalog.topic(n) is not None}
        if patterns:
            compiled = [regexes[p] for p in patterns]
            out.update(n for n in catalog.names() if any(p.fullmatch(n) for p in compiled))
        return out


def compile_regex(pattern: str) -> re.Pattern[str]:
    """KIP-848 subscriptions use RE2 syntax. Python's `re` accepts RE2's common
    subset; the constructs RE2 refuses (backreferences, lookaround) are refused
    here too, so a pattern valid on Shoal is valid on Kafka."""
    if not pattern:
        raise RequestError(ErrorCode.invalid_regular_expression, "empty regular expression")
    if re.search(r"\\[1-9]|\(\?(?:[=!]|<[=!]|P=)", pattern):
        raise RequestError(
            ErrorCode.invalid_regular_expression,
            f"regular expression {pattern!r}: backreferences and lookaround are not RE2",
        )
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise RequestError(
            ErrorCode.invalid_regular_expression, f"regular expression {pattern!r}: {exc}"
        ) from None


def _sub(a: Mapping[str, frozenset[int]], b: Mapping[str, frozenset[int]]) -> Assignment:
    out = {t: frozenset(ps - b.get(t, frozenset())) for t, ps in a.items()}
    return {t: ps for t, ps in out.items() if ps}


def _and(a: Mapping[str, frozenset[int]], b: Mapping[str, frozenset[int]]) -> Assignment:
    out = {t: frozenset(ps & b.get(t, frozenset())) for t, ps in a.items()}
    return {t: ps for t, ps in out.items() if ps}


def _overlaps(a: Mapping[str, frozenset[int]], b: Mapping[str, frozenset[int]]) -> bool:
    return any(ps & b.get(t, frozenset()) for t, ps in a.items())


def _subset(a: Mapping[str, frozenset[int]], b: Mapping[str, frozenset[int]]) -> bool:
    return all(ps <= b.get(t, frozenset()) for t, ps in a.items())


class ConsumerGroups:
    """Every consumer-protocol group of this coordinator."""

    def __init__(self, config: ConsumerGroupConfig, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
        self.groups: dict[str, ConsumerGroup] = {}
        self.changed: set[str] = set()  # groups whose stored row must be rewritten
        self._timers: list[tuple[int, str, str]] = []  # (deadline, group, member) heap
        self._regexes: dict[str, re.Pattern[str]] = {}

    # heartbeat ------------------------------------------------------------------

    def heartbeat(self, req: HeartbeatRequest, now: int) -> HeartbeatResult:
        try:
            return self._heartbeat(req, now)
        except RequestError as exc:
            log.info(
                "group %s: heartbeat of member %s (client %s@%s) epoch %d refused: %s (%s)",
                req.group_id,
                req.member_id,
                req.client_id,
                req.client_host,
                req.member_epoch,
                exc.code.name,
                exc.message,
            )
            return HeartbeatResult(
                exc.code, exc.message, req.member_id, -1, self.config.heartbeat_interval_ms
            )

    def refusal(self, req: HeartbeatRequest) -> HeartbeatResult | None:
        """The answer to a malformed heartbeat, None if it is well formed."""
        try:
            self._validate(req)
        except RequestError:
            return self.heartbeat(req, 0)  # logs it and answers as heartbeat would
        return None

    def _validate(self, req: HeartbeatRequest) -> None:
        bad = ErrorCode.invalid_request
        if not req.group_id:
            raise RequestError(ErrorCode.invalid_group_id, "GroupId can't be empty.")
        if not req.member_id:
            raise RequestError(bad, "MemberId can't be empty.")
        if req.instance_id is not None and not req.instance_id:
            raise RequestError(bad, "InstanceId can't be empty.")
        if req.rack_id is not None and not req.rack_id:
            raise RequestError(bad, "RackId can't be empty.")
        epoch = req.member_epoch
        if epoch == 0:
            if req.rebalance_timeout_ms < 0:
                raise RequestError(bad, "RebalanceTimeoutMs must be provided in first request.")
            if req.owned:
                raise RequestError(bad, "TopicPartitions must be empty when (re-)joining.")
            if req.subscribed_topic_names is None and req.subscribed_topic_regex is None:
                raise RequestError(
                    bad,
                    "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                )
        elif epoch == LEAVE_STATIC_EPOCH:
            if req.instance_id is None:
                raise RequestError(bad, "InstanceId can't be null.")
        elif epoch < LEAVE_STATIC_EPOCH:
            raise RequestError(bad, f"MemberEpoch {epoch} is invalid.")
        assignor = req.server_assignor
        if assignor is not None and assignor not in self.config.assignors:
            raise RequestError(
                ErrorCode.unsupported_assignor,
                f"ServerAssignor {assignor} is not supported. "
                f"Supported assignors: {', '.join(self.config.assignors)}.",
            )
        if req.subscribed_topic_regex:
            self.regex(req.subscribed_topic_regex)

    def regex(self, pattern: str) -> re.Pattern[str]:
        """The compiled expression (cached); RequestError if it is not RE2."""
        compiled = self._regexes.get(pattern)
        if compiled is None:
            compiled = self._regexes[pattern] = compile_regex(pattern)
        return compiled

    def _heartbeat(self, req: HeartbeatRequest, now: int) -> HeartbeatResult:
        self._validate(req)
        if req.member_epoch in (LEAVE_EPOCH, LEAVE_STATIC_EPOCH):
            return self._leave(req, now)
        group = self.groups.get(req.group_id)
        if group is None:
            if req.member_epoch != 0:
                raise RequestError(
                    ErrorCode.unknown_member_id,
                    f"Group {req.group_id} has no member {req.member_id}.",
                )
            group = self.groups[req.group_id] = ConsumerGroup(req.group_id)
            self.changed.add(group.group_id)
        member, joined = self._member(group, req, now)
        full = req.member_epoch == 0 or (
            req.rebalance_timeout_ms >= 0
            and (req.subscribed_topic_names is not None or req.subscribed_topic_regex is not None)
            and req.owned is not None
        )
        if self._update(group, member, req) and not joined:
            self._bump(group, f"member {member.member_id} changed its subscription")
        self._refresh_metadata(group)
        if group.epoch > group.assignment_epoch:
            self._assign(group)
        before = (member.epoch, member.assigned)
        self._reconcile(group, member, req.owned, now)
        member.session_deadline = now + self.config.session_timeout_ms
        self._arm(group, member, member.session_deadline)
        changed = (member.epoch, member.assigned) != before
        return HeartbeatResult(
            ErrorCode.none,
            None,
            member.member_id,
            member.epoch,
            self.config.heartbeat_interval_ms,
            dict(member.assigned) if full or changed else None,
        )

    def _member(
        self, group: ConsumerGroup, req: HeartbeatRequest, now: int
    ) -> tuple[ConsumerMember, bool]:
        """The member the heartbeat is for: created on join (epoch 0), taken
        over by a restarted static member, or checked against its epoch."""
        member = group.members.get(req.member_id)
        if req.member_epoch != 0:
            if member is None:
                raise RequestError(
                    ErrorCode.unknown_member_id,
                    f"Member {req.member_id} is not a member of group {group.group_id}.",
                )
            if member.classic is not None:
                raise RequestError(
                    ErrorCode.unknown_member_id,
                    f"Member {req.member_id} uses the classic protocol.",
                )
            if req.instance_id is not None and member.instance_id != req.instance_id:
                raise RequestError(
                    ErrorCode.fenced_instance_id,
                    f"Instance {req.instance_id} is not member {req.member_id}.",
                )
            self._check_epoch(member, req.member_epoch, req.owned)
            return member, False
        if member is not None:
            # A rejoin after an error: it gets its epoch and assignment again.
            if member.epoch == LEAVE_STATIC_EPOCH:
                member.epoch = member.previous_epoch
            return member, False
        if req.instance_id is not None and req.instance_id in group.static:
            return self._replace_static(group, req, now), False
        if len(group.members) >= self.config.max_size:
            raise RequestError(
                ErrorCode.group_max_size_reached,
                f"The group {group.group_id} has reached its maximum capacity of "
                f"{self.config.max_size} members.",
            )
        member = ConsumerMember(req.member_id, instance_id=req.instance_id)
        group.members[member.member_id] = member
        if req.instance_id is not None:
            group.static[req.instance_id] = member.member_id
        log.info(
            "group %s: member %s (client %s@%s%s) joined",
            group.group_id,
            member.member_id,
            req.client_id,
            req.client_host,
            f", instance {req.instance_id}" if req.instance_id else "",
        )
        self._bump(group, f"member {member.member_id} joined")
        return member, True

    @staticmethod
    def _check_epoch(
        member: ConsumerMember, epoch: int, owned: Mapping[str, frozenset[int]] | None
    ) -> None:
        """Ahead of the member is fenced; one behind is accepted while the member
        owns only what it had then (it missed our last answer)."""
        if epoch == member.epoch:
            return
        if epoch < member.epoch and epoch == member.previous_epoch:
            if owned is not None and _subset(owned, member.assigned):
                return
        raise RequestError(
            ErrorCode.fenced_member_epoch,
            f"The consumer group member has a member epoch ({epoch}) different from "
            f"the one known by the group coordinator ({member.epoch}).",
        )

    def _replace_static(
        self, group: ConsumerGroup, req: HeartbeatRequest, now: int
    ) -> ConsumerMember:
        """KIP-345 under KIP-848: a restarted static member takes over its
        predecessor's epoch and partitions if it left with epoch -2."""
        assert req.instance_id is not None
        old = group.members[group.static[req.instance_id]]
        if old.epoch != LEAVE_STATIC_EPOCH:
            raise RequestError(
                ErrorCode.unreleased_instance_id,
                f"Static member {old.member_id} with instance id {req.instance_id} "
                "is not released yet.",
            )
        self._rename(group, old, req.member_id, req.client_id, req.client_host)
        return old

    def _rename(
        self,
        group: ConsumerGroup,
        member: ConsumerMember,
        new_id: str,
        client_id: str,
        client_host: str,
    ) -> None:
        """A restarted static member (either protocol) takes over its
        predecessor under a new member id: its epoch from before it left,
        its partitions and its target."""
        old_id = member.member_id
        del group.members[old_id]
        member.member_id = new_id
        if member.epoch == LEAVE_STATIC_EPOCH:
            member.epoch = member.previous_epoch
        group.members[new_id] = member
        assert member.instance_id is not None
        group.static[member.instance_id] = new_id
        if old_id in group.target:
            group.target[new_id] = group.target.pop(old_id)
        for tp in member.holds():
            group.owners[tp] = new_id
        self.changed.add(group.group_id)  # it may have been the last consumer-protocol member
        log.info(
            "group %s: static member %s replaced %s (client %s@%s, instance %s), epoch %d",
            group.group_id,
            new_id,
            old_id,
            client_id,
            client_host,
            member.instance_id,
            member.epoch,
        )

    def _update(self, group: ConsumerGroup, member: ConsumerMember, req: HeartbeatRequest) -> bool:
        """Apply what the heartbeat changed; True if the target must change."""
        member.client_id, member.client_host = req.client_id, req.client_host
        if req.rack_id is not None:
            member.rack_id = req.rack_id
        if req.rebalance_timeout_ms >= 0:
            member.rebalance_timeout_ms = req.rebalance_timeout_ms
        changed = False
        if req.subscribed_topic_names is not None:
            names = tuple(sorted(set(req.subscribed_topic_names)))
            changed |= names != member.topic_names
            member.topic_names = names
        if req.subscribed_topic_regex is not None:
            regex = req.subscribed_topic_regex or None
            changed |= regex != member.topic_regex
            member.topic_regex = regex
        if req.server_assignor is not None and req.server_assignor != member.server_assignor:
            member.server_assignor = req.server_assignor
            changed = True
        if req.hidden_topics is not None and req.hidden_topics != member.hidden_topics:
            member.hidden_topics = req.hidden_topics
            changed = True
        if changed:
            group.subscriptions = None
        return changed

    def _bump(self, group: ConsumerGroup, reason: str) -> None:
        group.epoch += 1
        self.changed.add(group.group_id)
        log.info("group %s: epoch %d: %s", group.group_id, group.epoch, reason)

    def _topics(self, group: ConsumerGroup) -> tuple[tuple[str, str, int], ...]:
        topics = []
        for name in sorted(group.subscribed(self.catalog, self._regexes)):
            info = self.catalog.topic(name)
            if info is not None:
                topics.append((name, str(info[0]), info[1]))
        return tuple(topics)

    def _refresh_metadata(self, group: ConsumerGroup) -> None:
        """New topics matching, partitions added, a topic deleted or
        re-created: the target must be recomputed."""
        current = self._topics(group)
        if current != group.topics:
            if group.assignment_epoch == group.epoch:
                self._bump(group, "subscribed topics or their partitions changed")
            group.topics = current

    def _choose_assignor(self, group: ConsumerGroup) -> str:
        """The one most members ask for, else the first configured."""
        votes = Counter(m.server_assignor for m in group.members.values() if m.server_assignor)
        if votes:
            return max(sorted(votes), key=lambda name: votes[name])
        return self.config.assignors[0]

    def _assign(self, group: ConsumerGroup) -> None:
        group.assignor = self._choose_assignor(group)
        partitions = {name: count for name, _id, count in group.topics}
        specs = {}
        for mid, m in group.members.items():
            topics = {t for t in m.topic_names if t in partitions}
            if m.topic_regex:
                pattern = self.regex(m.topic_regex)
                topics.update(
                    t for t in partitions if pattern.fullmatch(t) and t not in m.hidden_topics
                )
            specs[mid] = MemberSpec(
                mid, m.instance_id, frozenset(topics), group.target.get(mid, {})
            )
        group.target = ASSIGNORS[group.assignor](specs, partitions)
        group.assignment_epoch = group.epoch
        self.changed.add(group.group_id)
        log.info(
            "group %s: target assignment of epoch %d computed by %s for %d members",
            group.group_id,
            group.epoch,
            group.assignor,
            len(group.members),
        )

    # reconciliation ---------------------------------------------------------------

    def _reconcile(
        self,
        group: ConsumerGroup,
        member: ConsumerMember,
        owned: Mapping[str, frozenset[int]] | None,
        now: int,
    ) -> None:
        """Move the member one step towards its target (Kafka's
        CurrentAssignmentBuilder)."""
        if member.epoch == LEAVE_STATIC_EPOCH:
            return
        if member.state is MemberState.UNREVOKED:
            if owned is None or _overlaps(owned, member.pending_revocation):
                return  # still consuming what it must give up
            self._next(group, member, now)
        elif member.state is MemberState.UNRELEASED or member.epoch != group.assignment_epoch:
            self._next(group, member, now)

    def _next(self, group: ConsumerGroup, member: ConsumerMember, now: int) -> None:
        target = group.target.get(member.member_id, {})
        keep = _and(member.assigned, target)
        revoke = _sub(member.assigned, keep)  # callers: nothing pending revocation is held
        pending = _sub(target, keep)
        unreleased = False
        free: dict[str, set[int]] = {}
        for t, ps in pending.items():
            for p in ps:
                holder = group.owners.get((t, p))
                if holder is not None and holder != member.member_id:
                    unreleased = True
                else:
                    free.setdefault(t, set()).add(p)
        old = member.holds()
        if revoke:
            member.state = MemberState.UNREVOKED
            member.assigned = keep
            member.pending_revocation = revoke
            member.revocation_deadline = now + member.rebalance_timeout_ms
            self._arm(group, member, member.revocation_deadline)
        else:
            grown: dict[str, set[int]] = {t: set(ps) for t, ps in keep.items()}
            for t, extra in free.items():
                grown.setdefault(t, set()).update(extra)
            member.assigned = {t: frozenset(ps) for t, ps in grown.items() if ps}
            member.pending_revocation = {}
            member.revocation_deadline = None
            member.state = MemberState.UNRELEASED if unreleased else MemberState.STABLE
            if member.epoch != group.assignment_epoch:
                member.previous_epoch = member.epoch
                member.epoch = group.assignment_epoch
        new = member.holds()
        for tp in old - new:
            if group.owners.get(tp) == member.member_id:
                del group.owners[tp]
        for tp in new:
            group.owners[tp] = member.member_id

    # leaving and expiry ----------------------------------------------------------

    def _leave(self, req: HeartbeatRequest, now: int) -> HeartbeatResult:
        group = self.groups.get(req.group_id)
        member = None
        if group is not None:
            if req.instance_id is None:
                member = group.members.get(req.member_id)
            else:
                # As Kafka: a static member leaves by its instance id, and only
                # the member holding that id may (an older incarnation, or a
                # classic member it replaced, is fenced).
                mid = group.static.get(req.instance_id)
                member = group.members.get(mid) if mid is not None else None
                if member is not None and member.member_id != req.member_id:
                    raise RequestError(
                        ErrorCode.fenced_instance_id,
                        f"Instance {req.instance_id} is member {member.member_id}, "
                        f"not {req.member_id}.",
                    )
        if group is None or member is None:
            raise RequestError(
                ErrorCode.unknown_member_id,
                f"Member {req.member_id} is not a member of group {req.group_id}.",
            )
        if req.member_epoch == LEAVE_STATIC_EPOCH and member.instance_id is not None:
            # Kept, partitions and all, for the session timeout: a restart with
            # the same instance id takes over without a rebalance.
            if member.epoch != LEAVE_STATIC_EPOCH:
                member.previous_epoch = member.epoch
            member.epoch = LEAVE_STATIC_EPOCH
            member.session_deadline = now + self.config.session_timeout_ms
            member.revocation_deadline = None
            self._arm(group, member, member.session_deadline)
            self.changed.add(group.group_id)
            log.info(
                "group %s: static member %s (instance %s) left temporarily",
                group.group_id,
                member.member_id,
                member.instance_id,
            )
        else:
            self._remove(group, member, f"member {member.member_id} left")
        return HeartbeatResult(
            ErrorCode.none, None, req.member_id, req.member_epoch, self.config.heartbeat_interval_ms
        )

    def _remove(self, group: ConsumerGroup, member: ConsumerMember, reason: str) -> None:
        del group.members[member.member_id]
        if (
            member.instance_id is not None
            and group.static.get(member.instance_id) == member.member_id
        ):
            del group.static[member.instance_id]
        group.target.pop(member.member_id, None)
        for tp in member.holds():
            if group.owners.get(tp) == member.member_id:
                del group.owners[tp]
        self._bump(group, reason)

    def _arm(self, group: ConsumerGroup, member: ConsumerMember, deadline: int) -> None:
        heapq.heappush(self._timers, (deadline, group.group_id, member.member_id))

    def next_deadline(self) -> int | None:
        return self._timers[0][0] if self._timers else None

    def expire(self, now: int) -> list[str]:
        """Remove members whose session expired or who did not revoke in time;
        returns the groups that changed."""
        touched: list[str] = []
        while self._timers and self._timers[0][0] <= now:
            _deadline, gid, mid = heapq.heappop(self._timers)
            group = self.groups.get(gid)
            member = group.members.get(mid) if group is not None else None
            if group is None or member is None:
                continue
            if member.session_deadline <= now:
                reason = (
                    f"member {mid} (client {member.client_id}@{member.client_host}) expired: "
                    f"no heartbeat for {self._session_ms(member)} ms"
                )
            elif member.revocation_deadline is not None and member.revocation_deadline <= now:
                reason = (
                    f"member {mid} (client {member.client_id}@{member.client_host}) fenced: "
                    f"did not revoke {sorted(member.pending_revocation)} within its "
                    f"rebalance timeout of {member.rebalance_timeout_ms} ms"
                )
            elif member.classic_deadline is not None and member.classic_deadline <= now:
                reason = (
                    f"classic member {mid} (client {member.client_id}@{member.client_host}) "
                    f"did not {member.classic_awaited} within its rebalance timeout of "
                    f"{member.rebalance_timeout_ms} ms"
                )
            else:
                continue
            log.info("group %s: %s", gid, reason)
            self._remove(group, member, reason)
            touched.append(gid)
        return touched

    # a group loaded from the store -----------------------------------------------

    def restore(self, group: ConsumerGroup, now: int) -> None:
        """Take over a group as the previous coordinator stored it: members
        keep their epochs and partitions (a partition a member holds goes to
        nobody else until it is revoked), and their timers start now, so a
        member that died with the previous coordinator expires one session
        timeout from here."""
        self._install(group, now)
        log.info(
            "group %s: loaded at epoch %d (assignment epoch %d) with %d members",
            group.group_id,
            group.epoch,
            group.assignment_epoch,
            len(group.members),
        )

    def _install(self, group: ConsumerGroup, now: int) -> None:
        """Coordinate a group built elsewhere (stored rows, a classic group):
        static ids and partition holders from its members, whose session (and
        revocation) timers start now."""
        group.static = {}
        group.owners = {}
        group.subscriptions = None
        for m in group.members.values():
            if m.instance_id is not None:
                group.static[m.instance_id] = m.member_id
            for tp in m.holds():
                group.owners[tp] = m.member_id
            m.session_deadline = now + self._session_ms(m)
            self._arm(group, m, m.session_deadline)
            if m.state is MemberState.UNREVOKED:
                m.revocation_deadline = now + m.rebalance_timeout_ms
                self._arm(group, m, m.revocation_deadline)
        self.groups[group.group_id] = group

    def _session_ms(self, member: ConsumerMember) -> int:
        """A classic member's own session timeout, else the broker's."""
        if member.classic is not None:
            return member.classic.session_timeout_ms
        return self.config.session_timeout_ms

    # classic members: online migration between the protocols ---------------------

    def from_classic(
        self, group_id: str, generation: int, members: Iterable[ClassicSnapshot], now: int
    ) -> ConsumerGroup:
        """A classic group with members becomes a consumer group (Kafka's online
        upgrade, when a consumer-protocol member joins it). Its members stay
        classic and keep their last assignment, at the classic generation as
        their epoch, which is also the group's: the joining member bumps it,
        and the classic members learn through REBALANCE_IN_PROGRESS that they
        must rejoin. RequestError if an embedded protocol does not parse."""
        group = ConsumerGroup(group_id, epoch=generation, assignment_epoch=generation)
        for snap in members:
            try:
                sub = read_subscription(snap.subscription)
                assigned = read_assignment(snap.assignment)
            except MalformedProtocol as exc:
                raise RequestError(
                    ErrorCode.group_id_not_found,
                    f"Cannot upgrade the classic group {group_id} to a consumer group: "
                    f"member {snap.member_id} sent a malformed consumer protocol ({exc}).",
                ) from None
            member = ConsumerMember(
                snap.member_id,
                instance_id=snap.instance_id,
                rack_id=sub.rack_id,
                client_id=snap.client_id,
                client_host=snap.client_host,
                rebalance_timeout_ms=snap.rebalance_timeout_ms,
                topic_names=tuple(sorted(set(sub.topics))),
                epoch=generation,
                previous_epoch=generation,
                assigned=assigned,
                classic=ClassicMeta(snap.session_timeout_ms, snap.protocols),
            )
            group.members[member.member_id] = member
            group.target[member.member_id] = dict(assigned)
        self._install(group, now)
        group.topics = self._topics(group)
        self.changed.add(group_id)
        log.info(
            "group %s: classic group with %d members converted to a consumer group at epoch %d",
            group_id,
            len(group.members),
            generation,
        )
        return group

    def downgradable(self, group_id: str) -> bool:
        """Only classic members left (the last consumer-protocol member has
        left or expired) and the policy allows it: the group goes back to the
        classic protocol (Kafka's online downgrade)."""
        group = self.groups.get(group_id)
        return (
            group is not None
            and bool(group.members)
            and self.config.migration_policy.downgrade
            and all(m.classic is not None for m in group.members.values())
        )

    def classic_join(self, req: ClassicJoin, now: int) -> ClassicJoinResult:
        """JoinGroup of a classic member to a consumer group with members: it
        becomes (or stays) a member whose subscription and owned partitions
        come from its embedded protocol, and is reconciled as a consumer member
        would be. The answer names no leader (nobody assigns: the server
        does) and carries its member epoch as the generation."""
        try:
            return self._classic_join(req, now)
        except RequestError as exc:
            log.info(
                "group %s: classic join of member %s (client %s@%s) refused: %s (%s)",
                req.group_id,
                req.member_id,
                req.client_id,
                req.client_host,
                exc.code.name,
                exc.message,
            )
            return ClassicJoinResult(exc.code, req.member_id)

    def _classic_join(self, req: ClassicJoin, now: int) -> ClassicJoinResult:
        group = self.groups[req.group_id]
        if req.protocol_type != "consumer" or not req.protocols:
            raise RequestError(
                ErrorCode.inconsistent_group_protocol,
                f"Group {req.group_id} is a consumer group: protocol type 'consumer' required.",
            )
        try:
            sub = read_subscription(req.protocols[0][1])
        except MalformedProtocol as exc:
            raise RequestError(
                ErrorCode.inconsistent_group_protocol, f"malformed consumer protocol: {exc}"
            ) from None
        offered = {name for name, _ in req.protocols}
        common = self._classic_protocols(group, exclude=req.member_id)
        if common is not None and not offered & common:
            raise RequestError(
                ErrorCode.inconsistent_group_protocol,
                f"None of the protocols {sorted(offered)} is supported by every classic member "
                f"of group {req.group_id} ({sorted(common)}).",
            )
        member_id = req.member_id
        taken_over = False
        if req.instance_id is not None and req.instance_id in group.static:
            current = group.static[req.instance_id]
            if member_id and member_id != current:
                raise RequestError(
                    ErrorCode.fenced_instance_id,
                    f"Instance {req.instance_id} is member {current}, not {member_id}.",
                )
            if not member_id:
                old = group.members[current]
                if old.classic is None and old.epoch != LEAVE_STATIC_EPOCH:
                    raise RequestError(
                        ErrorCode.unreleased_instance_id,
                        f"Static member {current} with instance id {req.instance_id} "
                        "is not released yet.",
                    )
                # A restart (perhaps from the consumer protocol back to the
                # classic one) takes over its predecessor's partitions.
                member_id = f"{req.instance_id}-{uuid.uuid4()}"
                self._rename(group, old, member_id, req.client_id, req.client_host)
                taken_over = True
        if not member_id:
            member_id = f"{req.client_id or 'consumer'}-{uuid.uuid4()}"
            if req.instance_id is None and req.require_known_member_id:
                return ClassicJoinResult(ErrorCode.member_id_required, member_id)
        member = group.members.get(member_id)
        joined = member is None
        if member is None:
            if len(group.members) >= self.config.max_size:
                raise RequestError(
                    ErrorCode.group_max_size_reached,
                    f"The group {group.group_id} has reached its maximum capacity of "
                    f"{self.config.max_size} members.",
                )
            member = ConsumerMember(member_id, instance_id=req.instance_id)
            group.members[member_id] = member
            if req.instance_id is not None:
                group.static[req.instance_id] = member_id
            log.info(
                "group %s: classic member %s (client %s@%s) joined",
                group.group_id,
                member_id,
                req.client_id,
                req.client_host,
            )
            self._bump(group, f"classic member {member_id} joined")
        elif member.classic is None and not taken_over:
            raise RequestError(
                ErrorCode.unknown_member_id, f"Member {member_id} uses the consumer protocol."
            )
        member.classic = ClassicMeta(req.session_timeout_ms, req.protocols)
        member.client_id, member.client_host = req.client_id, req.client_host
        member.rebalance_timeout_ms = req.rebalance_timeout_ms
        if sub.rack_id is not None:
            member.rack_id = sub.rack_id
        names = tuple(sorted(set(sub.topics)))
        if names != member.topic_names or member.server_assignor is not None:
            member.topic_names, member.server_assignor = names, None
            group.subscriptions = None
            if not joined:
                self._bump(group, f"classic member {member_id} changed its subscription")
        self._refresh_metadata(group)
        if group.epoch > group.assignment_epoch:
            self._assign(group)
        # What it reports owning is all it may still consume: what it has
        # already given up need not wait for another round trip.
        for _ in range(2):
            self._reconcile(group, member, sub.owned, now)
        member.session_deadline = now + req.session_timeout_ms
        self._arm(group, member, member.session_deadline)
        self._await(group, member, "sync", now, renew=True)
        return ClassicJoinResult(
            ErrorCode.none, member_id, member.epoch, member.classic.protocol_name
        )

    @staticmethod
    def _classic_protocols(group: ConsumerGroup, exclude: str) -> set[str] | None:
        """Protocol names every classic member supports (None: no classic
        member), so that the group can always go back to the classic protocol
        with one they all speak."""
        common: set[str] | None = None
        for m in group.members.values():
            if m.classic is not None and m.member_id != exclude:
                names = {name for name, _ in m.classic.protocols}
                common = names if common is None else common & names
        return common

    def _classic_member(
        self, group_id: str, member_id: str, instance_id: str | None
    ) -> tuple[ConsumerGroup, ConsumerMember]:
        group = self.groups[group_id]
        if instance_id is not None:
            current = group.static.get(instance_id)
            if current is None:
                raise RequestError(
                    ErrorCode.unknown_member_id,
                    f"Instance {instance_id} is not a member of group {group_id}.",
                )
            if member_id and current != member_id:
                raise RequestError(
                    ErrorCode.fenced_instance_id,
                    f"Instance {instance_id} is member {current}, not {member_id}.",
                )
            member_id = current
        member = group.members.get(member_id)
        if member is None or member.classic is None:
            raise RequestError(
                ErrorCode.unknown_member_id,
                f"Member {member_id} is not a classic member of group {group_id}.",
            )
        return group, member

    def _must_rejoin(self, group: ConsumerGroup, member: ConsumerMember) -> bool:
        """A classic member learns of a new epoch, of partitions to give up, or
        of partitions freed for it, only by rejoining (Kafka's rules)."""
        if member.epoch < group.epoch or member.state is MemberState.UNREVOKED:
            return True
        if member.state is MemberState.UNRELEASED:
            pending = _sub(group.target.get(member.member_id, {}), member.assigned)
            return not any(
                group.owners.get((t, p), member.member_id) != member.member_id
                for t, ps in pending.items()
                for p in ps
            )
        return False

    def classic_sync(
        self,
        group_id: str,
        member_id: str,
        instance_id: str | None,
        generation: int,
        protocol_type: str | None,
        protocol_name: str | None,
        now: int,
    ) -> tuple[ErrorCode, bytes]:
        """SyncGroup of a classic member: its current assignment, encoded at
        its subscription's version."""
        try:
            group, member = self._classic_member(group_id, member_id, instance_id)
            assert member.classic is not None
            if generation != member.epoch:
                raise RequestError(
                    ErrorCode.illegal_generation,
                    f"generation {generation}, member epoch {member.epoch}",
                )
            names = {name for name, _ in member.classic.protocols}
            if (protocol_type is not None and protocol_type != "consumer") or (
                protocol_name is not None and protocol_name not in names
            ):
                raise RequestError(
                    ErrorCode.inconsistent_group_protocol,
                    f"protocol {protocol_type}/{protocol_name} is not the member's",
                )
            if group.epoch > member.epoch and member.state is not MemberState.UNREVOKED:
                self._await(group, member, "rejoin", now, renew=False)
                raise RequestError(
                    ErrorCode.rebalance_in_progress, f"group epoch {group.epoch}: rejoin"
                )
        except RequestError as exc:
            log.info(
                "group %s: classic sync of member %s refused: %s (%s)",
                group_id,
                member_id,
                exc.code.name,
                exc.message,
            )
            return exc.code, b""
        member.session_deadline = now + member.classic.session_timeout_ms
        self._arm(group, member, member.session_deadline)
        if member.classic_awaited == "sync":
            member.classic_deadline, member.classic_awaited = None, ""
        return ErrorCode.none, encode_assignment(member.assigned, member.classic.version)

    def classic_heartbeat(
        self, group_id: str, member_id: str, instance_id: str | None, generation: int, now: int
    ) -> ErrorCode:
        try:
            group, member = self._classic_member(group_id, member_id, instance_id)
        except RequestError as exc:
            return exc.code
        if generation != member.epoch:
            return ErrorCode.illegal_generation
        assert member.classic is not None
        member.session_deadline = now + member.classic.session_timeout_ms
        self._arm(group, member, member.session_deadline)
        if self._must_rejoin(group, member):
            self._await(group, member, "rejoin", now, renew=False)
            return ErrorCode.rebalance_in_progress
        return ErrorCode.none

    def _await(
        self, group: ConsumerGroup, member: ConsumerMember, what: str, now: int, renew: bool
    ) -> None:
        """Start the clock on a classic member's rejoin (kept if already
        running: heartbeats do not extend it) or sync (each join restarts it)."""
        if not renew and member.classic_awaited == what:
            return
        member.classic_deadline = now + member.rebalance_timeout_ms
        member.classic_awaited = what
        self._arm(group, member, member.classic_deadline)

    def classic_leave(self, group_id: str, member_id: str, instance_id: str | None) -> ErrorCode:
        """LeaveGroup of a classic member (a static one may be named by its
        instance id alone)."""
        try:
            group, member = self._classic_member(group_id, member_id, instance_id)
        except RequestError as exc:
            return exc.code
        self._remove(group, member, f"classic member {member.member_id} left")
        return ErrorCode.none

    # offsets ---------------------------------------------------------------------

    def check_commit(
        self, group_id: str, member_id: str, epoch: int, api_version: int
    ) -> ErrorCode:
        """OffsetCommit against a consumer group: only its members, at their
        current epoch (an empty group also takes simple commits)."""
        group = self.groups[group_id]
        if epoch < 0 and not member_id and not group.members:
            return ErrorCode.none
        member = group.members.get(member_id)
        if member is None:
            return ErrorCode.unknown_member_id
        if member.classic is not None:
            # A classic member commits at its generation, with any version.
            return ErrorCode.none if epoch == member.epoch else ErrorCode.illegal_generation
        if api_version < 9:
            return ErrorCode.unsupported_version
        if epoch != member.epoch:
            return ErrorCode.stale_member_epoch
        return ErrorCode.none

    def check_fetch(self, group_id: str, member_id: str | None, epoch: int) -> ErrorCode:
        """OffsetFetch v9+ naming a member: it must be one, at its epoch."""
        group = self.groups[group_id]
        if member_id is None and epoch < 0:
            return ErrorCode.none
        member = group.members.get(member_id or "")
        if member is None:
            return ErrorCode.unknown_member_id
        if epoch != member.epoch:
            if member.classic is not None:
                return ErrorCode.illegal_generation
            return ErrorCode.stale_member_epoch
        return ErrorCode.none

    def subscribed_topics(self, group_id: str) -> set[str]:
        group = self.groups[group_id]
        return group.subscribed(self.catalog, self._regexes)
