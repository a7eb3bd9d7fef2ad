"""Repository for security state: SCRAM credentials, brokers' listener addresses.

Every credential change bumps a version counter in the same transaction;
brokers keep the credentials in memory and reload when it moves (see
security/credentials.py), so a login costs no metadata round trip while a
change made through any broker, or `shoal users`, applies everywhere within
about one poll interval.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update

from shoal.meta import schema as s
from shoal.meta.store import MetaStore, now_ms
from shoal.security.scram import ScramCredential

VERSION_COUNTER = "scram_credentials.version"


def _credential(r: Any) -> ScramCredential:
    return ScramCredential(
        r.mechanism, bytes(r.salt), bytes(r.stored_key), bytes(r.server_key), r.iterations
    )


class SecurityStore:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta

    async def version(self) -> int:
        return await self.meta.read_counter(VERSION_COUNTER)

    async def load_all(self) -> tuple[int, dict[str, dict[str, ScramCredential]]]:
        """Every user's credentials and the version they are at (one snapshot)."""
        t = s.scram_credentials
        async with self.meta.engine.connect() as conn:
            version = await self.meta.read_counter(VERSION_COUNTER, conn)
            rows = (await conn.execute(select(t))).all()
        users: dict[str, dict[str, ScramCredential]] = {}
        for r in rows:
            users.setdefault(r.user_name, {})[r.mechanism] = _credential(r)
        return version, users

    async def credentials(self, user: str) -> dict[str, ScramCredential]:
        """The user's credentials by mechanism (empty: unknown user)."""
        t = s.scram_credentials
        async with self.meta.engine.connect() as conn:
            rows = (await conn.execute(select(t).where(t.c.user_name == user))).all()
        return {r.mechanism: _credential(r) for r in rows}

    async def describe(
        self, users: Sequence[str] | None = None
    ) -> dict[str, list[tuple[str, int]]]:
        """user -> [(mechanism, iterations)], for the users given (or all)."""
        t = s.scram_credentials
        query = select(t.c.user_name, t.c.mechanism, t.c.iterations).order_by(
            t.c.user_name, t.c.mechanism
        )
        if users is not None:
            query = query.where(t.c.user_name.in_(list(users)))
        async with self.meta.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out: dict[str, list[tuple[str, int]]] = {}
        for r in rows:
            out.setdefault(r.user_name, []).append((r.mechanism, r.iterations))
        return out

    async def alter(
        self, upserts: Sequence[tuple[str, ScramCredential]], deletes: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Apply every change in one transaction; returns the (user,
        mechanism) deletions that found nothing to delete."""
        t = s.scram_credentials
        missing: set[tuple[str, str]] = set()
        now = now_ms()
        async with self.meta._tx() as conn:
            for user, mechanism in deletes:
                res = await conn.execute(
                    delete(t).where(t.c.user_name == user, t.c.mechanism == mechanism)
                )
                if res.rowcount == 0:
                    missing.add((user, mechanism))
            for user, cred in upserts:
                values = {
                    "salt": cred.salt,
                    "stored_key": cred.stored_key,
                    "server_key": cred.server_key,
                    "iterations": cred.iterations,
                    "updated_ms": now,
                }
                res = await conn.execute(
                    update(t)
                    .where(t.c.user_name == user, t.c.mechanism == cred.mechanism)
                    .values(**values)
                )
                if res.rowcount == 0:
                    await conn.execute(
                        insert(t).values(user_name=user, mechanism=cred.mechanism, **values)
                    )
            await self.meta.bump_counter(conn, VERSION_COUNTER, 1)
        return missing

    # listeners ---------------------------------------------------------------

    async def set_listeners(self, node_id: int, listeners: dict[str, tuple[str, int]]) -> None:
        t = s.broker_listeners
        doc = json.dumps({k: [h, p] for k, (h, p) in listeners.items()})
        async with self.meta._tx() as conn:
            res = await conn.execute(update(t).where(t.c.node_id == node_id).values(listeners=doc))
            if res.rowcount == 0:
                await conn.execute(insert(t).values(node_id=node_id, listeners=doc))

    async def listeners(self) -> dict[int, dict[str, tuple[str, int]]]:
        t = s.broker_listeners
        async with self.meta.engine.connect() as conn:
            rows = (await conn.execute(select(t))).all()
        out: dict[int, dict[str, tuple[str, int]]] = {}
        for r in rows:
            try:
                doc = json.loads(r.listeners)
                out[r.node_id] = {k: (str(v[0]), int(v[1])) for k, v in doc.items()}
            except (ValueError, TypeError, IndexError, AttributeError):
                continue  # a row from elsewhere that we cannot read: no listeners
        return out
