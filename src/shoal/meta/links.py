"""Repository for migration links: links, their mirror topics and each mirror
partition's progress. Every change an operator makes bumps one version
counter in the same transaction, so brokers learn of it by polling one row."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from sqlalchemy import Table, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shoal.meta import schema as s
from shoal.meta.store import MetaError, MetaStore, now_ms

T = TypeVar("T")

VERSION_COUNTER = "links.version"
#: One past the highest producer id found in mirrored batches: brokers hand
#: out producer ids above it (shoal.producer.ids).
PRODUCER_ID_FLOOR = "links.producer_id_floor"

MIRRORING, PROMOTING, PROMOTED = "mirroring", "promoting", "promoted"
#: States of a reverse link's topic (rollback after promotion).
COPYING, STOPPING, ROLLED_BACK = "copying", "stopping", "rolled_back"


class LinkExists(MetaError):
    pass


class LinkNotFound(MetaError):
    pass


@dataclass(frozen=True, slots=True)
class LinkRow:
    name: str
    source: str
    settings: dict[str, str]
    topics: str
    groups: str = ""
    prefix: str = ""
    paused: bool = False
    created_ms: int = 0
    write_through: bool = False


@dataclass(frozen=True, slots=True)
class MirrorRow:
    mirror: str
    link: str
    source_topic: str
    state: str
    state_ms: int


@dataclass(slots=True)
class Progress:
    mirror: str
    partition: int
    source_start: int = 0
    source_end: int = 0
    mirror_end: int = 0
    bytes: int = 0
    promoted: bool = False
    error: str = ""
    updated_ms: int = field(default_factory=now_ms)
    caught_up_ms: int = 0

    @property
    def lag(self) -> int:
        return max(0, self.source_end - self.mirror_end)

    def lag_seconds(self, now: int) -> float | None:
        """Seconds since the mirror last held the source's end (None: never)."""
        if self.lag == 0:
            return 0.0
        return (now - self.caught_up_ms) / 1000 if self.caught_up_ms else None


@dataclass(frozen=True, slots=True)
class ReverseRow:
    mirror: str
    link: str
    state: str
    state_ms: int


@dataclass(slots=True)
class ReverseProgress:
    """A reversed partition's copy back to the source, as its owner saw it."""

    mirror: str
    partition: int
    shoal_end: int = 0
    copied_to: int = 0
    source_end: int = 0
    bytes: int = 0
    recovered: int = 0
    error: str = ""
    stopped: bool = False
    updated_ms: int = field(default_factory=now_ms)

    @property
    def lag(self) -> int:
        return max(0, self.shoal_end - self.copied_to)


#: One offset-map range: (shoal_start, source_start, count).
MapRange = tuple[int, int, int]


