"""Repository for cluster mode: broker leases, the controller lease, partition
owners and reassignments.

Every ownership change is one transaction that moves `partitions.owner_node`,
bumps the partition's leader epoch (clients refresh their metadata) and bumps
the stream's epoch, so the previous owner is fenced at its next commit even if
it never hears about the change (paused, partitioned, slow).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import delete, func, insert, or_, select, text, tuple_, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from shoal.meta import schema as s
from shoal.meta.params import in_, padded
from shoal.meta.store import MetaStore, now_ms

log = logging.getLogger("shoal.cluster")
T = TypeVar("T")

#: pg_advisory_lock key of broker start-up (any constant no other user takes)
STARTUP_LOCK = 0x5E0A1_0001


@dataclass(frozen=True, slots=True)
class BrokerRow:
    node_id: int
    incarnation: int
    host: str
    port: int
    rack: str | None
    registered_ms: int
    lease_expiry_ms: int
    draining: bool
    bytes_in: int
    bytes_out: int
    #: bytes in and out a second per partition ("topic_id:partition"), as
    #: last reported (BrokerLoad: parsed on first use)
    load: Mapping[str, list[int]]


@dataclass(frozen=True, slots=True)
class ControllerRow:
    node_id: int
    incarnation: int
    epoch: int
    lease_expiry_ms: int


@dataclass(frozen=True, slots=True)
class OwnerRow:
    topic_id: int
    topic: str
    partition: int
    stream_id: int
    owner: int | None
    leader_epoch: int


@dataclass(frozen=True, slots=True)
class ReassignmentRow:
    topic_id: int
    topic: str
    partition: int
    source_node: int | None
    target_node: int
    requested_ms: int
    moved_ms: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Move:
    topic_id: int
    partition: int
    stream_id: int
    old_owner: int | None
    new_owner: int


class ClusterStore:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta

    # brokers -------------------------------------------------------------

    @asynccontextmanager
    async def startup_lock(self) -> AsyncIterator[None]:
        """Held by a starting broker from its look at who is live until it
        has registered, so that of brokers starting together exactly one
        sees an empty cluster (PostgreSQL advisory lock on a connection of
        its own; SQLite has one writer anyway)."""
        if self.meta.is_sqlite:
            yield
            return
        async with self.meta.engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": STARTUP_LOCK})
            await conn.commit()
            try:
                yield
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": STARTUP_LOCK})
                await conn.commit()

    async def live_brokers(self, now: int | None = None) -> list[BrokerRow]:
        """Brokers whose lease runs at `now` (default: this moment)."""
        at = now_ms() if now is None else now
        return [b for b in await self.brokers() if b.lease_expiry_ms >= at]

    async def register(
        self, node_id: int, host: str, port: int, rack: str | None, lease_ms: int
    ) -> int:
        """Register (or re-register) this node; returns its new incarnation.

        A new incarnation makes any older process with the same id fail its
        next renewal, so it steps down.
        """
        b = s.brokers
        now = now_ms()
        async with self.meta._tx() as conn:
            old = (
                await conn.execute(select(b.c.incarnation).where(b.c.node_id == node_id))
            ).scalar()
            # From a counter, not the row: the row goes when the lease expires,
            # and incarnations must never repeat.
            inc = await self.meta.bump_counter(conn, "broker_incarnation", 1)
            values = {
                "incarnation": inc,
                "host": host,
                "port": port,
                "rack": rack,
                "registered_ms": now,
                "lease_expiry_ms": now + lease_ms,
                "draining": False,
                "bytes_in": 0,
                "bytes_out": 0,
                "load": "{}",
            }
            if old is None:
                await conn.execute(insert(b).values(node_id=node_id, **values))
            else:
                await conn.execute(update(b).where(b.c.node_id == node_id).values(**values))
        return inc

    async def renew(
        self,
        node_id: int,
        incarnation: int,
        lease_ms: int,
        bytes_in: int = 0,
        bytes_out: int = 0,
        load: str | None = None,
    ) -> bool:
        """Extend the lease; False if this incarnation is no longer registered.
        `load` (per partition, JSON: `PartitionWindow.to_json`) is left as
        last reported when None.

        One statement, no transaction held open (MetaStore._statements).
        A connection found dead (its session ended by the server) is
        replaced and the renewal tried once more at once on a fresh one,
        rather than a heartbeat interval later: it is idempotent, and the
        lease may have little time left."""
        args = (node_id, incarnation, lease_ms, bytes_in, bytes_out, load)
        try:
            return await self._renew(*args)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.warning(
                "node %d: lease renewal found its database connection dead, "
                "retrying at once on a new one: %s",
                node_id,
                str(exc.orig or exc).splitlines()[0],
            )
        return await self._renew(*args)

    async def _renew(
        self,
        node_id: int,
        incarnation: int,
        lease_ms: int,
        bytes_in: int,
        bytes_out: int,
        load: str | None,
    ) -> bool:
        b = s.brokers
        values: dict[str, object] = {
            "lease_expiry_ms": now_ms() + lease_ms,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        }
        if load is not None:
            values["load"] = load
        async with self.meta._statements(write=True) as conn:
            mine = update(b).where(b.c.node_id == node_id, b.c.incarnation == incarnation)
            res = await conn.execute(mine.values(values))
        return res.rowcount == 1

    async def deregister(self, node_id: int, incarnation: int) -> None:
        """Graceful shutdown: let the controller hand our partitions on now."""
        b = s.brokers
        async with self.meta._tx() as conn:
            await conn.execute(
                delete(b).where(b.c.node_id == node_id, b.c.incarnation == incarnation)
            )

    async def brokers(self) -> list[BrokerRow]:
        b = s.brokers
        async with self.meta._statements(write=False) as conn:
            rows = await conn.execute(select(b).order_by(b.c.node_id))
            return [
                BrokerRow(
                    r.node_id,
                    r.incarnation,
                    r.host,
                    r.port,
                    r.rack,
                    r.registered_ms,
                    r.lease_expiry_ms,
                    bool(r.draining),
                    r.bytes_in,
                    r.bytes_out,
                    BrokerLoad(r.load),
                )
                for r in rows
            ]

    async def expire(self, now: int, forget_after_ms: int = 3_600_000) -> list[int]:
        """Ids of brokers whose lease ran out. Their rows stay for an hour so
        `cluster status` can show them as expired (a crashed broker should not
        just vanish from the list); older ones are deleted."""
        b = s.brokers
        async with self.meta._tx() as conn:
            await conn.execute(delete(b).where(b.c.lease_expiry_ms < now - forget_after_ms))
            ids = [
                int(r[0])
                for r in await conn.execute(select(b.c.node_id).where(b.c.lease_expiry_ms < now))
            ]
        return ids

    async def set_draining(self, node_id: int, draining: bool = True) -> bool:
        b = s.brokers
        async with self.meta._tx() as conn:
            res = await conn.execute(
                update(b).where(b.c.node_id == node_id).values(draining=draining)
            )
        return res.rowcount == 1

    # controller ------------------------------------------------------------

    async def take_controller(self, node_id: int, incarnation: int, lease_ms: int) -> bool:
        """Take or renew the controller lease (compare-and-set on one row)."""
        c = s.controller
        now = now_ms()
        # Each statement stands alone (compare-and-sets on one row).
        async with self.meta._statements(write=True) as conn:
            mine = (c.c.node_id == node_id) & (c.c.incarnation == incarnation)
            res = await conn.execute(
                update(c).where(c.c.id == 1, mine).values(lease_expiry_ms=now + lease_ms)
            )
            if res.rowcount == 1:
                return True
            res = await conn.execute(
                update(c)
                .where(c.c.id == 1, c.c.lease_expiry_ms < now)
                .values(
                    node_id=node_id,
                    incarnation=incarnation,
                    epoch=c.c.epoch + 1,
                    lease_expiry_ms=now + lease_ms,
                )
            )
            if res.rowcount == 1:
                return True
            exists = (await conn.execute(select(c.c.id).where(c.c.id == 1))).scalar()
            if exists is not None:
                return False
        try:
            async with self.meta._tx() as conn:
                await conn.execute(
                    insert(c).values(
                        id=1,
                        node_id=node_id,
                        incarnation=incarnation,
                        epoch=1,
                        lease_expiry_ms=now + lease_ms,
                    )
                )
        except IntegrityError:
            return False
        return True

    async def controller(self) -> ControllerRow | None:
        c = s.controller
        async with self.meta._statements(write=False) as conn:
            r = (await conn.execute(select(c).where(c.c.id == 1))).one_or_none()
        if r is None:
            return None
        return ControllerRow(r.node_id, r.incarnation, r.epoch, r.lease_expiry_ms)

    # owners ----------------------------------------------------------------

    async def owners(self, not_owned_by: Collection[int] | None = None) -> list[OwnerRow]:
        """Every partition with its owner, by topic name and partition; with
        `not_owned_by`, only those owned by none of these brokers (or by
        none): the controller's orphans, without a Python object for each
        of a fleet's 10,000 owned partitions every heartbeat."""
        p, t = s.partitions, s.topics
        q = select(p, t.c.name).join(t, t.c.id == p.c.topic_id)
        if not_owned_by is not None:
            q = q.where(or_(p.c.owner_node.is_(None), p.c.owner_node.not_in(list(not_owned_by))))
        async with self.meta.engine.connect() as conn:
            rows = await conn.execute(q.order_by(t.c.name, p.c.partition))
            return [
                OwnerRow(r.topic_id, r.name, r.partition, r.stream_id, r.owner_node, r.leader_epoch)
                for r in rows
            ]

    async def owner_counts(self) -> dict[int | None, int]:
        """How many partitions each broker owns (None: owned by none),
        counted by the database."""
        p = s.partitions
        async with self.meta.engine.connect() as conn:
            rows = await conn.execute(select(p.c.owner_node, func.count()).group_by(p.c.owner_node))
            return {r[0]: int(r[1]) for r in rows}

    async def apply_moves(
        self, moves: list[Move], requested: AbstractSet[tuple[int, int]] = frozenset()
    ) -> list[Move]:
        """Move owners, each only if its owner is still the one expected;
        returns the moves made. One transaction, which also marks the
        reassignments of `requested` (topic id, partition) moved: the
        target may open the partition, and finish its move, as soon as
        the owner changes."""
        if not moves:
            return []
        r = s.reassignments
        async with self.meta._tx() as conn:
            done = await _move_many(conn, moves)
            marked = [
                (m.topic_id, m.partition) for m in done if (m.topic_id, m.partition) in requested
            ]
            for chunk in _chunks(marked):
                await conn.execute(
                    update(r)
                    .where(tuple_(r.c.topic_id, r.c.partition).in_(padded(chunk)))
                    .values(moved_ms=now_ms())
                )
        return done

    # reassignments -----------------------------------------------------------

    async def request_move(
        self, topic: str, partition: int, target: int, reason: str = "admin"
    ) -> None:
        """Ask the controller to move a partition (replaces a pending request)."""
        t, r, p = s.topics, s.reassignments, s.partitions
        async with self.meta._tx() as conn:
            row = (
                await conn.execute(
                    select(p.c.topic_id, p.c.owner_node)
                    .join(t, t.c.id == p.c.topic_id)
                    .where(t.c.name == topic, p.c.partition == partition)
                )
            ).one_or_none()
            if row is None:
                raise KeyError(f"{topic}-{partition}")
            await conn.execute(
                delete(r).where(r.c.topic_id == row.topic_id, r.c.partition == partition)
            )
            await conn.execute(
                insert(r).values(
                    topic_id=row.topic_id,
                    partition=partition,
                    source_node=row.owner_node,
                    target_node=target,
                    requested_ms=now_ms(),
                    moved_ms=None,
                    reason=reason,
                )
            )

    async def cancel_move(self, topic: str, partition: int) -> bool:
        t, r = s.topics, s.reassignments
        async with self.meta._tx() as conn:
            tid = (await conn.execute(select(t.c.id).where(t.c.name == topic))).scalar()
            if tid is None:
                return False
            res = await conn.execute(
                delete(r).where(
                    r.c.topic_id == tid, r.c.partition == partition, r.c.moved_ms.is_(None)
                )
            )
        return res.rowcount == 1

    async def reassignments(self) -> list[ReassignmentRow]:
        t, r = s.topics, s.reassignments
        async with self.meta.engine.connect() as conn:
            rows = await conn.execute(
                select(r, t.c.name)
                .join(t, t.c.id == r.c.topic_id)
                .order_by(t.c.name, r.c.partition)
            )
            return [
                ReassignmentRow(
                    x.topic_id,
                    x.name,
                    x.partition,
                    x.source_node,
                    x.target_node,
                    x.requested_ms,
                    x.moved_ms,
                    x.reason,
                )
                for x in rows
            ]

    async def finish_moves(self, node_id: int, done: list[tuple[int, int]]) -> None:
        """The target owns and has opened these partitions: their
        reassignments to it are over. Decided by the owner, not by
        `moved_ms`, so that no order of the controller's and the target's
        transactions leaves a carried-out move pending.

        The pending reassignments to `node_id` are read first and only those
        among `done` deleted: a broker that opens 10,000 partitions (its
        start, a lost lease) made a statement per partition here (with the
        rest of that reconcile, 4 s on PostgreSQL), and there are seldom any.
        One the controller asks for after the read, of a partition already
        here, it finishes itself."""
        r, p = s.reassignments, s.partitions
        if not done:
            return
        async with self.meta._tx() as conn:
            pending = await conn.execute(
                select(r.c.topic_id, r.c.partition).where(r.c.target_node == node_id)
            )
            wanted = set(done)
            for topic_id, partition in [
                (x.topic_id, x.partition) for x in pending if (x.topic_id, x.partition) in wanted
            ]:
                owned = (
                    select(p.c.partition)
                    .where(
                        p.c.topic_id == topic_id,
                        p.c.partition == partition,
                        p.c.owner_node == node_id,
                    )
                    .exists()
                )
                await conn.execute(
                    delete(r).where(
                        r.c.topic_id == topic_id,
                        r.c.partition == partition,
                        r.c.target_node == node_id,
                        owned,
                    )
                )


