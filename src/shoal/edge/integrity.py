"""Buffer integrity: find and repair what a crash or a power loss leaves in the
gateway's local log, before the broker opens it.

The local log is the storage engine's format (storage/format.py) on a file
object store, with SQLite metadata. What can go wrong:

- an object file with no metadata row: uploaded, never committed (a crash
  between the write and the commit). Never acknowledged: moved to
  `quarantine/`, reported.
- a committed object that is shorter than recorded, unreadable, or whose
  batches fail their CRC: a torn write (the file system lost the tail on
  power loss). Each affected partition is cut back to its last whole batch:
  the good prefix is rewritten into a new object, the stream's end offset
  moves back, later ranges of that stream go, the damaged file is moved to
  `quarantine/`. The records lost are counted and reported.
- a metadata database that fails SQLite's own check: the log directory is
  moved aside whole and the gateway starts with an empty one (reported);
  refusing to start would only turn one loss into an outage.

Nothing here raises on bad data: every problem becomes a finding, so a
damaged buffer never makes the gateway crash-loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import crc32c
from sqlalchemy import delete, insert, select, update

from shoal.meta import schema as s
from shoal.meta.store import MetaStore
from shoal.protocol.records import CRC_START, batch_spans, read_header
from shoal.storage.errors import CorruptObject
from shoal.storage.format import BlockBuilder, BlockEntry, decode_object, encode_object
from shoal.storage.localdirs import locked
from shoal.storage.spares import is_spare

log = logging.getLogger("shoal.edge.integrity")


@contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """One gateway (or one `shoal edge check`) per data directory. Raises
    DirectoryLocked naming the holder's pid, or NotWritable when the directory
    refuses (both StorageErrors)."""
    with locked(data_dir, "data directory"):
        yield


@dataclass(slots=True)
class Finding:
    kind: str  # orphan | torn | missing | metadata-corrupt
    object: str
    detail: str
    action: str
    topic: str | None = None
    partition: int | None = None
    records_lost: int = 0
    bytes_lost: int = 0


@dataclass(slots=True)
class Report:
    objects: int = 0
    bytes: int = 0
    verified_objects: int = 0
    verified_batches: int = 0
    findings: list[Finding] = field(default_factory=list)
    repaired: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def records_lost(self) -> int:
        return sum(f.records_lost for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["records_lost"] = self.records_lost
        return d


@dataclass(slots=True)
class _Range:
    stream_id: int
    start: int
    end: int
    object_id: int
    position: int
    size: int
    max_ts: int


@dataclass(slots=True)
class _Obj:
    id: int
    key: str
    size: int
    node_id: int
    kind: str
    scheduled: bool


def _salvage(data: bytes, r: _Range) -> tuple[int, bytes, int]:
    """(end offset, bytes, batches) of the longest good prefix of a range:
    whole batches, CRC intact, offsets contiguous from the range start."""
    block = memoryview(data)[r.position : r.position + r.size]
    expected = r.start
    good = 0
    batches = 0
    for start, end in batch_spans(block):
        if end - start < 61:
            break
        h = read_header(block, start)
        if h.base_offset != expected or h.magic != 2:
            break
        if crc32c.crc32c(block[start + CRC_START : end]) != h.crc:
            break
        expected = h.last_offset + 1
        good = end
        batches += 1
        if expected >= r.end:
            break
    return min(expected, r.end), bytes(block[:good]), batches


def _quick_check(db_path: Path) -> str:
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            row = con.execute("PRAGMA quick_check").fetchone()
            return str(row[0]) if row else "no answer"
        finally:
            con.close()
    except sqlite3.Error as exc:
        return str(exc)


async def check_log(
    log_dir: Path,
    quarantine_dir: Path,
    *,
    repair: bool,
    deep: bool,
    recent: int = 16,
) -> Report:
    """Check the local log; with `repair`, fix what is found. `deep` verifies
    every batch of every object (offline check); otherwise sizes of all
    objects and every batch of the `recent` newest ones (at start)."""
    t0 = time.monotonic()
    report = Report()
    db_path = log_dir / "meta.db"
    if not db_path.exists():
        report.seconds = time.monotonic() - t0
        return report
    verdict = await asyncio.to_thread(_quick_check, db_path)
    if verdict != "ok":
        f = Finding(
            "metadata-corrupt",
            str(db_path),
            f"SQLite check: {verdict}",
            "moved the whole local log aside; starting empty" if repair else "none",
        )
        report.findings.append(f)
        if repair:
            aside = log_dir.with_name(f"{log_dir.name}.corrupt-{int(time.time())}")
            await asyncio.to_thread(log_dir.rename, aside)
            report.repaired = True
        report.seconds = time.monotonic() - t0
        return report
    meta = await MetaStore.open(f"sqlite:///{db_path}")
    try:
        await _check(meta, log_dir / "objects", quarantine_dir, report, repair, deep, recent)
    finally:
        await meta.close()
    report.seconds = time.monotonic() - t0
    return report


async def _check(
    meta: MetaStore,
    objects_dir: Path,
    quarantine_dir: Path,
    report: Report,
    repair: bool,
    deep: bool,
    recent: int,
) -> None:
    o, r, st = s.objects, s.stream_ranges, s.streams
    has_sched = "delete_after_ms" in o.c
    has_kind = "kind" in o.c
    cols = [o.c.id, o.c.key, o.c.size, o.c.node_id]
    if has_kind:
        cols.append(o.c.kind)
    if has_sched:
        cols.append(o.c.delete_after_ms)
    objs: dict[int, _Obj] = {}
    for row in await meta.execute_read(select(*cols).order_by(o.c.id)):
        m = row._mapping
        objs[int(m["id"])] = _Obj(
            int(m["id"]),
            str(m["key"]),
            int(m["size"]),
            int(m["node_id"]),
            str(m["kind"]) if has_kind else "wal",
            has_sched and m["delete_after_ms"] is not None,
        )
    ranges = [
        _Range(*map(int, row))
        for row in await meta.execute_read(
            select(
                r.c.stream_id,
                r.c.start_offset,
                r.c.end_offset,
                r.c.object_id,
                r.c.position,
                r.c.size,
                r.c.max_timestamp,
            ).order_by(r.c.stream_id, r.c.start_offset)
        )
    ]
    names: dict[int, tuple[str, int]] = {
        int(sid): (str(name), int(part))
        for sid, name, part in await meta.execute_read(
            select(s.partitions.c.stream_id, s.topics.c.name, s.partitions.c.partition).join(
                s.topics, s.topics.c.id == s.partitions.c.topic_id
            )
        )
    }
    stream_ends = {
        int(sid): int(end) for sid, end in await meta.execute_read(select(st.c.id, st.c.end_offset))
    }

    def scan() -> dict[str, int]:
        files: dict[str, int] = {}
        if not objects_dir.exists():
            return files
        for root, _dirs, names_ in os.walk(objects_dir):
            for n in names_:
                p = Path(root) / n
                rel = p.relative_to(objects_dir).as_posix()
                if rel.startswith("__shoal_check__") or is_spare(rel):
                    continue  # the store's start-up probe; empty files kept to reuse
                try:
                    files[rel] = p.stat().st_size
                except FileNotFoundError:
                    continue
        return files

    files = await asyncio.to_thread(scan)
    known = {ob.key for ob in objs.values()}
    report.objects = len(objs)
    report.bytes = sum(files.values())

    def quarantine(key: str) -> None:
        src = objects_dir / key
        dst = quarantine_dir / key
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.move(str(src), str(dst))
        except FileNotFoundError:
            pass

    # 1. uploaded, never committed
    for key, size in sorted(files.items()):
        if key in known:
            continue
        report.findings.append(
            Finding(
                "orphan",
                key,
                f"{size} bytes with no metadata row: written but never committed "
                "(never acknowledged)",
                "moved to quarantine" if repair else "none",
                bytes_lost=0,
            )
        )
        if repair:
            await asyncio.to_thread(quarantine, key)

    # 2. committed objects: present, whole, readable
    by_object: dict[int, list[_Range]] = {}
    for rg in ranges:
        by_object.setdefault(rg.object_id, []).append(rg)
    newest = sorted(objs)[-recent:] if recent > 0 else []
    bad: dict[int, tuple[str, bytes]] = {}  # object id -> (reason, data that is there)
    for oid, ob in objs.items():
        if ob.scheduled and oid not in by_object:
            continue  # waiting for deletion: nothing refers to it
        fsize = files.get(ob.key)
        if fsize is None:
            bad[oid] = ("file is missing", b"")
            continue
        if fsize != ob.size:
            data = await asyncio.to_thread((objects_dir / ob.key).read_bytes)
            bad[oid] = (f"{fsize} bytes on disk, {ob.size} committed (torn write)", data)
            continue
        if not (deep or oid in newest):
            continue
        data = await asyncio.to_thread((objects_dir / ob.key).read_bytes)
        report.verified_objects += 1
        try:
            decode_object(data)
        except CorruptObject as exc:
            bad[oid] = (f"unreadable footer or index: {exc}", data)
            continue
        for rg in by_object.get(oid, []):
            end, _good, n = _salvage(data, rg)
            report.verified_batches += n
            if end < rg.end:
                bad[oid] = (f"damaged batch in stream {rg.stream_id} at offset {end}", data)
                break

    if not bad:
        return

    # 3. cut each affected stream back to its last whole batch
    cut: dict[int, int] = {}  # stream -> new end
    salvaged: dict[tuple[int, int], tuple[int, bytes, int]] = {}
    for oid, (_reason, data) in bad.items():
        for rg in by_object.get(oid, []):
            end, good, _n = _salvage(data, rg) if data else (rg.start, b"", 0)
            if end < rg.end:
                cut[rg.stream_id] = min(cut.get(rg.stream_id, end), end)
            salvaged[(rg.stream_id, rg.start)] = (end, good, rg.max_ts)
    lost: dict[int, tuple[int, int]] = {}
    keep_new: list[BlockBuilder] = []
    drop_ranges: list[_Range] = []
    for rg in ranges:
        new_end = cut.get(rg.stream_id)
        in_bad = rg.object_id in bad
        if new_end is None and not in_bad:
            continue
        limit = new_end if new_end is not None else rg.end
        if rg.start >= limit:
            drop_ranges.append(rg)
            rec, byt = lost.get(rg.stream_id, (0, 0))
            lost[rg.stream_id] = (rec + rg.end - rg.start, byt + rg.size)
        elif in_bad:
            end, good, max_ts = salvaged[(rg.stream_id, rg.start)]
            end = min(end, limit)
            drop_ranges.append(rg)
            if good:
                keep_new.append(
                    BlockBuilder(rg.stream_id, rg.start, end, max_ts, [good], len(good))
                )
            rec, byt = lost.get(rg.stream_id, (0, 0))
            lost[rg.stream_id] = (rec + rg.end - end, byt + rg.size - len(good))
        elif rg.end > limit:
            # a healthy object holding records past the cut: they go too
            drop_ranges.append(rg)
            rec, byt = lost.get(rg.stream_id, (0, 0))
            lost[rg.stream_id] = (rec + rg.end - rg.start, byt + rg.size)

    for oid, (reason, _data) in bad.items():
        ob = objs[oid]
        streams = sorted({rg.stream_id for rg in by_object.get(oid, [])})
        if not streams:
            report.findings.append(
                Finding(
                    "torn" if _data else "missing",
                    ob.key,
                    reason,
                    "moved to quarantine" if repair else "none",
                )
            )
            continue
        for sid in streams:
            topic, part = names.get(sid, (f"stream-{sid}", -1))
            rec, byt = lost.pop(sid, (0, 0))
            report.findings.append(
                Finding(
                    "torn" if _data else "missing",
                    ob.key,
                    reason,
                    (
                        f"{topic}-{part} cut back to offset {cut.get(sid, stream_ends.get(sid, 0))}"
                        if repair
                        else "none"
                    ),
                    topic=topic,
                    partition=part,
                    records_lost=rec,
                    bytes_lost=byt,
                )
            )
    for sid, (rec, byt) in lost.items():  # streams cut by damage in another object
        topic, part = names.get(sid, (f"stream-{sid}", -1))
        report.findings.append(
            Finding(
                "torn",
                "-",
                "records after a damaged write",
                "dropped" if repair else "none",
                topic=topic,
                partition=part,
                records_lost=rec,
                bytes_lost=byt,
            )
        )
    if not repair:
        return

    new_key = None
    payload = bytearray()
    entries: list[BlockEntry] = []
    if keep_new:
        payload, entries = encode_object(keep_new)
        node = next(iter(objs[oid].node_id for oid in bad))
        new_key = f"wal/{node}/{int(time.time() * 1000):013d}-repair-{os.getpid()}.wal"
        path = objects_dir / new_key

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)

        await asyncio.to_thread(write)
    async with meta.engine.begin() as conn:
        new_id = None
        if new_key is not None:
            values: dict[str, Any] = {
                "key": new_key,
                "size": len(payload),
                "created_ms": int(time.time() * 1000),
                "node_id": objs[next(iter(bad))].node_id,
            }
            if has_kind:
                values["kind"] = "wal"
            res = await conn.execute(insert(o).values(**values))
            new_id = int(res.inserted_primary_key[0])  # type: ignore[index]
        for rg in drop_ranges:
            await conn.execute(
                delete(r).where(r.c.stream_id == rg.stream_id, r.c.start_offset == rg.start)
            )
        if new_id is not None:
            await conn.execute(
                insert(r),
                [
                    {
                        "stream_id": e.stream_id,
                        "start_offset": e.start_offset,
                        "end_offset": e.end_offset,
                        "object_id": new_id,
                        "position": e.position,
                        "size": e.size,
                        "max_timestamp": e.max_timestamp,
                    }
                    for e in entries
                ],
            )
        for sid, new_end in cut.items():
            await conn.execute(
                update(st)
                .where(st.c.id == sid, st.c.end_offset > new_end)
                .values(end_offset=new_end)
            )
            await conn.execute(
                update(st)
                .where(st.c.id == sid, st.c.start_offset > new_end)
                .values(start_offset=new_end)
            )
            await conn.execute(
                delete(s.producer_states).where(s.producer_states.c.stream_id == sid)
            )
        for oid in bad:
            await conn.execute(delete(o).where(o.c.id == oid))
    for oid in bad:
        await asyncio.to_thread(quarantine, objs[oid].key)
    report.repaired = True
    log.warning(
        "local log repaired: %d damaged objects, %d records lost",
        len(bad),
        report.records_lost,
    )
