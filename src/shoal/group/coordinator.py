"""The classic consumer group protocol: a state machine per group.

Modelled on Apache Kafka's GroupCoordinator, so clients see the errors and
transitions they were written against:

    Empty --join--> PreparingRebalance --all joined / rebalance timeout-->
    CompletingRebalance --leader's SyncGroup--> Stable --join, leave, expiry-->
    PreparingRebalance ... ; Empty --DeleteGroups / expiry--> Dead

The broker only picks a protocol every member supports and relays the leader's
assignment: eager and cooperative assignors run in the clients. No sockets
here: requests come in as plain values, JoinGroup and SyncGroup answer through
futures, and timers (session, rebalance, initial delay) are event-loop handles,
so the whole machine can be driven by a unit test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shoal.group.consumer import (
    Catalog,
    ClassicJoin,
    ClassicSnapshot,
    ConsumerGroup,
    ConsumerGroupConfig,
    ConsumerGroups,
    GroupState,
    HeartbeatRequest,
    HeartbeatResult,
    RequestError,
)
from shoal.group.embedded import encode_assignment, parse_subscription
from shoal.group.offsets import (
    CommittedOffset,
    OffsetStore,
    OffsetWriteError,
    TopicPartition,
    now_ms,
)
from shoal.group.persist import StateDiff, from_rows
from shoal.meta.group_state import StoredGroups
from shoal.meta.groups import GroupRepository, GroupRow
from shoal.meta.store import MetaStore
from shoal.protocol.errors import ErrorCode

log = logging.getLogger("shoal.groups")

CONSUMER = "consumer"
CLASSIC_TYPE, CONSUMER_TYPE = "classic", "consumer"  # ListGroups v5 group types
# A consumer-protocol group's stored row: protocol type "consumer", its group
# epoch as the generation, and its state with this prefix (classic rows carry
# bare state names, so the two kinds stay apart without a schema change).
KIP848_STATE_PREFIX = "kip848:"


class State(StrEnum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


@dataclass(frozen=True, slots=True)
class GroupConfig:
    min_session_timeout_ms: int = 6_000
    max_session_timeout_ms: int = 1_800_000
    initial_rebalance_delay_ms: int = 3_000
    max_size: int = 2**31 - 1
    offsets_retention_ms: int = 10_080 * 60_000
    retention_check_interval_ms: int = 600_000
    offset_metadata_max_bytes: int = 4096

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> GroupConfig:
        """From broker configuration keys (Kafka's names)."""
        return cls(
            min_session_timeout_ms=int(cfg["group.min.session.timeout.ms"]),
            max_session_timeout_ms=int(cfg["group.max.session.timeout.ms"]),
            initial_rebalance_delay_ms=int(cfg["group.initial.rebalance.delay.ms"]),
            max_size=int(cfg["group.max.size"]),
            offsets_retention_ms=int(cfg["offsets.retention.minutes"]) * 60_000,
            retention_check_interval_ms=int(cfg["offsets.retention.check.interval.ms"]),
            offset_metadata_max_bytes=int(cfg["offset.metadata.max.bytes"]),
        )


@dataclass(frozen=True, slots=True)
class JoinRequest:
    group_id: str
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]
    require_known_member_id: bool = True  # JoinGroup v4+ (KIP-394)
    supports_skip_assignment: bool = False  # JoinGroup v9+ (KIP-814)
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class JoinMember:
    member_id: str
    group_instance_id: str | None
    metadata: bytes


@dataclass(frozen=True, slots=True)
class JoinResult:
    error: ErrorCode
    member_id: str
    generation: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    members: tuple[JoinMember, ...] = ()
    skip_assignment: bool = False


@dataclass(frozen=True, slots=True)
class SyncResult:
    error: ErrorCode
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


@dataclass(frozen=True, slots=True)
class MemberSummary:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass(frozen=True, slots=True)
class GroupSummary:
    group_id: str
    state: str
    protocol_type: str
    protocol_data: str
    members: tuple[MemberSummary, ...]


@dataclass(eq=False, slots=True)
class Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: tuple[tuple[str, bytes], ...]
    assignment: bytes = b""
    join_future: asyncio.Future[JoinResult] | None = None
    sync_future: asyncio.Future[SyncResult] | None = None
    deadline: float = 0.0  # loop time after which the session has expired
    timer: asyncio.TimerHandle | None = None

    def metadata(self, protocol: str | None) -> bytes:
        for name, meta in self.protocols:
            if name == protocol:
                return meta
        return b""

    def vote(self, candidates: set[str]) -> str:
        """Its most preferred protocol among those every member supports."""
        return next(name for name, _ in self.protocols if name in candidates)


@dataclass(eq=False)
class Group:
    group_id: str
    state: State = State.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    static: dict[str, str] = field(default_factory=dict)  # group.instance.id -> member id
    pending: dict[str, asyncio.TimerHandle] = field(default_factory=dict)  # KIP-394 ids
    pending_sync: set[str] = field(default_factory=set)
    join_timer: asyncio.TimerHandle | None = None
    sync_timer: asyncio.TimerHandle | None = None
    initial_delay: bool = False
    new_member_added: bool = False
    state_ms: int = field(default_factory=now_ms)  # wall clock of the last state change

    def transition(self, state: State) -> None:
        self.state = state
        self.state_ms = now_ms()

    def candidates(self) -> set[str]:
        sets = [{name for name, _ in m.protocols} for m in self.members.values()]
        return set.intersection(*sets) if sets else set()

    def supports(self, protocol_type: str, protocols: Iterable[tuple[str, bytes]]) -> bool:
        names = [name for name, _ in protocols]
        if not self.members:
            return bool(protocol_type) and bool(names)
        candidates = self.candidates()
        return protocol_type == self.protocol_type and any(n in candidates for n in names)

    def select_protocol(self) -> str:
        """The protocol most members prefer among those all support; ties go to
        the earlier-joined members' preference."""
        candidates = self.candidates()
        votes = Counter(m.vote(candidates) for m in self.members.values())
        best = max(votes.values())
        first = next(iter(self.members.values()))
        return next(name for name, _ in first.protocols if votes.get(name) == best)

    def rebalance_timeout_ms(self) -> int:
        return max((m.rebalance_timeout_ms for m in self.members.values()), default=0)

    def all_joined(self) -> bool:
        return not self.pending and all(m.join_future is not None for m in self.members.values())

    def subscribed_topics(self) -> set[str] | None:
        """Topics the members subscribe to (consumer protocol), None if unknown."""
        if self.protocol_type != CONSUMER or self.protocol_name is None:
            return None
        topics: set[str] = set()
        for m in self.members.values():
            parsed = parse_subscription(m.metadata(self.protocol_name))
            if parsed is None:
                return None
            topics.update(parsed)
        return topics

    def row(self) -> GroupRow:
        return GroupRow(
            self.group_id,
            self.protocol_type or "",
            self.generation,
            self.state.value,
            self.state_ms,
        )