async def _move_many(conn: AsyncConnection, moves: list[Move]) -> list[Move]:
    """Make the moves whose partition is still owned as each expects, with
    a few statements per (old owner, new owner) pair, not two per
    partition: placing a CreateTopics' 2,500 new partitions, or handing on
    a dead broker's 10,000, was that many round trips on PostgreSQL.
    Returns the moves made, in their order."""
    p, st = s.partitions, s.streams
    groups: dict[tuple[int | None, int], list[Move]] = {}
    for m in moves:
        groups.setdefault((m.old_owner, m.new_owner), []).append(m)
    moved: dict[tuple[int, int], int] = {}  # (topic id, partition) -> stream id
    for (old, new), group in groups.items():
        for chunk in _chunks([(m.topic_id, m.partition) for m in group]):
            res = await conn.execute(
                update(p)
                .where(
                    tuple_(p.c.topic_id, p.c.partition).in_(padded(chunk)),
                    p.c.owner_node.is_not_distinct_from(old),
                )
                .values(owner_node=new, leader_epoch=p.c.leader_epoch + 1)
                .returning(p.c.topic_id, p.c.partition, p.c.stream_id)
            )
            for row in res:
                moved[(int(row.topic_id), int(row.partition))] = int(row.stream_id)
    # Fence the old owners now: their pending commits fail, whatever they know.
    for ids in _chunks(list(moved.values())):
        await conn.execute(update(st).where(in_(st.c.id, ids)).values(epoch=st.c.epoch + 1))
    return [m for m in moves if (m.topic_id, m.partition) in moved]


_CHUNK = 1_000  # keys per statement: padded to 1,024 pairs, 2,048 parameters


def _chunks(items: list[T]) -> list[list[T]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]


class BrokerLoad(Mapping[str, list[int]]):
    """A broker's per-partition load as stored (JSON), parsed on first use.
    Every heartbeat reads every broker's row; only the controller's
    balancing, once a balance interval, looks inside, and with 10,000
    partitions a parse held the event loop for milliseconds."""

    __slots__ = ("_parsed", "_raw")

    def __init__(self, raw: str | None) -> None:
        self._raw = raw
        self._parsed: dict[str, list[int]] | None = None

    def _map(self) -> dict[str, list[int]]:
        if self._parsed is None:
            try:
                value = json.loads(self._raw or "{}")
            except ValueError:
                value = {}
            self._parsed = value if isinstance(value, dict) else {}
            self._raw = None
        return self._parsed

    def __getitem__(self, key: str) -> list[int]:
        return self._map()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map())

    def __len__(self) -> int:
        return len(self._map())

    def __repr__(self) -> str:
        return f"BrokerLoad({len(self)} partitions)"
