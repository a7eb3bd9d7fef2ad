"""Consumer-protocol groups to stored rows and back, and what to write.

The coordinator keeps the group in memory; `StateDiff` remembers what was last
queued for each group and turns a change into the smallest write: a heartbeat
that changes nothing writes nothing, one that moves a member to a new epoch
writes that member's row, a new target rewrites the members whose target moved.
Sans-IO: the coordinator queues the operations on the offset store's writer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping

from shoal.group.consumer import (
    ClassicMeta,
    ConsumerGroup,
    ConsumerMember,
    MemberState,
)
from shoal.meta.group_state import (
    ClearConsumerState,
    GroupStateRow,
    MemberStateRow,
    Parts,
    SaveConsumerState,
)


def _parts(a: Mapping[str, frozenset[int]]) -> Parts:
    return tuple(sorted((t, tuple(sorted(ps))) for t, ps in a.items() if ps))


def _assignment(parts: Parts) -> dict[str, frozenset[int]]:
    return {t: frozenset(ps) for t, ps in parts if ps}


def _classic_json(meta: ClassicMeta | None) -> str | None:
    if meta is None:
        return None
    return json.dumps(
        {
            "session_timeout_ms": meta.session_timeout_ms,
            "protocols": [[n, base64.b64encode(d).decode()] for n, d in meta.protocols],
        }
    )


def _classic(text: str | None) -> ClassicMeta | None:
    if text is None:
        return None
    data = json.loads(text)
    return ClassicMeta(
        int(data["session_timeout_ms"]),
        tuple((str(n), base64.b64decode(d)) for n, d in data["protocols"]),
    )


def group_row(group: ConsumerGroup) -> GroupStateRow:
    return GroupStateRow(
        group.group_id, group.epoch, group.assignment_epoch, group.assignor, group.topics
    )


def member_row(group: ConsumerGroup, m: ConsumerMember) -> MemberStateRow:
    return MemberStateRow(
        member_id=m.member_id,
        instance_id=m.instance_id,
        member_epoch=m.epoch,
        previous_epoch=m.previous_epoch,
        state=m.state.value,
        rack_id=m.rack_id,
        client_id=m.client_id,
        client_host=m.client_host,
        topic_names=m.topic_names,
        topic_regex=m.topic_regex,
        hidden_topics=tuple(sorted(m.hidden_topics)),
        server_assignor=m.server_assignor,
        rebalance_timeout_ms=m.rebalance_timeout_ms,
        assigned=_parts(m.assigned),
        pending_revocation=_parts(m.pending_revocation),
        target=_parts(group.target.get(m.member_id, {})),
        classic=_classic_json(m.classic),
    )


def from_rows(row: GroupStateRow, members: Iterable[MemberStateRow]) -> ConsumerGroup:
    """The group as stored, without timers: `ConsumerGroups.restore` arms them."""
    group = ConsumerGroup(
        row.group_id,
        epoch=row.group_epoch,
        assignment_epoch=row.assignment_epoch,
        assignor=row.assignor,
        topics=row.topics,
    )
    for r in members:
        group.members[r.member_id] = ConsumerMember(
            r.member_id,
            instance_id=r.instance_id,
            rack_id=r.rack_id,
            client_id=r.client_id,
            client_host=r.client_host,
            rebalance_timeout_ms=r.rebalance_timeout_ms,
            topic_names=r.topic_names,
            topic_regex=r.topic_regex,
            hidden_topics=frozenset(r.hidden_topics),
            server_assignor=r.server_assignor,
            epoch=r.member_epoch,
            previous_epoch=r.previous_epoch,
            state=MemberState(r.state),
            assigned=_assignment(r.assigned),
            pending_revocation=_assignment(r.pending_revocation),
            classic=_classic(r.classic),
        )
        if r.target:
            group.target[r.member_id] = _assignment(r.target)
    return group


class StateDiff:
    """What was last queued per group, to write only what changed."""

    def __init__(self) -> None:
        self._stored: dict[str, tuple[GroupStateRow, dict[str, MemberStateRow]]] = {}

    def forget(self, group_id: str) -> None:
        """Not known: no longer coordinated here (the rows stay for the next
        coordinator), or just loaded (its next write rewrites the group)."""
        self._stored.pop(group_id, None)

    def clear(self, group_id: str) -> ClearConsumerState:
        """No longer a consumer-protocol group: its rows go."""
        self._stored.pop(group_id, None)
        return ClearConsumerState(group_id)

    def group(self, group: ConsumerGroup) -> SaveConsumerState | None:
        """Compare the whole group (membership, epochs or the target changed)."""
        stored = self._stored.get(group.group_id)
        row = group_row(group)
        members = {mid: member_row(group, m) for mid, m in group.members.items()}
        self._stored[group.group_id] = (row, members)
        if stored is None:
            return SaveConsumerState(row, list(members.values()), [], replace=True)
        old_row, old_members = stored
        upsert = [r for mid, r in members.items() if old_members.get(mid) != r]
        gone = [mid for mid in old_members if mid not in members]
        if row == old_row and not upsert and not gone:
            return None
        return SaveConsumerState(row, upsert, gone)

    def member(self, group: ConsumerGroup, member_id: str) -> SaveConsumerState | None:
        """Compare one member (its heartbeat may have moved its epoch or
        assignment); the whole group if it is not known yet."""
        stored = self._stored.get(group.group_id)
        if stored is None:
            return self.group(group)
        m = group.members.get(member_id)
        old_row, old_members = stored
        row = group_row(group)
        if m is None:  # gone (the whole group tells what else went), or never there
            if member_id in old_members or row != old_row:
                return self.group(group)
            return None
        new = member_row(group, m)
        if old_members.get(member_id) == new and row == old_row:
            return None
        old_members[member_id] = new
        self._stored[group.group_id] = (row, old_members)
        return SaveConsumerState(row, [new], [])
