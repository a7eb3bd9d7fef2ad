"""Repository for consumer groups and their committed offsets.

The coordinator keeps groups and offsets in memory and writes through this
module. `apply` takes an ordered list of changes and makes them in one
transaction, so a burst of concurrent OffsetCommits costs one commit of the
metadata store, not one each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from shoal.meta import group_state
from shoal.meta import schema as s
from shoal.meta.group_state import (
    ClearConsumerState,
    GroupStateWriter,
    SaveConsumerState,
    StoredGroups,
)
from shoal.meta.store import MetaStore


@dataclass(frozen=True, slots=True)
class GroupRow:
    group_id: str
    protocol_type: str
    generation: int
    state: str
    state_ms: int


@dataclass(frozen=True, slots=True)
class OffsetRow:
    group_id: str
    topic: str
    partition: int
    offset: int
    leader_epoch: int
    metadata: str
    commit_ms: int


@dataclass(frozen=True, slots=True)
class SaveGroup:
    row: GroupRow


@dataclass(frozen=True, slots=True)
class DeleteGroup:
    """The group's row, its consumer-protocol state and all its offsets."""

    group_id: str


@dataclass(frozen=True, slots=True)
class UpsertOffsets:
    rows: Sequence[OffsetRow]


@dataclass(frozen=True, slots=True)
class DeleteOffsets:
    group_id: str
    keys: Sequence[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class DeleteTopicOffsets:
    topic: str


Op = (
    SaveGroup
    | DeleteGroup
    | UpsertOffsets
    | DeleteOffsets
    | DeleteTopicOffsets
    | SaveConsumerState
    | ClearConsumerState
)

_DELETE_CHUNK = 200  # keys per DELETE statement, well under SQLite's variable limit


class GroupRepository:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta
        self._state = GroupStateWriter(meta.is_sqlite)
        dialect: Any = sqlite if meta.is_sqlite else postgresql
        off = dialect.insert(s.group_offsets)
        self._upsert_offsets = off.on_conflict_do_update(
            index_elements=[
                s.group_offsets.c.group_id,
                s.group_offsets.c.topic,
                s.group_offsets.c.partition,
            ],
            set_={
                "committed_offset": off.excluded.committed_offset,
                "leader_epoch": off.excluded.leader_epoch,
                "metadata": off.excluded.metadata,
                "commit_ms": off.excluded.commit_ms,
            },
        )
        grp = dialect.insert(s.consumer_groups)
        self._upsert_group = grp.on_conflict_do_update(
            index_elements=[s.consumer_groups.c.group_id],
            set_={
                "protocol_type": grp.excluded.protocol_type,
                "generation": grp.excluded.generation,
                "state": grp.excluded.state,
                "state_ms": grp.excluded.state_ms,
            },
        )

    async def load(self) -> tuple[list[GroupRow], list[OffsetRow]]:
        async with self.meta.engine.connect() as conn:
            groups = [
                GroupRow(r.group_id, r.protocol_type, r.generation, r.state, r.state_ms)
                for r in await conn.execute(select(s.consumer_groups))
            ]
            offsets = [
                OffsetRow(
                    r.group_id,
                    r.topic,
                    r.partition,
                    r.committed_offset,
                    r.leader_epoch,
                    r.metadata,
                    r.commit_ms,
                )
                for r in await conn.execute(select(s.group_offsets))
            ]
        return groups, offsets

    async def load_group(self, group_id: str) -> tuple[GroupRow | None, list[OffsetRow]]:
        """One group and its offsets (cluster mode: a group moving here)."""
        g, o = s.consumer_groups, s.group_offsets
        async with self.meta.engine.connect() as conn:
            r = (await conn.execute(select(g).where(g.c.group_id == group_id))).one_or_none()
            row = (
                GroupRow(r.group_id, r.protocol_type, r.generation, r.state, r.state_ms)
                if r is not None
                else None
            )
            offsets = [
                OffsetRow(
                    x.group_id,
                    x.topic,
                    x.partition,
                    x.committed_offset,
                    x.leader_epoch,
                    x.metadata,
                    x.commit_ms,
                )
                for x in await conn.execute(select(o).where(o.c.group_id == group_id))
            ]
        return row, offsets

    async def load_consumer_state(self, group_id: str | None = None) -> StoredGroups:
        """Consumer-protocol groups' members and epochs (all, or one group)."""
        async with self.meta.engine.connect() as conn:
            return await group_state.load(conn, group_id)

    async def group_ids(self) -> list[str]:
        g, o = s.consumer_groups, s.group_offsets
        async with self.meta.engine.connect() as conn:
            ids = {r[0] for r in await conn.execute(select(g.c.group_id))}
            ids |= {r[0] for r in await conn.execute(select(o.c.group_id).distinct())}
        return sorted(ids)

    async def apply(self, ops: Sequence[Op]) -> None:
        """Make every change in `ops`, in order, in one transaction."""
        async with self.meta._tx() as conn:
            pending: dict[tuple[str, str, int], OffsetRow] = {}
            for op in ops:
                if isinstance(op, UpsertOffsets):
                    for r in op.rows:
                        pending[(r.group_id, r.topic, r.partition)] = r
                    continue
                await self._flush_upserts(conn, pending)
                await self._apply_one(conn, op)
            await self._flush_upserts(conn, pending)

    async def _flush_upserts(
        self, conn: AsyncConnection, pending: dict[tuple[str, str, int], OffsetRow]
    ) -> None:
        """Consecutive upserts become one executemany; a key written twice keeps
        its last value (PostgreSQL refuses one statement touching a row twice)."""
        if not pending:
            return
        await conn.execute(
            self._upsert_offsets,
            [
                {
                    "group_id": r.group_id,
                    "topic": r.topic,
                    "partition": r.partition,
                    "committed_offset": r.offset,
                    "leader_epoch": r.leader_epoch,
                    "metadata": r.metadata,
                    "commit_ms": r.commit_ms,
                }
                for r in pending.values()
            ],
        )
        pending.clear()

    async def _apply_one(self, conn: AsyncConnection, op: Op) -> None:
        go = s.group_offsets
        if isinstance(op, SaveConsumerState | ClearConsumerState):
            await self._state.apply(conn, op)
        elif isinstance(op, SaveGroup):
            r = op.row
            await conn.execute(
                self._upsert_group,
                {
                    "group_id": r.group_id,
                    "protocol_type": r.protocol_type,
                    "generation": r.generation,
                    "state": r.state,
                    "state_ms": r.state_ms,
                },
            )
        elif isinstance(op, DeleteGroup):
            await conn.execute(delete(go).where(go.c.group_id == op.group_id))
            await self._state.clear(conn, op.group_id)
            await conn.execute(
                delete(s.consumer_groups).where(s.consumer_groups.c.group_id == op.group_id)
            )
        elif isinstance(op, DeleteOffsets):
            keys = list(op.keys)
            for i in range(0, len(keys), _DELETE_CHUNK):
                chunk = keys[i : i + _DELETE_CHUNK]
                await conn.execute(
                    delete(go).where(
                        go.c.group_id == op.group_id,
                        or_(*(and_(go.c.topic == t, go.c.partition == p) for t, p in chunk)),
                    )
                )
        elif isinstance(op, DeleteTopicOffsets):
            await conn.execute(delete(go).where(go.c.topic == op.topic))
