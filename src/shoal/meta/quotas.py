"""Repository for client quotas: (entity, key, value) rows plus a version
counter, bumped in the same transaction as every change so that brokers learn
of another's change by reading one row (as for ACLs)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select

from shoal.meta import schema as s
from shoal.meta.store import MetaStore

VERSION_COUNTER = "quotas.version"

#: (entity key, quota key, value or None to remove)
QuotaOp = tuple[str, str, float | None]


class QuotaStore:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta

    async def version(self) -> int:
        return await self.meta.read_counter(VERSION_COUNTER)

    async def load(self) -> tuple[int, list[tuple[str, str, float]]]:
        """Every quota and the version they are at, read together."""
        t = s.client_quotas
        async with self.meta.engine.connect() as conn:
            async with conn.begin():
                version = await self.meta.read_counter(VERSION_COUNTER, conn)
                rows = (await conn.execute(select(t.c.entity, t.c.key, t.c.value))).all()
        return version, [(str(e), str(k), float(v)) for e, k, v in rows]

    async def alter(self, ops: Sequence[QuotaOp]) -> int:
        """Set or remove each (entity, key) in one transaction; returns the
        new version."""
        t = s.client_quotas
        async with self.meta._tx() as conn:
            for entity, key, value in ops:
                where = (t.c.entity == entity) & (t.c.key == key)
                await conn.execute(delete(t).where(where))
                if value is not None:
                    await conn.execute(t.insert().values(entity=entity, key=key, value=value))
            return await self.meta.bump_counter(conn, VERSION_COUNTER, 1)
