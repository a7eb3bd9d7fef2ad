"""Repository for the transaction coordinator's state: one row per
transactional id (see schema.transactions). Every state change is one upsert,
made durable before the coordinator acts on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from shoal.meta import schema as s
from shoal.meta.store import MetaStore


@dataclass(frozen=True, slots=True)
class TxnRow:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: str
    partitions: str  # JSON
    offsets: str  # JSON
    start_ms: int
    update_ms: int


class TxnRepository:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta
        dialect: Any = sqlite if meta.is_sqlite else postgresql
        t = s.transactions
        ins = dialect.insert(t)
        self._upsert = ins.on_conflict_do_update(
            index_elements=[t.c.transactional_id],
            set_={c.name: ins.excluded[c.name] for c in t.columns if not c.primary_key},
        )

    async def load(self, transactional_id: str | None = None) -> list[TxnRow]:
        """One id's row (or none), or every row when `transactional_id` is None."""
        t = s.transactions
        q = select(t)
        if transactional_id is not None:
            q = q.where(t.c.transactional_id == transactional_id)
        async with self.meta.engine.connect() as conn:
            return [
                TxnRow(
                    r.transactional_id,
                    r.producer_id,
                    r.producer_epoch,
                    r.timeout_ms,
                    r.state,
                    r.partitions,
                    r.offsets,
                    r.start_ms,
                    r.update_ms,
                )
                for r in await conn.execute(q)
            ]

    async def save(self, row: TxnRow) -> None:
        async with self.meta._tx() as conn:
            await conn.execute(
                self._upsert,
                {
                    "transactional_id": row.transactional_id,
                    "producer_id": row.producer_id,
                    "producer_epoch": row.producer_epoch,
                    "timeout_ms": row.timeout_ms,
                    "state": row.state,
                    "partitions": row.partitions,
                    "offsets": row.offsets,
                    "start_ms": row.start_ms,
                    "update_ms": row.update_ms,
                },
            )

    async def delete(self, transactional_ids: list[str]) -> None:
        t = s.transactions
        async with self.meta._tx() as conn:
            await conn.execute(delete(t).where(t.c.transactional_id.in_(transactional_ids)))
