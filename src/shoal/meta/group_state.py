"""Stored state of consumer-protocol (KIP-848) groups.

A coordinator that takes over a group (start-up, or a group moving to it in a
cluster) reads these rows and continues the group where the previous
coordinator left it: members keep their epochs and partitions, so no partition
is handed to a newcomer while a member from before the move still consumes it.
Rows are plain values here; `shoal.group.persist` converts them to and from the
state machine's groups.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from shoal.meta import schema as s
from shoal.meta.params import in_

# {"topic": [partitions]} as sorted tuples, so that equal assignments compare equal
Parts = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class GroupStateRow:
    group_id: str
    group_epoch: int
    assignment_epoch: int
    assignor: str
    topics: tuple[tuple[str, str, int], ...]


@dataclass(frozen=True, slots=True)
class MemberStateRow:
    member_id: str
    instance_id: str | None
    member_epoch: int
    previous_epoch: int
    state: str
    rack_id: str | None
    client_id: str
    client_host: str
    topic_names: tuple[str, ...]
    topic_regex: str | None
    hidden_topics: tuple[str, ...]
    server_assignor: str | None
    rebalance_timeout_ms: int
    assigned: Parts
    pending_revocation: Parts
    target: Parts
    classic: str | None  # JSON of a classic member's session timeout and protocols


@dataclass(frozen=True, slots=True)
class SaveConsumerState:
    """The group's row, members written and members gone; `replace` first
    drops every member row of the group (the first write after a load or a
    conversion, when what is stored is not known)."""

    group: GroupStateRow
    upsert: Sequence[MemberStateRow]
    delete: Sequence[str]
    replace: bool = False


@dataclass(frozen=True, slots=True)
class ClearConsumerState:
    """The group is no longer a consumer-protocol group here (deleted,
    expired, or converted to a classic group)."""

    group_id: str


def _parts(text: str) -> Parts:
    data: dict[str, list[int]] = json.loads(text)
    return tuple(sorted((t, tuple(sorted(ps))) for t, ps in data.items()))


def _json_parts(parts: Parts) -> str:
    return json.dumps({t: list(ps) for t, ps in parts})


def _member_values(group_id: str, m: MemberStateRow) -> dict[str, Any]:
    return {
        "group_id": group_id,
        "member_id": m.member_id,
        "instance_id": m.instance_id,
        "member_epoch": m.member_epoch,
        "previous_epoch": m.previous_epoch,
        "state": m.state,
        "rack_id": m.rack_id,
        "client_id": m.client_id,
        "client_host": m.client_host,
        "subscribed_topic_names": json.dumps(list(m.topic_names)),
        "subscribed_topic_regex": m.topic_regex,
        "hidden_topics": json.dumps(list(m.hidden_topics)),
        "server_assignor": m.server_assignor,
        "rebalance_timeout_ms": m.rebalance_timeout_ms,
        "assigned": _json_parts(m.assigned),
        "pending_revocation": _json_parts(m.pending_revocation),
        "target": _json_parts(m.target),
        "classic": m.classic,
    }


def _member_row(r: Any) -> MemberStateRow:
    return MemberStateRow(
        member_id=r.member_id,
        instance_id=r.instance_id,
        member_epoch=r.member_epoch,
        previous_epoch=r.previous_epoch,
        state=r.state,
        rack_id=r.rack_id,
        client_id=r.client_id,
        client_host=r.client_host,
        topic_names=tuple(json.loads(r.subscribed_topic_names)),
        topic_regex=r.subscribed_topic_regex,
        hidden_topics=tuple(json.loads(r.hidden_topics)),
        server_assignor=r.server_assignor,
        rebalance_timeout_ms=r.rebalance_timeout_ms,
        assigned=_parts(r.assigned),
        pending_revocation=_parts(r.pending_revocation),
        target=_parts(r.target),
        classic=r.classic,
    )


StoredGroups = dict[str, tuple[GroupStateRow, list[MemberStateRow]]]


async def load(conn: AsyncConnection, group_id: str | None = None) -> StoredGroups:
    """Every stored consumer-protocol group (or the one named)."""
    g, m = s.consumer_group_state, s.consumer_group_members
    gq, mq = select(g), select(m)
    if group_id is not None:
        gq, mq = gq.where(g.c.group_id == group_id), mq.where(m.c.group_id == group_id)
    out: StoredGroups = {}
    for r in await conn.execute(gq):
        topics = tuple((str(n), str(i), int(c)) for n, i, c in json.loads(r.topics))
        row = GroupStateRow(r.group_id, r.group_epoch, r.assignment_epoch, r.assignor, topics)
        out[r.group_id] = (row, [])
    for r in await conn.execute(mq):
        if r.group_id in out:
            out[r.group_id][1].append(_member_row(r))
    return out


class GroupStateWriter:
    """Applies SaveConsumerState and ClearConsumerState inside the group
    repository's transaction (upserts per dialect)."""

    def __init__(self, is_sqlite: bool) -> None:
        dialect: Any = sqlite if is_sqlite else postgresql
        g = dialect.insert(s.consumer_group_state)
        self._upsert_group = g.on_conflict_do_update(
            index_elements=[s.consumer_group_state.c.group_id],
            set_={
                "group_epoch": g.excluded.group_epoch,
                "assignment_epoch": g.excluded.assignment_epoch,
                "assignor": g.excluded.assignor,
                "topics": g.excluded.topics,
            },
        )
        m = dialect.insert(s.consumer_group_members)
        cols = [
            c.name for c in s.consumer_group_members.c if c.name not in ("group_id", "member_id")
        ]
        self._upsert_member = m.on_conflict_do_update(
            index_elements=[
                s.consumer_group_members.c.group_id,
                s.consumer_group_members.c.member_id,
            ],
            set_={c: m.excluded[c] for c in cols},
        )

    async def apply(
        self, conn: AsyncConnection, op: SaveConsumerState | ClearConsumerState
    ) -> None:
        m = s.consumer_group_members
        if isinstance(op, ClearConsumerState):
            await self.clear(conn, op.group_id)
            return
        gid = op.group.group_id
        if op.replace:
            await conn.execute(delete(m).where(m.c.group_id == gid))
        elif op.delete:
            await conn.execute(
                delete(m).where(m.c.group_id == gid, in_(m.c.member_id, list(op.delete)))
            )
        row = op.group
        await conn.execute(
            self._upsert_group,
            {
                "group_id": gid,
                "group_epoch": row.group_epoch,
                "assignment_epoch": row.assignment_epoch,
                "assignor": row.assignor,
                "topics": json.dumps([list(t) for t in row.topics]),
            },
        )
        if op.upsert:
            stmt = insert(m) if op.replace else self._upsert_member
            await conn.execute(stmt, [_member_values(gid, r) for r in op.upsert])

    @staticmethod
    async def clear(conn: AsyncConnection, group_id: str) -> None:
        m, g = s.consumer_group_members, s.consumer_group_state
        await conn.execute(delete(m).where(m.c.group_id == group_id))
        await conn.execute(delete(g).where(g.c.group_id == group_id))
