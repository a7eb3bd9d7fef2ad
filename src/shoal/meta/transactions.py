"""Repository for the transaction coordinator's state: one row per
transactional id (see schema.transactions). Every state change is one upsert,
made durable before the coordinator acts on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from shoal.meta import schema as s
from shoal.meta.params import in_
from shoal.meta.store import MetaStore, now_ms


@dataclass(frozen=True, slots=True)
class MarkerRow:
    """A marker a coordinator asked the owner of a stream to write."""

    id: int
    transactional_id: str
    stream_id: int
    producer_id: int
    producer_epoch: int
    commit: bool


class TxnConflict(Exception):
    """The row changed since it was read (another broker wrote it)."""


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
    #: the version read (0: a new id); saving writes version + 1
    version: int = 0
    #: transaction protocol version of the id's last end (2: KIP-890)
    txn_version: int = 0
    #: the producer id an epoch overflow replaced, or -1
    prev_producer_id: int = -1


class TxnRepository:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta
        dialect: Any = sqlite if meta.is_sqlite else postgresql
        t = s.transactions
        self._insert = dialect.insert(t).on_conflict_do_nothing(
            index_elements=[t.c.transactional_id]
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
                    r.version,
                    r.txn_version,
                    r.prev_producer_id,
                )
                for r in await conn.execute(q)
            ]

    async def save(self, row: TxnRow) -> int:
        """Write the row if it is still at the version read (compare-and-set);
        returns the new version, or raises TxnConflict."""
        t = s.transactions
        values = {
            "transactional_id": row.transactional_id,
            "producer_id": row.producer_id,
            "producer_epoch": row.producer_epoch,
            "timeout_ms": row.timeout_ms,
            "state": row.state,
            "partitions": row.partitions,
            "offsets": row.offsets,
            "start_ms": row.start_ms,
            "update_ms": row.update_ms,
            "version": row.version + 1,
            "txn_version": row.txn_version,
            "prev_producer_id": row.prev_producer_id,
        }
        async with self.meta._tx() as conn:
            if row.version == 0:
                res = await conn.execute(self._insert, values)
            else:
                res = await conn.execute(
                    update(t)
                    .where(
                        t.c.transactional_id == row.transactional_id,
                        t.c.version == row.version,
                    )
                    .values(**values)
                )
        if res.rowcount != 1:
            raise TxnConflict(
                f"transactional id {row.transactional_id!r} changed since version {row.version}"
            )
        return row.version + 1

    async def delete(self, transactional_ids: list[str]) -> None:
        t = s.transactions
        async with self.meta._tx() as conn:
            await conn.execute(delete(t).where(in_(t.c.transactional_id, transactional_ids)))

    async def ask_markers(
        self, tid: str, producer_id: int, epoch: int, commit: bool, stream_ids: list[int]
    ) -> None:
        """Ask the owners of these streams for a marker each (unless asked already)."""
        m = s.txn_markers
        async with self.meta._tx() as conn:
            asked = {
                r.stream_id
                for r in await conn.execute(
                    select(m.c.stream_id).where(
                        m.c.transactional_id == tid,
                        m.c.producer_id == producer_id,
                        m.c.producer_epoch == epoch,
                    )
                )
            }
            rows = [
                {
                    "transactional_id": tid,
                    "stream_id": sid,
                    "producer_id": producer_id,
                    "producer_epoch": epoch,
                    "commit": commit,
                    "created_ms": now_ms(),
                }
                for sid in stream_ids
                if sid not in asked
            ]
            if rows:
                await conn.execute(insert(m), rows)

    async def markers_left(self, tid: str) -> int:
        m = s.txn_markers
        async with self.meta.engine.connect() as conn:
            q = select(func.count()).select_from(m).where(m.c.transactional_id == tid)
            return int((await conn.execute(q)).scalar_one())

    async def pending_markers(self) -> list[MarkerRow]:
        """Every marker asked for and not written yet, oldest first: few
        (each goes once written), whichever broker owns their streams (the
        poller looks each one's partition up: txn_io.MarkerPoller). An IN
        list of the 10,000 streams a broker owns, 4 times a second, cost 71
        ms of the event loop to render each time (issue 13's fleet on
        PostgreSQL)."""
        m = s.txn_markers
        async with self.meta.engine.connect() as conn:
            rows = await conn.execute(select(m).order_by(m.c.id))
            return [
                MarkerRow(
                    r.id, r.transactional_id, r.stream_id, r.producer_id, r.producer_epoch, r.commit
                )
                for r in rows
            ]

    async def drop_marker(self, row_id: int) -> None:
        m = s.txn_markers
        async with self.meta._tx() as conn:
            await conn.execute(delete(m).where(m.c.id == row_id))