class GroupCoordinator:
    """All groups of this broker and their committed offsets."""

    def __init__(
        self,
        offsets: OffsetStore,
        config: GroupConfig,
        consumer_config: ConsumerGroupConfig | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.offsets = offsets
        self.config = config
        self.groups: dict[str, Group] = {}
        # The consumer protocol (KIP-848) beside the classic one: a group id is
        # in one of the two at a time; both commit to `offsets`.
        self.consumer = ConsumerGroups(
            consumer_config or ConsumerGroupConfig(), catalog or _NoTopics()
        )
        self._consumer_timer: asyncio.TimerHandle | None = None
        self._consumer_timer_at: int | None = None
        self._state = StateDiff()  # consumer-protocol state last queued for the store
        self._loop = asyncio.get_running_loop()
        self._expiry: asyncio.Task[None] | None = None
        # Cluster mode: NOT_COORDINATOR (or load in progress) for groups this
        # broker does not coordinate; None when it does.
        self.gate: Callable[[str], ErrorCode | None] = _no_gate

    @classmethod
    async def open(
        cls,
        meta: MetaStore,
        config: GroupConfig,
        consumer_config: ConsumerGroupConfig | None = None,
        catalog: Catalog | None = None,
    ) -> GroupCoordinator:
        """Load groups and offsets, start the writer and the expiry task."""
        offsets = OffsetStore(GroupRepository(meta))
        coordinator = cls(offsets, config, consumer_config, catalog)
        rows = await offsets.load()
        states = await offsets.repo.load_consumer_state()
        offsets.start()
        coordinator._restore(rows, states)
        coordinator._expiry = asyncio.create_task(coordinator._expiry_loop(), name="offset-expiry")
        return coordinator

    def _restore(self, rows: list[GroupRow], states: StoredGroups) -> None:
        """Classic groups come back Empty: their members rejoin. A group that
        had members when the broker stopped counts as empty from now for
        offset expiry. Consumer-protocol groups come back with their members,
        epochs and assignments (Kafka's replay of __consumer_offsets)."""
        now = now_ms()
        for row in rows:
            if row.state.startswith(KIP848_STATE_PREFIX):
                stored = states.get(row.group_id)
                if stored is not None:
                    cg = from_rows(*stored)
                else:  # stored before its members were: they rejoin
                    cg = ConsumerGroup(
                        row.group_id, epoch=row.generation, assignment_epoch=row.generation
                    )
                empty = not cg.members
                cg.state_ms = row.state_ms if empty else now
                self.consumer.restore(cg, self._now())
                # Its first change rewrites all its rows (StateDiff knows none):
                # a late write of the previous coordinator cannot linger.
                self._state.forget(cg.group_id)
                if empty and row.state != KIP848_STATE_PREFIX + GroupState.EMPTY:
                    self.offsets.save_group(_consumer_row(cg))
                continue
            g = Group(
                row.group_id, generation=row.generation, protocol_type=row.protocol_type or None
            )
            g.state_ms = row.state_ms if row.state == State.EMPTY else now
            self.groups[row.group_id] = g
            if row.state != State.EMPTY:
                self.offsets.save_group(g.row())
        for gid in self.offsets.group_ids() - set(self.groups) - set(self.consumer.groups):
            g = Group(gid)
            g.state_ms = max(c.commit_ms for c in self.offsets.committed(gid).values())
            self.groups[gid] = g
            self.offsets.save_group(g.row())
        if self.groups:
            log.info("loaded %d consumer groups", len(self.groups))
        self._consumer_changed()  # arms the timers of loaded members

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        for g in self.groups.values():
            self._cancel_timers(g)
        if self._consumer_timer is not None:
            self._consumer_timer.cancel()
        await self.offsets.close()

    # JoinGroup ---------------------------------------------------------------

    def join(self, req: JoinRequest) -> asyncio.Future[JoinResult]:
        fut: asyncio.Future[JoinResult] = self._loop.create_future()
        error = self._join(req, fut)
        if error is not None:
            _resolve(fut, JoinResult(error, req.member_id))
        return fut

    def _join(self, req: JoinRequest, fut: asyncio.Future[JoinResult]) -> ErrorCode | None:
        if not req.group_id:
            return ErrorCode.invalid_group_id
        if (gated := self.gate(req.group_id)) is not None:
            return gated
        cfg = self.config
        if not cfg.min_session_timeout_ms <= req.session_timeout_ms <= cfg.max_session_timeout_ms:
            log.info(
                "group %s: join from %s refused: session timeout %d ms outside [%d, %d]",
                req.group_id,
                req.client_id,
                req.session_timeout_ms,
                cfg.min_session_timeout_ms,
                cfg.max_session_timeout_ms,
            )
            return ErrorCode.invalid_session_timeout
        cg = self.consumer.groups.get(req.group_id)
        if cg is not None:
            if cg.members:
                # A classic member in a consumer group (Kafka 4's mixed group):
                # the consumer group answers for it, at once.
                result = self.consumer.classic_join(
                    ClassicJoin(
                        req.group_id,
                        req.member_id,
                        req.group_instance_id,
                        req.session_timeout_ms,
                        req.rebalance_timeout_ms,
                        req.protocol_type,
                        req.protocols,
                        req.require_known_member_id,
                        req.client_id,
                        req.client_host,
                    ),
                    self._now(),
                )
                self._consumer_changed((req.group_id, result.member_id))
                ok = result.error == ErrorCode.none
                _resolve(
                    fut,
                    JoinResult(
                        result.error,
                        result.member_id,
                        result.generation,
                        CONSUMER if ok else None,
                        result.protocol_name,
                    ),
                )
                return None
            # An empty consumer-protocol group becomes a classic one (Kafka's
            # downgrade once its last consumer-protocol member has left).
            del self.consumer.groups[req.group_id]
            self.offsets.save_consumer_state(self._state.clear(req.group_id))
            self.groups[req.group_id] = Group(req.group_id, generation=cg.epoch)
            log.info("group %s: converted to a classic group (empty)", req.group_id)
        group = self.groups.get(req.group_id)
        if not req.member_id:
            if group is None:
                group = self.groups[req.group_id] = Group(req.group_id)
            return self._join_new(group, req, fut)
        if group is None:
            return ErrorCode.unknown_member_id
        return self._join_known(group, req, fut)

    def _join_new(
        self, group: Group, req: JoinRequest, fut: asyncio.Future[JoinResult]
    ) -> ErrorCode | None:
        if group.state is State.DEAD:
            return ErrorCode.coordinator_not_available
        if not group.supports(req.protocol_type, req.protocols):
            return ErrorCode.inconsistent_group_protocol
        prefix = req.group_instance_id or req.client_id
        member_id = f"{prefix}-{uuid.uuid4()}"
        if req.group_instance_id is not None:
            old = group.static.get(req.group_instance_id)
            if old is not None:
                self._replace_static(group, group.members[old], member_id, req, fut)
                return None
        if len(group.members) + len(group.pending) >= self.config.max_size:
            return ErrorCode.group_max_size_reached
        if req.group_instance_id is None and req.require_known_member_id:
            # KIP-394: hand out an id first, so a client that times out and
            # retries does not leave a ghost member behind.
            group.pending[member_id] = self._loop.call_later(
                req.session_timeout_ms / 1000, self._pending_expired, group, member_id
            )
            _resolve(fut, JoinResult(ErrorCode.member_id_required, member_id))
            return None
        self._add_member(group, member_id, req, fut)
        return None

    def _join_known(
        self, group: Group, req: JoinRequest, fut: asyncio.Future[JoinResult]
    ) -> ErrorCode | None:
        if req.member_id in group.pending:
            if len(group.members) >= self.config.max_size:
                return ErrorCode.group_max_size_reached
            group.pending.pop(req.member_id).cancel()
            self._add_member(group, req.member_id, req, fut)
            return None
        if group.state is State.DEAD:
            return ErrorCode.coordinator_not_available
        if not group.supports(req.protocol_type, req.protocols):
            return ErrorCode.inconsistent_group_protocol
        error = _check_member(group, req.member_id, req.group_instance_id)
        if error is not None:
            return error
        member = group.members[req.member_id]
        if group.state is State.PREPARING_REBALANCE:
            self._update_member(group, member, req, fut)
            self._maybe_complete_join(group)
        elif group.state is State.COMPLETING_REBALANCE:
            if member.protocols == req.protocols:
                # A retried join of this generation: answer it again.
                _resolve(fut, self._join_result(group, member))
            else:
                self._update_member(group, member, req, fut)
                self._prepare_rebalance(group, f"member {member.member_id} changed its protocols")
        elif group.state is State.STABLE:
            if member.member_id == group.leader or member.protocols != req.protocols:
                # The leader rejoins to have the group reassigned (e.g. new topics).
                self._update_member(group, member, req, fut)
                self._prepare_rebalance(
                    group, f"member {member.member_id} ({req.client_id}) rejoined"
                )
            else:
                _resolve(fut, self._join_result(group, member, with_members=False))
        else:
            return ErrorCode.unknown_member_id
        return None

    def _add_member(
        self, group: Group, member_id: str, req: JoinRequest, fut: asyncio.Future[JoinResult]
    ) -> None:
        member = Member(
            member_id,
            req.group_instance_id,
            req.client_id,
            req.client_host,
            req.session_timeout_ms,
            req.rebalance_timeout_ms,
            req.protocol_type,
            req.protocols,
            join_future=fut,
        )
        if not group.members:
            group.protocol_type = req.protocol_type
        group.members[member_id] = member
        if group.leader is None:
            group.leader = member_id
        if req.group_instance_id is not None:
            group.static[req.group_instance_id] = member_id
        if group.state is State.PREPARING_REBALANCE and group.generation == 0:
            group.new_member_added = True
        self._arm(group, member)
        log.info(
            "group %s: member %s (client %s@%s%s) joined",
            group.group_id,
            member_id,
            req.client_id,
            req.client_host,
            f", instance {req.group_instance_id}" if req.group_instance_id else "",
        )
        if group.state is State.PREPARING_REBALANCE:
            self._maybe_complete_join(group)
        else:
            self._prepare_rebalance(group, f"member {member_id} ({req.client_id}) joined")

    def _update_member(
        self, group: Group, member: Member, req: JoinRequest, fut: asyncio.Future[JoinResult]
    ) -> None:
        member.protocols = req.protocols
        member.session_timeout_ms = req.session_timeout_ms
        member.rebalance_timeout_ms = req.rebalance_timeout_ms
        if member.join_future is not None:
            _resolve(
                member.join_future, JoinResult(ErrorCode.rebalance_in_progress, member.member_id)
            )
        member.join_future = fut

    def _replace_static(
        self,
        group: Group,
        old: Member,
        member_id: str,
        req: JoinRequest,
        fut: asyncio.Future[JoinResult],
    ) -> None:
        """A static member restarted: it takes over its old identity (and
        assignment) without the rest of the group rebalancing (KIP-345)."""
        old_leader = group.leader
        old_id = old.member_id
        if old.join_future is not None:
            _resolve(old.join_future, JoinResult(ErrorCode.fenced_instance_id, old_id))
            old.join_future = None
        if old.sync_future is not None:
            _resolve(old.sync_future, SyncResult(ErrorCode.fenced_instance_id))
            old.sync_future = None
        group.members = {(member_id if k == old_id else k): v for k, v in group.members.items()}
        old.member_id = member_id
        old.client_id, old.client_host = req.client_id, req.client_host
        if group.leader == old_id:
            group.leader = member_id
        if old_id in group.pending_sync:
            group.pending_sync.discard(old_id)
            group.pending_sync.add(member_id)
        assert req.group_instance_id is not None
        group.static[req.group_instance_id] = member_id
        if old.timer is not None:
            old.timer.cancel()
            old.timer = None
        self._arm(group, old)
        member = old
        log.info(
            "group %s: static member %s replaced %s (client %s@%s, instance %s)",
            group.group_id,
            member_id,
            old_id,
            req.client_id,
            req.client_host,
            req.group_instance_id,
        )
        self._update_member(group, member, req, fut)
        if group.state is State.STABLE:
            if group.protocol_name == group.select_protocol():
                member.join_future = None
                is_leader = group.leader == member_id
                skip = req.supports_skip_assignment and is_leader
                result = self._join_result(group, member, with_members=skip)
                # Without KIP-814's skip_assignment, answer with the old leader id:
                # a restarted leader must not compute an assignment that a stable
                # group would never send out.
                leader = member_id if skip else (old_leader or "")
                result = dataclasses.replace(result, leader=leader, skip_assignment=skip)
                _resolve(fut, result)
            else:
                self._prepare_rebalance(
                    group, f"static member {member_id} changed the group's protocol"
                )
        elif group.state is State.COMPLETING_REBALANCE:
            self._prepare_rebalance(group, f"static member {member_id} rejoined during a sync")
        else:
            self._maybe_complete_join(group)

    def _join_result(self, group: Group, member: Member, with_members: bool = True) -> JoinResult:
        members: tuple[JoinMember, ...] = ()
        if with_members and member.member_id == group.leader:
            members = tuple(
                JoinMember(m.member_id, m.group_instance_id, m.metadata(group.protocol_name))
                for m in group.members.values()
            )
        return JoinResult(
            ErrorCode.none,
            member.member_id,
            group.generation,
            group.protocol_type,
            group.protocol_name,
            group.leader or "",
            members,
        )

    def _pending_expired(self, group: Group, member_id: str) -> None:
        if group.pending.pop(member_id, None) is not None:
            log.info("group %s: pending member %s never rejoined", group.group_id, member_id)
            self._maybe_complete_join(group)

    # rebalance -----------------------------------------------------------------

    def _prepare_rebalance(self, group: Group, reason: str) -> None:
        if group.state is State.COMPLETING_REBALANCE:
            for m in group.members.values():
                m.assignment = b""
                if m.sync_future is not None:
                    _resolve(m.sync_future, SyncResult(ErrorCode.rebalance_in_progress))
                    m.sync_future = None
        if group.sync_timer is not None:
            group.sync_timer.cancel()
            group.sync_timer = None
        group.pending_sync.clear()
        if group.join_timer is not None:
            group.join_timer.cancel()
        timeout = group.rebalance_timeout_ms()
        delay = self.config.initial_rebalance_delay_ms
        if group.state is State.EMPTY and delay > 0:
            # Let more of a starting fleet arrive before the first assignment.
            delay = min(delay, timeout)
            group.initial_delay = True
            group.new_member_added = False
            group.join_timer = self._loop.call_later(
                delay / 1000, self._initial_delay_done, group, delay, max(timeout - delay, 0)
            )
        else:
            group.initial_delay = False
            group.join_timer = self._loop.call_later(timeout / 1000, self._complete_join, group)
        group.transition(State.PREPARING_REBALANCE)
        log.info(
            "group %s: rebalancing generation %d with %d members: %s",
            group.group_id,
            group.generation,
            len(group.members),
            reason,
        )
        self._maybe_complete_join(group)

    def _initial_delay_done(self, group: Group, delay: int, remaining: int) -> None:
        group.join_timer = None
        if group.state is not State.PREPARING_REBALANCE:
            return
        if group.new_member_added and remaining > 0:
            group.new_member_added = False
            step = min(delay, remaining)
            group.join_timer = self._loop.call_later(
                step / 1000, self._initial_delay_done, group, delay, remaining - step
            )
        else:
            self._complete_join(group)

    def _maybe_complete_join(self, group: Group) -> None:
        if (
            group.state is State.PREPARING_REBALANCE
            and not group.initial_delay
            and group.all_joined()
        ):
            self._complete_join(group)

    def _complete_join(self, group: Group) -> None:
        if group.join_timer is not None:
            group.join_timer.cancel()
            group.join_timer = None
        group.initial_delay = False
        if group.state is not State.PREPARING_REBALANCE:
            return
        for m in list(group.members.values()):
            if m.join_future is None:
                log.info(
                    "group %s: member %s (client %s@%s) did not rejoin in time",
                    group.group_id,
                    m.member_id,
                    m.client_id,
                    m.client_host,
                )
                self._detach(group, m)
        group.generation += 1
        if not group.members:
            group.protocol_name = None
            group.leader = None
            group.transition(State.EMPTY)
            self.offsets.save_group(group.row())
            log.info("group %s: generation %d is empty", group.group_id, group.generation)
            return
        group.protocol_name = group.select_protocol()
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.transition(State.COMPLETING_REBALANCE)
        self.offsets.save_group(group.row())
        for m in group.members.values():
            assert m.join_future is not None
            _resolve(m.join_future, self._join_result(group, m))
            m.join_future = None
            self._arm(group, m)
        group.pending_sync = set(group.members)
        group.sync_timer = self._loop.call_later(
            group.rebalance_timeout_ms() / 1000, self._sync_expired, group, group.generation
        )
        log.info(
            "group %s: generation %d with %d members, protocol %s, leader %s",
            group.group_id,
            group.generation,
            len(group.members),
            group.protocol_name,
            group.leader,
        )

    def _sync_expired(self, group: Group, generation: int) -> None:
        """Members that joined a generation but never synced are gone."""
        group.sync_timer = None
        if group.generation != generation or group.state not in (
            State.COMPLETING_REBALANCE,
            State.STABLE,
        ):
            return
        missing = [group.members[m] for m in group.pending_sync if m in group.members]
        group.pending_sync.clear()
        if not missing:
            return
        for m in missing:
            log.info(
                "group %s: member %s (client %s@%s) did not sync generation %d",
                group.group_id,
                m.member_id,
                m.client_id,
                m.client_host,
                generation,
            )
            self._detach(group, m)
        self._after_removal(group, "members did not sync")

    # SyncGroup ------------------------------------------------------------------

    def sync(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        group_instance_id: str | None,
        protocol_type: str | None,
        protocol_name: str | None,
        assignments: Mapping[str, bytes],
    ) -> asyncio.Future[SyncResult]:
        fut: asyncio.Future[SyncResult] = self._loop.create_future()
        if group_id in self.consumer.groups and self.gate(group_id) is None:
            code, assignment = self.consumer.classic_sync(
                group_id,
                member_id,
                group_instance_id,
                generation,
                protocol_type,
                protocol_name,
                self._now(),
            )
            self._consumer_changed()
            ok = code == ErrorCode.none
            _resolve(
                fut,
                SyncResult(
                    code, assignment, protocol_type if ok else None, protocol_name if ok else None
                ),
            )
            return fut
        error = self.gate(group_id) or self._sync(
            fut,
            group_id,
            generation,
            member_id,
            group_instance_id,
            protocol_type,
            protocol_name,
            assignments,
        )
        if error is not None:
            _resolve(fut, SyncResult(error))
        return fut

    def _sync(
        self,
        fut: asyncio.Future[SyncResult],
        group_id: str,
        generation: int,
        member_id: str,
        group_instance_id: str | None,
        protocol_type: str | None,
        protocol_name: str | None,
        assignments: Mapping[str, bytes],
    ) -> ErrorCode | None:
        group, error = self._member_group(group_id, member_id, group_instance_id)
        if group is None:
            return error
        if generation != group.generation:
            return ErrorCode.illegal_generation
        if (protocol_type is not None and protocol_type != group.protocol_type) or (
            protocol_name is not None and protocol_name != group.protocol_name
        ):
            return ErrorCode.inconsistent_group_protocol
        if group.state is State.EMPTY:
            return ErrorCode.unknown_member_id
        if group.state is State.PREPARING_REBALANCE:
            return ErrorCode.rebalance_in_progress
        member = group.members[member_id]
        group.pending_sync.discard(member_id)
        self._arm(group, member)
        if group.state is State.STABLE:
            _resolve(fut, self._sync_result(group, member))
            return None
        # CompletingRebalance: wait for the leader's assignment.
        if member.sync_future is not None:
            _resolve(member.sync_future, SyncResult(ErrorCode.rebalance_in_progress))
        member.sync_future = fut
        if member_id == group.leader:
            for m in group.members.values():
                m.assignment = assignments.get(m.member_id, b"")
            group.transition(State.STABLE)
            for m in group.members.values():
                if m.sync_future is not None:
                    _resolve(m.sync_future, self._sync_result(group, m))
                    m.sync_future = None
            log.info(
                "group %s: generation %d is stable (leader %s assigned %d members)",
                group.group_id,
                group.generation,
                member_id,
                len(assignments),
            )
        return None

    @staticmethod
    def _sync_result(group: Group, member: Member) -> SyncResult:
        return SyncResult(
            ErrorCode.none, member.assignment, group.protocol_type, group.protocol_name
        )

    def _member_group(
        self, group_id: str, member_id: str, group_instance_id: str | None
    ) -> tuple[Group | None, ErrorCode]:
        """The group of a known member, or the error SyncGroup and Heartbeat
        answer: bad id, not the coordinator, unknown group or member, dead."""
        if not group_id:
            return None, ErrorCode.invalid_group_id
        if (gated := self.gate(group_id)) is not None:
            return None, gated
        group = self.groups.get(group_id)
        if group is None:
            return None, ErrorCode.unknown_member_id
        if group.state is State.DEAD:
            return None, ErrorCode.coordinator_not_available
        error = _check_member(group, member_id, group_instance_id)
        if error is not None:
            return None, error
        return group, ErrorCode.none

    # Heartbeat, LeaveGroup ------------------------------------------------------

    def heartbeat(
        self, group_id: str, generation: int, member_id: str, group_instance_id: str | None
    ) -> ErrorCode:
        if group_id in self.consumer.groups and self.gate(group_id) is None:
            code = self.consumer.classic_heartbeat(
                group_id, member_id, group_instance_id, generation, self._now()
            )
            self._consumer_changed()
            return code
        group, error = self._member_group(group_id, member_id, group_instance_id)
        if group is None:
            return error
        if group.state is State.EMPTY:
            return ErrorCode.unknown_member_id
        if generation != group.generation:
            return ErrorCode.illegal_generation
        self._arm(group, group.members[member_id])
        if group.state is State.PREPARING_REBALANCE:
            return ErrorCode.rebalance_in_progress
        return ErrorCode.none

    def leave(
        self, group_id: str, leaving: list[tuple[str, str | None]], client: str = "-"
    ) -> tuple[ErrorCode, list[ErrorCode]]:
        """(member id, instance id) pairs; a static member may be named by its
        instance id alone. Returns the group error and one error per member."""
        if not group_id:
            return ErrorCode.invalid_group_id, [ErrorCode.invalid_group_id] * len(leaving)
        if (gated := self.gate(group_id)) is not None:
            return gated, [gated] * len(leaving)
        if group_id in self.consumer.groups:
            codes = [self.consumer.classic_leave(group_id, m, i) for m, i in leaving]
            self._consumer_changed()
            return ErrorCode.none, codes
        group = self.groups.get(group_id)
        if group is None:
            return ErrorCode.none, [ErrorCode.unknown_member_id] * len(leaving)
        if group.state is State.DEAD:
            return ErrorCode.coordinator_not_available, [ErrorCode.coordinator_not_available] * len(
                leaving
            )
        results: list[ErrorCode] = []
        removed: list[str] = []
        for member_id, instance_id in leaving:
            if not member_id and instance_id is not None:
                member_id = group.static.get(instance_id, "")
                if not member_id:
                    results.append(ErrorCode.unknown_member_id)
                    continue
            if member_id in group.pending and instance_id is None:
                group.pending.pop(member_id).cancel()
                results.append(ErrorCode.none)
                continue
            error = _check_member(group, member_id, instance_id)
            if error is not None:
                results.append(error)
                continue
            m = group.members[member_id]
            log.info(
                "group %s: member %s (client %s@%s) left (request from %s)",
                group.group_id,
                member_id,
                m.client_id,
                m.client_host,
                client,
            )
            self._detach(group, m)
            removed.append(member_id)
            results.append(ErrorCode.none)
        if removed:
            self._after_removal(group, f"{', '.join(removed)} left")
        else:
            self._maybe_complete_join(group)
        return ErrorCode.none, results

    # membership internals ----------------------------------------------------

    def _arm(self, group: Group, member: Member) -> None:
        """Push the member's session deadline out; one timer per member, re-armed
        lazily when it fires, so a heartbeat costs no timer churn."""
        member.deadline = self._loop.time() + member.session_timeout_ms / 1000
        if member.timer is None:
            member.timer = self._loop.call_at(member.deadline, self._session_check, group, member)

    def _session_check(self, group: Group, member: Member) -> None:
        member.timer = None
        if group.members.get(member.member_id) is not member:
            return
        now = self._loop.time()
        if member.join_future is not None or member.sync_future is not None:
            # Waiting on the coordinator counts as alive (the rebalance timeout
            # bounds the wait).
            member.deadline = now + member.session_timeout_ms / 1000
        if now < member.deadline:
            member.timer = self._loop.call_at(member.deadline, self._session_check, group, member)
            return
        log.info(
            "group %s: member %s (client %s@%s) expired: no heartbeat for %d ms",
            group.group_id,
            member.member_id,
            member.client_id,
            member.client_host,
            member.session_timeout_ms,
        )
        self._detach(group, member)
        self._after_removal(group, f"member {member.member_id} session expired")

    def _detach(self, group: Group, member: Member) -> None:
        """Remove a member without reacting; callers decide what the group does."""
        if member.timer is not None:
            member.timer.cancel()
            member.timer = None
        if member.join_future is not None:
            _resolve(member.join_future, JoinResult(ErrorCode.unknown_member_id, member.member_id))
            member.join_future = None
        if member.sync_future is not None:
            _resolve(member.sync_future, SyncResult(ErrorCode.unknown_member_id))
            member.sync_future = None
        group.members.pop(member.member_id, None)
        iid = member.group_instance_id
        if iid is not None and group.static.get(iid) == member.member_id:
            del group.static[iid]
        group.pending_sync.discard(member.member_id)
        if group.leader == member.member_id:
            group.leader = next(iter(group.members), None)

    def _after_removal(self, group: Group, reason: str) -> None:
        if group.state in (State.STABLE, State.COMPLETING_REBALANCE):
            self._prepare_rebalance(group, reason)
        elif group.state is State.PREPARING_REBALANCE:
            self._maybe_complete_join(group)

    def _cancel_timers(self, group: Group) -> None:
        for handle in (group.join_timer, group.sync_timer, *group.pending.values()):
            if handle is not None:
                handle.cancel()
        for m in group.members.values():
            if m.timer is not None:
                m.timer.cancel()
                m.timer = None

    # ListGroups, DescribeGroups, DeleteGroups ------------------------------------

    def list_groups(
        self, states: Iterable[str] = (), types: Iterable[str] = ()
    ) -> list[tuple[str, str, str, str]]:
        """(group id, protocol type, state, group type) of every live group,
        filtered by state and by type (case-insensitive, as Kafka)."""
        wanted = {s.lower() for s in states}
        kinds = {t.lower() for t in types}
        out = []
        if not kinds or CLASSIC_TYPE in kinds:
            out += [
                (g.group_id, g.protocol_type or "", g.state.value, CLASSIC_TYPE)
                for g in self.groups.values()
                if g.state is not State.DEAD and (not wanted or g.state.value.lower() in wanted)
            ]
        if not kinds or CONSUMER_TYPE in kinds:
            out += [
                (gid, CONSUMER, cg.state.value, CONSUMER_TYPE)
                for gid, cg in self.consumer.groups.items()
                if not wanted or cg.state.value.lower() in wanted
            ]
        return out

    def describe(self, group_id: str) -> GroupSummary:
        group = self.groups.get(group_id)
        if group is None:
            return GroupSummary(group_id, State.DEAD.value, "", "", ())
        stable = group.state is State.STABLE
        return GroupSummary(
            group_id,
            group.state.value,
            group.protocol_type or "",
            (group.protocol_name or "") if stable else "",
            tuple(
                MemberSummary(
                    m.member_id,
                    m.group_instance_id,
                    m.client_id,
                    m.client_host,
                    m.metadata(group.protocol_name) if stable else b"",
                    m.assignment if stable else b"",
                )
                for m in group.members.values()
            ),
        )

    async def delete_groups(self, group_ids: list[str]) -> list[ErrorCode]:
        results: list[ErrorCode] = []
        writes: dict[int, asyncio.Future[None]] = {}
        for gid in group_ids:
            group = self.groups.get(gid)
            cg = self.consumer.groups.get(gid)
            if not gid:
                results.append(ErrorCode.invalid_group_id)
            elif cg is not None:
                if cg.members:
                    results.append(ErrorCode.non_empty_group)
                else:
                    del self.consumer.groups[gid]
                    self._state.forget(gid)  # the rows go with the group's
                    writes[len(results)] = self.offsets.delete_group(gid)
                    log.info("group %s: deleted", gid)
                    results.append(ErrorCode.none)
            elif group is None or group.state is State.DEAD:
                results.append(ErrorCode.group_id_not_found)
            elif group.state is not State.EMPTY:
                results.append(ErrorCode.non_empty_group)
            else:
                self._drop_group(group)
                writes[len(results)] = self.offsets.delete_group(gid)
                log.info("group %s: deleted", gid)
                results.append(ErrorCode.none)
        outcomes = await asyncio.gather(*writes.values(), return_exceptions=True)
        for index, outcome in zip(writes, outcomes, strict=True):
            if isinstance(outcome, OffsetWriteError):
                results[index] = ErrorCode.coordinator_not_available
            elif isinstance(outcome, BaseException):
                raise outcome
        return results

    def _drop_group(self, group: Group) -> None:
        self._cancel_timers(group)
        group.transition(State.DEAD)
        self.groups.pop(group.group_id, None)

    # consumer protocol (KIP-848) ---------------------------------------------------

    def consumer_heartbeat(self, req: HeartbeatRequest) -> HeartbeatResult:
        """ConsumerGroupHeartbeat: the sans-IO machine, plus what needs the
        loop and the store (timers, the group's row)."""
        interval = self.consumer.config.heartbeat_interval_ms
        if req.group_id and (gated := self.gate(req.group_id)) is not None:
            return HeartbeatResult(gated, None, req.member_id, -1, interval)
        classic = self.groups.get(req.group_id)
        if classic is not None and classic.state is not State.DEAD:
            if (classic.members or classic.state is not State.EMPTY) and self._may_upgrade(
                classic, req
            ):
                if (refused := self.consumer.refusal(req)) is not None:
                    return refused
                try:
                    self._upgrade(classic)
                except RequestError as exc:
                    return HeartbeatResult(exc.code, exc.message, req.member_id, -1, interval)
            elif classic.members or classic.state is not State.EMPTY:
                log.info(
                    "group %s: consumer-protocol heartbeat from %s refused: a classic group "
                    "with members",
                    req.group_id,
                    req.client_id,
                )
                return HeartbeatResult(
                    ErrorCode.group_id_not_found,
                    f"Group {req.group_id} is not a consumer group.",
                    req.member_id,
                    -1,
                    interval,
                )
            elif (refused := self.consumer.refusal(req)) is not None:
                return refused
            elif req.member_epoch == 0:
                # An empty classic group becomes a consumer-protocol group
                # (Kafka's online upgrade of an empty group); offsets stay.
                self._drop_group(classic)
                self.consumer.groups[req.group_id] = ConsumerGroup(
                    req.group_id, epoch=classic.generation, assignment_epoch=classic.generation
                )
                log.info("group %s: converted to a consumer-protocol group", req.group_id)
        result = self.consumer.heartbeat(req, self._now())
        self._consumer_changed((req.group_id, req.member_id))
        return result

    def _may_upgrade(self, classic: Group, req: HeartbeatRequest) -> bool:
        """Kafka's validateOnlineUpgrade: a joining member, the policy allows
        it, the classic group uses the consumer protocol and fits."""
        if req.member_epoch != 0:
            return False
        why = None
        if not self.consumer.config.migration_policy.upgrade:
            why = "the online upgrade is disabled (group.consumer.migration.policy)"
        elif classic.protocol_type != CONSUMER:
            why = f"its protocol type is {classic.protocol_type!r}, not 'consumer'"
        elif len(classic.members) >= self.consumer.config.max_size:
            why = "its size reaches group.consumer.max.size"
        if why is not None:
            log.info("group %s: not upgraded to a consumer group: %s", classic.group_id, why)
        return why is None

    def _upgrade(self, classic: Group) -> None:
        """Convert a classic group with members to a consumer group; its
        members stay classic. Joins and syncs under way are answered
        REBALANCE_IN_PROGRESS (they rejoin, now into the consumer group)."""
        name = classic.protocol_name
        snapshots = [
            ClassicSnapshot(
                m.member_id,
                m.group_instance_id,
                m.client_id,
                m.client_host,
                m.session_timeout_ms,
                m.rebalance_timeout_ms,
                m.protocols,
                m.metadata(name) if name is not None else m.protocols[0][1],
                m.assignment,
            )
            for m in classic.members.values()
        ]
        self.consumer.from_classic(classic.group_id, classic.generation, snapshots, self._now())
        for m in classic.members.values():
            if m.join_future is not None:
                _resolve(m.join_future, JoinResult(ErrorCode.rebalance_in_progress, m.member_id))
                m.join_future = None
            if m.sync_future is not None:
                _resolve(m.sync_future, SyncResult(ErrorCode.rebalance_in_progress))
                m.sync_future = None
        self._drop_group(classic)

    def _downgrade(self, group_id: str) -> None:
        """The last consumer-protocol member left: the classic members make a
        classic group again (Kafka's online downgrade), Stable with their
        current assignments, and rebalance at once as a classic group."""
        cg = self.consumer.groups[group_id]
        if len(cg.members) > self.config.max_size:
            log.info("group %s: not downgraded: larger than group.max.size", group_id)
            return
        del self.consumer.groups[group_id]
        self.offsets.save_consumer_state(self._state.clear(group_id))
        group = Group(
            group_id,
            state=State.STABLE,
            generation=max(m.epoch for m in cg.members.values()),
            protocol_type=CONSUMER,
        )
        for cm in cg.members.values():
            meta = cm.classic
            assert meta is not None
            member = Member(
                cm.member_id,
                cm.instance_id,
                cm.client_id,
                cm.client_host,
                meta.session_timeout_ms,
                cm.rebalance_timeout_ms,
                CONSUMER,
                meta.protocols,
                assignment=encode_assignment(cm.assigned, meta.version),
            )
            group.members[member.member_id] = member
            if member.group_instance_id is not None:
                group.static[member.group_instance_id] = member.member_id
            self._arm(group, member)
        group.leader = next(iter(group.members))
        group.protocol_name = group.select_protocol()
        self.groups[group_id] = group
        log.info(
            "group %s: consumer group converted to a classic group with %d members",
            group_id,
            len(group.members),
        )
        self._prepare_rebalance(group, "downgraded from a consumer group")
        self.offsets.save_group(group.row())

    def consumer_group(self, group_id: str) -> ConsumerGroup | None:
        return self.consumer.groups.get(group_id)

    def group_type(self, group_id: str) -> str | None:
        if group_id in self.consumer.groups:
            return CONSUMER_TYPE
        group = self.groups.get(group_id)
        if group is not None and group.state is not State.DEAD:
            return CLASSIC_TYPE
        return None

    def check_fetch(self, group_id: str, member_id: str | None, epoch: int) -> ErrorCode:
        """OffsetFetch v9+: a consumer-protocol member fetches at its epoch."""
        if group_id in self.consumer.groups:
            return self.consumer.check_fetch(group_id, member_id, epoch)
        return ErrorCode.none

    def _now(self) -> int:
        return int(self._loop.time() * 1000)

    def _consumer_changed(self, member: tuple[str, str] | None = None) -> None:
        """Store the rows of groups whose epoch or state changed, and of the
        member a request was for (its epoch or assignment may have moved);
        aim the one timer at the earliest member deadline."""
        for gid in self.consumer.changed:
            if self.consumer.downgradable(gid):
                self._downgrade(gid)
            cg = self.consumer.groups.get(gid)
            if cg is None:
                continue
            if not cg.members:
                cg.state_ms = now_ms()
            self.offsets.save_group(_consumer_row(cg))
            if (op := self._state.group(cg)) is not None:
                self.offsets.save_consumer_state(op)
        if member is not None and member[0] not in self.consumer.changed:
            cg = self.consumer.groups.get(member[0])
            if cg is not None and (op := self._state.member(cg, member[1])) is not None:
                self.offsets.save_consumer_state(op)
        self.consumer.changed.clear()
        deadline = self.consumer.next_deadline()
        if deadline is None or (
            self._consumer_timer_at is not None and self._consumer_timer_at <= deadline
        ):
            return
        if self._consumer_timer is not None:
            self._consumer_timer.cancel()
        self._consumer_timer_at = deadline
        self._consumer_timer = self._loop.call_at(deadline / 1000, self._consumer_expire)

    def _consumer_expire(self) -> None:
        self._consumer_timer = None
        self._consumer_timer_at = None
        self.consumer.expire(self._now())
        self._consumer_changed()

    # offsets -------------------------------------------------------------------

    def check_commit(
        self,
        group_id: str,
        generation: int,
        member_id: str,
        group_instance_id: str | None,
        api_version: int = 8,
    ) -> ErrorCode:
        """May this request commit offsets? Creates the group for a simple
        (generation -1) commit, as Kafka does. For a consumer-protocol group
        the generation is the member epoch."""
        if (gated := self.gate(group_id)) is not None:
            return gated
        if group_id in self.consumer.groups:
            return self.consumer.check_commit(group_id, member_id, generation, api_version)
        group = self.groups.get(group_id)
        if group is None:
            if generation >= 0:
                return ErrorCode.illegal_generation
            group = self.groups[group_id] = Group(group_id)
            self.offsets.save_group(group.row())
        if group.state is State.DEAD:
            return ErrorCode.coordinator_not_available
        if generation >= 0 or member_id or group_instance_id is not None:
            error = _check_member(group, member_id, group_instance_id)
            if error is not None:
                return error
            if generation != group.generation:
                return ErrorCode.illegal_generation
        elif group.state is not State.EMPTY:
            return ErrorCode.unknown_member_id  # only members commit for a live group
        if generation >= 0 and group.state is State.COMPLETING_REBALANCE:
            return ErrorCode.rebalance_in_progress
        member = group.members.get(member_id)
        if member is not None:
            self._arm(group, member)
        return ErrorCode.none

    def commit(
        self, group_id: str, entries: Mapping[TopicPartition, CommittedOffset]
    ) -> asyncio.Future[None]:
        return self.offsets.commit(group_id, entries)

    def committed(self, group_id: str) -> Mapping[TopicPartition, CommittedOffset]:
        return self.offsets.committed(group_id)

    async def adopt(self, group_id: str) -> None:
        """Cluster mode: this broker now coordinates the group. Load it (and
        its offsets) from the metadata store, where the previous coordinator
        wrote them; consumer-protocol members continue at their epochs,
        classic members rejoin, as after a coordinator move in Kafka."""
        self.release(group_id)
        row, offsets = await self.offsets.repo.load_group(group_id)
        states = await self.offsets.repo.load_consumer_state(group_id)
        self.offsets.replace(group_id, offsets)
        self._restore([row] if row is not None else [], states)

    def release(self, group_id: str) -> None:
        """Cluster mode: another broker coordinates the group now; forget it
        here (queued offset writes still go out)."""
        self.consumer.groups.pop(group_id, None)
        self._state.forget(group_id)
        group = self.groups.pop(group_id, None)
        if group is not None:
            self._cancel_timers(group)
            for m in group.members.values():
                if m.join_future is not None and not m.join_future.done():
                    _resolve(m.join_future, JoinResult(ErrorCode.not_coordinator, m.member_id))
                if m.sync_future is not None and not m.sync_future.done():
                    _resolve(m.sync_future, SyncResult(ErrorCode.not_coordinator))
        self.offsets.replace(group_id, [])

    def release_all(self) -> None:
        for gid in list(self.groups) + list(self.consumer.groups) + list(self.offsets.group_ids()):
            self.release(gid)

    def pending_writes(self, group_ids: Iterable[str]) -> list[asyncio.Future[None]]:
        """Unwritten changes to these groups, for reads that must see them."""
        return [f for f in map(self.offsets.barrier, group_ids) if f is not None]

    async def delete_offsets(
        self, group_id: str, keys: list[TopicPartition]
    ) -> tuple[ErrorCode, dict[TopicPartition, ErrorCode]]:
        """OffsetDelete (KIP-496): only offsets no live member subscribes to."""
        results: dict[TopicPartition, ErrorCode] = {}
        group = self.groups.get(group_id)
        if group_id in self.consumer.groups:
            live = self.consumer.subscribed_topics(group_id)
            for key in keys:
                if key[0] in live:
                    results[key] = ErrorCode.group_subscribed_to_topic
        elif group is None or group.state is State.DEAD:
            return ErrorCode.group_id_not_found, {}
        elif group.members:
            if group.protocol_type != CONSUMER:
                return ErrorCode.non_empty_group, {}
            subscribed = group.subscribed_topics()
            for key in keys:
                if subscribed is None or key[0] in subscribed:
                    results[key] = ErrorCode.group_subscribed_to_topic
        deletable = [k for k in keys if k not in results]
        committed = self.offsets.committed(group_id)
        present = [k for k in deletable if k in committed]
        if present:
            try:
                await self.offsets.delete(group_id, present)
            except OffsetWriteError:
                return ErrorCode.coordinator_not_available, {}
            log.info("group %s: deleted offsets of %d partitions", group_id, len(present))
        for k in deletable:
            results[k] = ErrorCode.none
        return ErrorCode.none, results

    async def topic_deleted(self, topic: str) -> None:
        """Forget every group's offsets of a deleted topic. A failed write is
        logged, not raised: the topic is gone either way."""
        try:
            await self.offsets.delete_topic(topic)
        except OffsetWriteError as exc:
            log.warning("offsets of deleted topic %s not removed: %s", topic, exc)

    async def expire_offsets(self, now: int | None = None) -> int:
        """Drop offsets of groups that have been Empty for offsets.retention.minutes
        (counted from the later of the commit and the group becoming empty), then
        groups left with nothing. Returns how many offsets expired."""
        now = now_ms() if now is None else now
        retention = self.config.offsets_retention_ms
        writes: list[asyncio.Future[None]] = []
        expired_total = 0
        for cg in list(self.consumer.groups.values()):
            if cg.members:
                continue
            committed = self.offsets.committed(cg.group_id)
            expired = [
                k for k, c in committed.items() if max(c.commit_ms, cg.state_ms) + retention <= now
            ]
            if len(expired) == len(committed):
                del self.consumer.groups[cg.group_id]
                self._state.forget(cg.group_id)  # the rows go with the group's
                writes.append(self.offsets.delete_group(cg.group_id))
                log.info("group %s: removed (empty, %d offsets expired)", cg.group_id, len(expired))
                expired_total += len(expired)
            elif expired:
                writes.append(self.offsets.delete(cg.group_id, expired))
                log.info("group %s: %d offsets expired", cg.group_id, len(expired))
                expired_total += len(expired)
        for group in list(self.groups.values()):
            if group.state is not State.EMPTY:
                continue
            committed = self.offsets.committed(group.group_id)
            expired = [
                key
                for key, c in committed.items()
                if max(c.commit_ms, group.state_ms) + retention <= now
            ]
            if len(expired) == len(committed):
                if group.join_timer is None and not group.pending:
                    self._drop_group(group)
                    writes.append(self.offsets.delete_group(group.group_id))
                    log.info(
                        "group %s: removed (empty, %d offsets expired)",
                        group.group_id,
                        len(expired),
                    )
                    expired_total += len(expired)
            elif expired:
                writes.append(self.offsets.delete(group.group_id, expired))
                log.info("group %s: %d offsets expired", group.group_id, len(expired))
                expired_total += len(expired)
        await asyncio.gather(*writes)
        return expired_total

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.retention_check_interval_ms / 1000)
            try:
                await self.expire_offsets()
            except Exception:
                log.exception("offset expiry failed")


def _no_gate(_group_id: str) -> ErrorCode | None:
    return None


class _NoTopics:
    """A catalog without topics, for coordinators built without one (tests)."""

    def topic(self, name: str) -> tuple[uuid.UUID, int] | None:
        return None

    def names(self) -> Iterable[str]:
        return ()


def _consumer_row(group: ConsumerGroup) -> GroupRow:
    return GroupRow(
        group.group_id,
        CONSUMER,
        group.epoch,
        KIP848_STATE_PREFIX + group.state.value,
        group.state_ms or now_ms(),
    )


def _check_member(group: Group, member_id: str, group_instance_id: str | None) -> ErrorCode | None:
    """A static member's instance id must map to this member id (else it has been
    replaced: FENCED_INSTANCE_ID); any member id must be in the group."""
    if group_instance_id is not None:
        current = group.static.get(group_instance_id)
        if current is None:
            return ErrorCode.unknown_member_id
        if current != member_id:
            return ErrorCode.fenced_instance_id
    if member_id not in group.members:
        return ErrorCode.unknown_member_id
    return None


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)
