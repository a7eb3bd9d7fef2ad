"""Repository for ACLs: rows of Kafka's wire codes, plus a version counter.

Every change is one transaction that also bumps `acls.version`, so a broker
learns of another's change by reading one row. Rows are plain values: the
matching rules live in `shoal.security`, which hands predicates in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from sqlalchemy import delete, select

from shoal.meta import schema as s
from shoal.meta.store import MetaStore

VERSION_COUNTER = "acls.version"


class AclRow(NamedTuple):
    resource_type: int
    resource_name: str
    pattern_type: int
    principal: str
    host: str
    operation: int
    permission: int


_COLUMNS = AclRow._fields


class AclStore:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta

    async def version(self) -> int:
        return await self.meta.read_counter(VERSION_COUNTER)

    async def load(self) -> tuple[int, list[AclRow]]:
        """Every ACL and the version they are at, read together."""
        t = s.acls
        async with self.meta.engine.connect() as conn:
            async with conn.begin():
                version = await self.meta.read_counter(VERSION_COUNTER, conn)
                rows = (await conn.execute(select(*(t.c[n] for n in _COLUMNS)))).all()
        return version, [AclRow(*r) for r in rows]

    async def create(self, rows: Sequence[AclRow]) -> int:
        """Add the rows that are not there yet (Kafka ignores duplicates);
        returns the new version."""
        t = s.acls
        async with self.meta._tx() as conn:
            existing = {
                AclRow(*r) for r in (await conn.execute(select(*(t.c[n] for n in _COLUMNS)))).all()
            }
            new = list(dict.fromkeys(r for r in rows if r not in existing))
            if new:
                await conn.execute(t.insert(), [r._asdict() for r in new])
            return await self.meta.bump_counter(conn, VERSION_COUNTER, 1)

    async def delete(
        self, predicates: Sequence[Callable[[AclRow], bool]]
    ) -> tuple[int, list[list[AclRow]]]:
        """Delete every row any predicate selects; returns the new version
        and, per predicate, the rows it selected."""
        t = s.acls
        async with self.meta._tx() as conn:
            rows = [
                (int(r[0]), AclRow(*r[1:]))
                for r in (await conn.execute(select(t.c.id, *(t.c[n] for n in _COLUMNS)))).all()
            ]
            matched = [[row for _id, row in rows if pred(row)] for pred in predicates]
            ids = [i for i, row in rows if any(pred(row) for pred in predicates)]
            for start in range(0, len(ids), 500):
                await conn.execute(delete(t).where(t.c.id.in_(ids[start : start + 500])))
            version = await self.meta.bump_counter(conn, VERSION_COUNTER, 1)
        return version, matched
