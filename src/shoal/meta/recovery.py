"""The metadata side of recovery from the objects: the rows `shoal meta
check` and the start-up reconciliation compare with the object store, the
rows adopting an object records, and what `shoal meta rebuild` writes into
an empty store. storage/inventory.py and storage/rebuild.py work out from
the objects what to record; the SQL is here."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from shoal.meta import schema as s
from shoal.meta.store import MetaError, MetaStore, NewObject, ProducerRow, now_ms

log = logging.getLogger("shoal.meta.recovery")


@dataclass(frozen=True, slots=True)
class NewRange:
    """A block of object `key` holding stream offsets [start_offset, end_offset)."""

    key: str
    start_offset: int
    end_offset: int
    position: int
    size: int
    max_timestamp: int


@dataclass(frozen=True, slots=True)
class NewPartition:
    stream_id: int
    start: int
    end: int
    ranges: list[NewRange]


@dataclass(frozen=True, slots=True)
class NewTopic:
    name: str
    topic_id: str  # hex uuid
    partitions: list[NewPartition]  # partition i at index i


async def inventory_rows(meta: MetaStore) -> tuple[list[Any], list[Any], list[Any]]:
    """Every stream row; every object's (id, key, size, delete_after_ms);
    every range with its object's key and created_ms, by stream and offset."""
    st, o, r = s.streams, s.objects, s.stream_ranges
    async with meta.engine.connect() as conn:
        streams = list((await conn.execute(select(st))).all())
        objects = list(
            (await conn.execute(select(o.c.id, o.c.key, o.c.size, o.c.delete_after_ms))).all()
        )
        ranges = list(
            (
                await conn.execute(
                    select(r, o.c.key, o.c.created_ms)
                    .join(o, o.c.id == r.c.object_id)
                    .order_by(r.c.stream_id, r.c.start_offset)
                )
            ).all()
        )
    return streams, objects, ranges


async def _object_ids(
    conn: AsyncConnection, objects: Iterable[NewObject], ids: dict[str, int]
) -> None:
    """Fill `ids` (key -> row id) for `objects`, inserting the rows not there yet.

    A row already there may be scheduled for deletion (no range referred to
    it): its ranges are about to refer to it again, and a cleaner deletes a
    due object from the store whatever refers to it, so the schedule is
    cleared in the same transaction. Safe because rebuild and adoption run
    while no broker (so no cleaner) runs; the object was just listed.
    """
    o = s.objects
    for obj in objects:
        if obj.key in ids:
            continue
        found = (
            await conn.execute(select(o.c.id, o.c.delete_after_ms).where(o.c.key == obj.key))
        ).first()
        row = None if found is None else found.id
        if found is not None and found.delete_after_ms is not None:
            await conn.execute(update(o).where(o.c.id == row).values(delete_after_ms=None))
            log.warning(
                "object %s: was scheduled for deletion, taken back (its ranges are recorded)",
                obj.key,
            )
        if row is None:
            res = await conn.execute(
                insert(o).values(
                    key=obj.key,
                    size=obj.size,
                    created_ms=obj.created_ms,
                    node_id=obj.node_id,
                    kind=obj.kind,
                )
            )
            row = res.inserted_primary_key[0]  # type: ignore[index]
        ids[obj.key] = int(row)


async def _insert_ranges(
    conn: AsyncConnection, stream_id: int, ranges: list[NewRange], ids: dict[str, int]
) -> None:
    if not ranges:
        return
    await conn.execute(
        insert(s.stream_ranges),
        [
            {
                "stream_id": stream_id,
                "start_offset": x.start_offset,
                "end_offset": x.end_offset,
                "object_id": ids[x.key],
                "position": x.position,
                "size": x.size,
                "max_timestamp": x.max_timestamp,
            }
            for x in ranges
        ],
    )


async def _producers(meta: MetaStore, conn: AsyncConnection, rows: list[ProducerRow]) -> None:
    """Producers' sequence state, and the producer-id counter moved past
    every id in it: a restored (older) or new counter must not hand out an
    id those batches carry."""
    if not rows:
        return
    await meta.upsert_producers(conn, rows)
    at_least = max(p.producer_id for p in rows) + 1
    have = await meta.read_counter("producer_id", conn)
    if have < at_least:
        await meta.bump_counter(conn, "producer_id", at_least - have)


async def record_adopted(
    meta: MetaStore,
    stream_id: int,
    start: int,
    end: int,
    objects: list[NewObject],
    ranges: list[NewRange],
    producers: list[ProducerRow],
) -> None:
    """In one transaction: rows for `objects` (those not recorded yet),
    `ranges` of the stream, its end moved from `start` to `end`, the
    producers' state. Raises MetaError when the end is no longer `start`."""
    st = s.streams
    async with meta.transaction() as conn:
        ids: dict[str, int] = {}
        await _object_ids(conn, objects, ids)
        moved = await conn.execute(
            update(st).where(st.c.id == stream_id, st.c.end_offset == start).values(end_offset=end)
        )
        if moved.rowcount != 1:
            raise MetaError(f"stream {stream_id}: end moved while adopting objects")
        await _insert_ranges(conn, stream_id, ranges, ids)
        await _producers(meta, conn, producers)


async def topic_count(meta: MetaStore) -> int:
    async with meta.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(s.topics))).scalar_one())


async def write_rebuilt(
    meta: MetaStore,
    topics: list[NewTopic],
    deleted_streams: list[int],
    objects: dict[str, NewObject],
    producers: list[ProducerRow],
) -> None:
    """Write a rebuilt store in one transaction: `deleted_streams` as
    deleted streams, each topic with its partitions' streams and ranges,
    the objects the ranges name, the producers' state. Stream ids are kept,
    and PostgreSQL's sequence moved past them."""
    now = now_ms()
    async with meta.transaction() as conn:
        if not meta.is_sqlite:
            # one transaction of every row: not bounded by the brokers'
            # transaction_timeout (PostgreSQL 17+, meta/store.py)
            await conn.execute(
                text(
                    "SELECT set_config('transaction_timeout', '0', true) "
                    "WHERE current_setting('server_version_num')::int >= 170000"
                )
            )
        for sid in deleted_streams:
            await conn.execute(
                insert(s.streams).values(
                    id=sid, epoch=0, start_offset=0, end_offset=0, deleted=True
                )
            )
        ids: dict[str, int] = {}
        for topic in topics:
            res = await conn.execute(
                insert(s.topics).values(
                    name=topic.name, topic_uuid=str(uuid.UUID(topic.topic_id)), created_ms=now
                )
            )
            topic_id = int(res.inserted_primary_key[0])  # type: ignore[index]
            for index, part in enumerate(topic.partitions):
                await conn.execute(
                    insert(s.streams).values(
                        id=part.stream_id,
                        epoch=0,
                        start_offset=part.start,
                        end_offset=part.end,
                        deleted=False,
                    )
                )
                await conn.execute(
                    insert(s.partitions).values(
                        topic_id=topic_id, partition=index, stream_id=part.stream_id, leader_epoch=0
                    )
                )
                await _object_ids(conn, (objects[x.key] for x in part.ranges), ids)
                await _insert_ranges(conn, part.stream_id, part.ranges, ids)
        if not meta.is_sqlite:
            # streams got their old ids: move PostgreSQL's sequence past them
            await conn.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('streams', 'id'), "
                    "(SELECT max(id) FROM streams))"
                )
            )
        await _producers(meta, conn, producers)