class LinkStore:
    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta

    async def version(self) -> int:
        return await self.meta.read_counter(VERSION_COUNTER)

    async def load(self) -> tuple[int, list[LinkRow], list[MirrorRow]]:
        """Every link and mirror topic, and the version they are at, read together."""
        async with self.meta.engine.connect() as conn:
            async with conn.begin():
                version = await self.meta.read_counter(VERSION_COUNTER, conn)
                links = (await conn.execute(select(s.links).order_by(s.links.c.name))).all()
                mirrors = (
                    await conn.execute(select(s.link_topics).order_by(s.link_topics.c.mirror))
                ).all()
        return (
            version,
            [
                LinkRow(
                    r.name,
                    r.source,
                    json.loads(r.settings),
                    r.topics,
                    r.groups,
                    r.prefix,
                    bool(r.paused),
                    r.created_ms,
                    bool(r.write_through),
                )
                for r in links
            ],
            [MirrorRow(r.mirror, r.link, r.source_topic, r.state, r.state_ms) for r in mirrors],
        )

    async def create(self, link: LinkRow) -> None:
        t = s.links
        async with self.meta._tx() as conn:
            if (await conn.execute(select(t.c.name).where(t.c.name == link.name))).first():
                raise LinkExists(f"link {link.name!r} already exists")
            await conn.execute(
                t.insert().values(
                    name=link.name,
                    source=link.source,
                    settings=json.dumps(link.settings),
                    topics=link.topics,
                    groups=link.groups,
                    prefix=link.prefix,
                    paused=False,
                    created_ms=now_ms(),
                    write_through=link.write_through,
                )
            )
            await self.meta.bump_counter(conn, VERSION_COUNTER, 1)

    async def delete(self, name: str) -> list[str]:
        """Remove the link; its mirror topics stay, as normal (writable)
        topics. Returns their names."""
        async with self.meta._tx() as conn:
            await self._require(conn, name)
            lt = s.link_topics
            mirrors = [
                str(r.mirror)
                for r in await conn.execute(select(lt.c.mirror).where(lt.c.link == name))
            ]
            lp = s.link_partitions
            if mirrors:
                await conn.execute(delete(lp).where(lp.c.mirror.in_(mirrors)))
                for table in (s.link_reverse, s.link_offset_map, s.link_reverse_partitions):
                    await conn.execute(delete(table).where(table.c.mirror.in_(mirrors)))
            await conn.execute(delete(lt).where(lt.c.link == name))
            await conn.execute(delete(s.links).where(s.links.c.name == name))
            await self.meta.bump_counter(conn, VERSION_COUNTER, 1)
        return mirrors

    async def set_paused(self, name: str, paused: bool) -> None:
        async with self.meta._tx() as conn:
            await self._require(conn, name)
            await conn.execute(update(s.links).where(s.links.c.name == name).values(paused=paused))
            await self.meta.bump_counter(conn, VERSION_COUNTER, 1)

    async def _require(self, conn: AsyncConnection, name: str) -> None:
        t = s.links
        found = (await conn.execute(select(t.c.name).where(t.c.name == name))).first()
        if not found:
            raise LinkNotFound(f"no link named {name!r}")

    async def add_mirror(self, mirror: str, link: str, source_topic: str) -> None:
        """Record a mirror topic (the broker creating it); once only."""
        t = s.link_topics
        ins = sqlite_insert if self.meta.is_sqlite else pg_insert
        async with self.meta._tx() as conn:
            await conn.execute(
                ins(t)
                .values(
                    mirror=mirror,
                    link=link,
                    source_topic=source_topic,
                    state=MIRRORING,
                    state_ms=now_ms(),
                )
                .on_conflict_do_nothing(index_elements=[t.c.mirror])
            )
            await self.meta.bump_counter(conn, VERSION_COUNTER, 1)

    async def set_state(
        self, mirrors: Sequence[str], state: str, only_from: str | None = None
    ) -> int:
        """Move mirror topics to `state` (from `only_from`, if given);
        returns how many moved."""
        if not mirrors:
            return 0
        async with self.meta._tx() as conn:
            moved = await self._set_state(conn, s.link_topics, mirrors, state, only_from)
            if state != PROMOTING:
                await conn.execute(
                    update(s.link_partitions)
                    .where(s.link_partitions.c.mirror.in_(list(mirrors)))
                    .values(promoted=False)
                )
        return moved

    async def _set_state(
        self,
        conn: AsyncConnection,
        t: Table,
        mirrors: Sequence[str],
        state: str,
        only_from: str | None,
    ) -> int:
        q = update(t).where(t.c.mirror.in_(list(mirrors)))
        if only_from is not None:
            q = q.where(t.c.state == only_from)
        res = await conn.execute(q.values(state=state, state_ms=now_ms()))
        await self.meta.bump_counter(conn, VERSION_COUNTER, 1)
        return int(res.rowcount or 0)

    async def _upsert_partitions(
        self, conn: AsyncConnection, t: Table, rows: Sequence[Progress | ReverseProgress]
    ) -> None:
        """Upsert per-partition rows whose fields are the table's columns."""
        ins = sqlite_insert if self.meta.is_sqlite else pg_insert
        for row in rows:
            values = {
                f.name: getattr(row, f.name)
                for f in fields(row)
                if f.name not in ("mirror", "partition")
            }
            await conn.execute(
                ins(t)
                .values(mirror=row.mirror, partition=row.partition, **values)
                .on_conflict_do_update(index_elements=[t.c.mirror, t.c.partition], set_=values)
            )

    async def _partitions(self, t: Table, row: Callable[..., T]) -> list[T]:
        """Every per-partition row of `t`, as `row`s (fields named as columns)."""
        async with self.meta.engine.connect() as conn:
            rows = (await conn.execute(select(t).order_by(t.c.mirror, t.c.partition))).all()
        return [row(**r._mapping) for r in rows]

    async def save_progress(self, rows: Sequence[Progress]) -> None:
        """Upsert the owner's view of its mirror partitions (one transaction)."""
        if not rows:
            return
        async with self.meta._tx() as conn:
            await self._upsert_partitions(conn, s.link_partitions, rows)

    async def progress(self) -> list[Progress]:
        return await self._partitions(s.link_partitions, Progress)

    async def committed_on(self, topics: Sequence[str]) -> list[tuple[str, str, int, int]]:
        """(group, topic, partition, offset) of every group's committed
        offsets on `topics` (the mirror topics), by the topic index: a
        status call reads these, not the offsets of every group here."""
        o = s.group_offsets
        rows = await self._offsets_on(
            topics, o.c.group_id, o.c.topic, o.c.partition, o.c.committed_offset
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def commits_on(self, topics: Sequence[str]) -> list[tuple[str, str, int, int, str]]:
        """committed_on with each offset's metadata string: what a rollback
        commits on the source again."""
        o = s.group_offsets
        rows = await self._offsets_on(
            topics, o.c.group_id, o.c.topic, o.c.partition, o.c.committed_offset, o.c.metadata
        )
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def _offsets_on(self, topics: Sequence[str], *columns: Any) -> list[Any]:
        if not topics:
            return []
        q = select(*columns).where(s.group_offsets.c.topic.in_(list(topics)))
        async with self.meta.engine.connect() as conn:
            return list((await conn.execute(q)).all())

    async def reserve_producer_ids(self, pid: int) -> None:
        """Producer id `pid` came with mirrored batches: raise the store's
        producer id counter (and the floor brokers watch) past it."""
        async with self.meta._tx() as conn:
            for name in ("producer_id", PRODUCER_ID_FLOOR):
                current = await self.meta.read_counter(name, conn)
                if current <= pid:
                    await self.meta.bump_counter(conn, name, pid + 1 - current)

    async def producer_id_floor(self) -> int:
        return await self.meta.read_counter(PRODUCER_ID_FLOOR)

    # reverse links -------------------------------------------------------

    async def reverse(self) -> list[ReverseRow]:
        t = s.link_reverse
        async with self.meta.engine.connect() as conn:
            rows = (await conn.execute(select(t).order_by(t.c.mirror))).all()
        return [ReverseRow(r.mirror, r.link, r.state, r.state_ms) for r in rows]

    async def add_reverse(self, mirrors: Sequence[str], link: str) -> int:
        """Start copying promoted topics back to the link's source (once per
        topic); returns how many were added."""
        t = s.link_reverse
        ins = sqlite_insert if self.meta.is_sqlite else pg_insert
        added = 0
        async with self.meta._tx() as conn:
            for mirror in mirrors:
                res = await conn.execute(
                    ins(t)
                    .values(mirror=mirror, link=link, state=COPYING, state_ms=now_ms())
                    .on_conflict_do_nothing(index_elements=[t.c.mirror])
                )
                added += int(res.rowcount or 0)
            await self.meta.bump_counter(conn, VERSION_COUNTER, 1)
        return added

    async def set_reverse_state(
        self, mirrors: Sequence[str], state: str, only_from: str | None = None
    ) -> int:
        async with self.meta._tx() as conn:
            return await self._set_state(conn, s.link_reverse, mirrors, state, only_from)

    async def offset_map(
        self, mirror: str, partition: int | None = None
    ) -> dict[int, list[MapRange]]:
        """The reverse link's offset map of a topic: partition -> ranges in order."""
        t = s.link_offset_map
        q = select(t.c.partition, t.c.shoal_start, t.c.source_start, t.c.count).where(
            t.c.mirror == mirror
        )
        if partition is not None:
            q = q.where(t.c.partition == partition)
        async with self.meta.engine.connect() as conn:
            rows = (await conn.execute(q.order_by(t.c.partition, t.c.shoal_start))).all()
        out: dict[int, list[MapRange]] = {}
        for partition, shoal_start, source_start, count in rows:
            out.setdefault(partition, []).append((shoal_start, source_start, count))
        return out

    async def save_reverse(
        self, rows: Sequence[ReverseProgress], ranges: Sequence[tuple[str, int, MapRange]]
    ) -> None:
        """Map ranges (mirror, partition, range) and progress, in one
        transaction: progress never claims more than the map holds."""
        if not rows and not ranges:
            return
        ins = sqlite_insert if self.meta.is_sqlite else pg_insert
        m = s.link_offset_map
        async with self.meta._tx() as conn:
            for mirror, partition, (shoal_start, source_start, count) in ranges:
                mapped = {"source_start": source_start, "count": count}
                await conn.execute(
                    ins(m)
                    .values(mirror=mirror, partition=partition, shoal_start=shoal_start, **mapped)
                    .on_conflict_do_update(
                        index_elements=[m.c.mirror, m.c.partition, m.c.shoal_start], set_=mapped
                    )
                )
            await self._upsert_partitions(conn, s.link_reverse_partitions, rows)

    async def reverse_progress(self) -> list[ReverseProgress]:
        return await self._partitions(s.link_reverse_partitions, ReverseProgress)
