"""The object store against the metadata store: what `shoal meta check`
reports and what the broker reconciles at start.

Each object carries its own index (stream id, offsets, position, size per
block), so the store can be compared with the metadata without trusting
either: objects the metadata needs but the store lacks, objects the store
holds but no metadata row names, and stream ranges that do not line up.

An unknown object holding offsets at or past its stream's end is never
garbage: it was committed under metadata that has since been lost (an older
backup restored) or uploaded just before a crash and never acknowledged.
Either way the broker adopts it at start when it continues the stream
exactly (so no offset is ever handed out twice, and the producers' sequence
state is rebuilt from its batch headers), and refuses to start when it
cannot (a gap before it).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from shoal.meta.recovery import NewRange, inventory_rows, record_adopted
from shoal.meta.store import MetaStore, NewObject, ProducerRow
from shoal.protocol.records import batch_spans, read_header
from shoal.storage import producers as producer_state
from shoal.storage.cleaner import PREFIXES, node_of
from shoal.storage.errors import CorruptObject, StorageError
from shoal.storage.format import (
    FLAG_LABELS,
    FOOTER_SIZE,
    TAIL_READ,
    BlockEntry,
    decode_footer,
    decode_index,
    decode_labels,
    footer_flags,
)
from shoal.storage.objectstore import ObjectInfo, ObjectStore
from shoal.storage.producers import BatchMeta, ProducerEntry

log = logging.getLogger("shoal.inventory")


class ObjectsAhead(StorageError):
    """The store holds data past a stream's end that cannot be adopted."""


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # missing-object, size-mismatch, unreadable-object, unreferenced-object,
    # ahead-of-metadata, range-gap, range-overlap, range-outside-object, end-mismatch
    subject: str  # an object key or "stream N"
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class StreamRow:
    id: int
    start: int
    end: int
    deleted: bool


@dataclass(slots=True)
class Inventory:
    streams: dict[int, StreamRow]
    listed: dict[str, ObjectInfo]
    rows: dict[str, tuple[int, int, int | None]]  # key -> (id, size, delete_after_ms)
    indexes: dict[str, list[BlockEntry]] = field(default_factory=dict)  # unknown objects
    findings: list[Finding] = field(default_factory=list)
    #: unknown objects no stream needs (all blocks below their stream's end,
    #: or of streams gone): key -> age in ms
    garbage: dict[str, int] = field(default_factory=dict)
    #: per stream, blocks of unknown objects that continue it exactly, in order
    adoptable: dict[int, list[tuple[str, BlockEntry]]] = field(default_factory=dict)
    #: blocks past a stream's end that cannot be adopted (a gap before them,
    #: or newer than the committed data they overlap): the broker refuses to start
    blocking: list[tuple[str, BlockEntry]] = field(default_factory=list)

    def kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out


async def read_index(
    store: ObjectStore, key: str, size: int
) -> tuple[list[BlockEntry], dict[int, str]]:
    """An object's index and stream labels from its tail (one range read
    for a typical object, more for a big index or labels)."""
    if size < FOOTER_SIZE:
        raise CorruptObject("object shorter than its footer")
    tail_start = max(0, size - TAIL_READ)
    tail = await store.get_range(key, tail_start, size)
    pos, length, crc = decode_footer(tail, size)
    if pos >= tail_start:
        index = tail[pos - tail_start : pos - tail_start + length]
    else:
        index = await store.get_range(key, pos, pos + length)
    entries = decode_index(index, crc)
    labels: dict[int, str] = {}
    if footer_flags(tail) & FLAG_LABELS:
        data_end = max((e.position + e.size for e in entries), default=0)
        if data_end >= tail_start:
            labels = decode_labels(tail[data_end - tail_start : pos - tail_start])
        else:
            labels = decode_labels(await store.get_range(key, data_end, pos))
    return entries, labels


async def take_inventory(store: ObjectStore, meta: MetaStore) -> Inventory:
    stream_rows, object_rows, ranges = await inventory_rows(meta)
    streams = {
        int(x.id): StreamRow(int(x.id), int(x.start_offset), int(x.end_offset), bool(x.deleted))
        for x in stream_rows
    }
    rows = {str(x.key): (int(x.id), int(x.size), x.delete_after_ms) for x in object_rows}
    listed = {info.key: info for p in PREFIXES for info in await store.list(p)}
    inv = Inventory(streams, listed, rows)
    now = int(time.time() * 1000)
    referenced: set[str] = set()
    by_stream: dict[int, list[tuple[int, int]]] = {}
    written: dict[int, list[tuple[int, int, int]]] = {}  # stream -> (start, end, created_ms)
    for x in ranges:
        referenced.add(x.key)
        by_stream.setdefault(int(x.stream_id), []).append((int(x.start_offset), int(x.end_offset)))
        written.setdefault(int(x.stream_id), []).append(
            (int(x.start_offset), int(x.end_offset), int(x.created_ms))
        )
        info = listed.get(x.key)
        if info is not None and int(x.position) + int(x.size) > info.size:
            inv.findings.append(
                Finding(
                    "range-outside-object",
                    x.key,
                    f"stream {x.stream_id} [{x.start_offset}, {x.end_offset}) at "
                    f"{x.position}+{x.size} past the object's {info.size} bytes",
                )
            )
    for key, (_id, size, delete_after) in rows.items():
        info = listed.get(key)
        if info is None:
            if key in referenced:
                inv.findings.append(
                    Finding("missing-object", key, "recorded and referenced, not in the store")
                )
            elif delete_after is None:
                inv.findings.append(
                    Finding("missing-object", key, "recorded (no range refers to it)")
                )
        elif info.size != size:
            inv.findings.append(
                Finding("size-mismatch", key, f"{info.size} bytes in the store, {size} recorded")
            )
    for sid, spans in by_stream.items():
        stream = streams.get(sid)
        if stream is None:
            continue
        _check_ranges(inv, stream, spans)
    for sid, stream in streams.items():
        if not stream.deleted and sid not in by_stream and stream.end > stream.start:
            inv.findings.append(
                Finding(
                    "range-gap",
                    f"stream {sid}",
                    f"[{stream.start}, {stream.end}) committed, no range holds it",
                )
            )
    # unknown objects: garbage, or data the metadata does not know about
    candidates: dict[int, list[tuple[str, BlockEntry]]] = {}
    for key, info in sorted(listed.items()):
        if key in rows:
            continue
        try:
            entries, _labels = await read_index(store, key, info.size)
        except (CorruptObject, StorageError) as exc:
            inv.findings.append(Finding("unreadable-object", key, f"no metadata row; {exc}"))
            continue
        inv.indexes[key] = entries
        ahead, newer = [], []
        for e in entries:
            stream = streams.get(e.stream_id)
            if stream is None:
                # Stream rows are never deleted (only marked): a stream the
                # metadata has no row for was created under newer metadata.
                newer.append(e)
                continue
            if stream.deleted or e.end_offset <= stream.end:
                continue  # a copy of committed data, or of a deleted stream
            if e.start_offset >= stream.end:
                ahead.append(e)
                continue
            # It straddles the end: superseded if the committed data it
            # overlaps was written after it (offsets handed out again after
            # a crash lost its commit); from newer metadata otherwise.
            overlap = [
                c
                for a, b, c in written.get(e.stream_id, [])
                if a < stream.end and b > e.start_offset
            ]
            if overlap and info.last_modified_ms > max(overlap):
                newer.append(e)
        for e in newer:
            inv.blocking.append((key, e))
            stream = streams.get(e.stream_id)
            why = (
                "a stream the metadata does not know (created under newer metadata)"
                if stream is None
                else f"straddles its end {stream.end} and is newer than the data it overlaps"
            )
            inv.findings.append(
                Finding(
                    "ahead-of-metadata",
                    key,
                    f"stream {e.stream_id} [{e.start_offset}, {e.end_offset}): {why}; "
                    "not adoptable",
                )
            )
        if not ahead and not newer:
            inv.garbage[key] = now - info.last_modified_ms
            inv.findings.append(
                Finding(
                    "unreferenced-object",
                    key,
                    f"no metadata row; every block is below its stream's end or of a "
                    f"deleted stream ({info.size} bytes, {(now - info.last_modified_ms) // 1000} "
                    "s old)",
                )
            )
            continue
        for e in ahead:
            candidates.setdefault(e.stream_id, []).append((key, e))
    for sid, blocks in candidates.items():
        chain, stray = _chain(streams[sid].end, blocks)
        if chain:
            inv.adoptable[sid] = chain
        for key, e in chain:
            inv.findings.append(
                Finding(
                    "ahead-of-metadata",
                    key,
                    f"stream {sid} [{e.start_offset}, {e.end_offset}) continues its end "
                    f"{streams[sid].end}: adoptable",
                )
            )
        for key, e in stray:
            inv.blocking.append((key, e))
            inv.findings.append(
                Finding(
                    "ahead-of-metadata",
                    key,
                    f"stream {sid} [{e.start_offset}, {e.end_offset}) does not continue its "
                    f"end {streams[sid].end}: not adoptable",
                )
            )
    return inv


def _check_ranges(inv: Inventory, stream: StreamRow, spans: list[tuple[int, int]]) -> None:
    subject = f"stream {stream.id}"
    live = [(a, b) for a, b in spans if b > stream.start]
    if live and live[0][0] > stream.start:
        inv.findings.append(
            Finding("range-gap", subject, f"log start {stream.start}, first range at {live[0][0]}")
        )
    for (a0, b0), (a1, b1) in itertools.pairwise(live):
        if a1 > b0:
            inv.findings.append(Finding("range-gap", subject, f"nothing holds [{b0}, {a1})"))
        elif a1 < b0:
            inv.findings.append(
                Finding("range-overlap", subject, f"[{a0}, {b0}) and [{a1}, {b1}) overlap")
            )
    last = live[-1][1] if live else stream.start
    if last != stream.end and not stream.deleted:
        inv.findings.append(
            Finding("end-mismatch", subject, f"ranges end at {last}, the stream at {stream.end}")
        )


def _chain(
    end: int, blocks: Iterable[tuple[str, BlockEntry]]
) -> tuple[list[tuple[str, BlockEntry]], list[tuple[str, BlockEntry]]]:
    """The blocks that continue `end` without a gap (the longest at each
    step), and those that do not."""
    pending = sorted(blocks, key=lambda kb: (kb[1].start_offset, -kb[1].end_offset))
    # the blocks are all at or past `end` (see take_inventory)
    chain: list[tuple[str, BlockEntry]] = []
    used: set[int] = set()
    while True:
        best = None
        for i, (_key, e) in enumerate(pending):
            if (
                i not in used
                and e.start_offset == end
                and (best is None or e.end_offset > pending[best][1].end_offset)
            ):
                best = i
        if best is None:
            break
        used.add(best)
        chain.append(pending[best])
        end = pending[best][1].end_offset
    stray = [kb for i, kb in enumerate(pending) if i not in used and kb[1].end_offset > end]
    return chain, stray


async def producer_rows(
    store: ObjectStore,
    stream_id: int,
    blocks: list[tuple[str, BlockEntry]],
    known: dict[int, ProducerEntry] | None = None,
) -> list[ProducerRow]:
    """Producers' sequence state after `blocks`, from their batch headers."""
    producers = dict(known or {})
    now = int(time.time() * 1000)
    for key, e in blocks:
        block = await store.get_range(key, e.position, e.position + e.size)
        for a, _b in batch_spans(block):
            h = read_header(block, a)
            if h.producer_id < 0:
                continue
            count = h.last_offset_delta + 1
            meta = BatchMeta(
                h.base_sequence,
                producer_state.next_seq(h.base_sequence, count - 1),
                h.base_offset,
                h.base_offset + h.last_offset_delta,
            )
            producer_state.record(producers, h.producer_id, h.producer_epoch, meta, now)
    return [
        ProducerRow(stream_id, pid, p.epoch, p.encode_batches(), p.last_timestamp_ms)
        for pid, p in producers.items()
    ]


async def reconcile(store: ObjectStore, meta: MetaStore, node_id: int) -> int:
    """At start, while no broker writes: adopt objects holding offsets past
    the metadata's end of their streams (uploaded just before a crash, or
    committed under metadata since lost — an older backup restored), so no
    offset is handed out twice; raise ObjectsAhead when they cannot be
    adopted. Returns the offsets adopted."""
    inv = await take_inventory(store, meta)
    if inv.blocking:
        key, e = inv.blocking[0]
        known = inv.streams.get(e.stream_id)
        where = (
            "a stream the metadata does not know" if known is None else f"metadata end {known.end}"
        )
        raise ObjectsAhead(
            f"{len(inv.blocking)} block(s) in the object store hold offsets past what the "
            f"metadata store records and cannot be adopted (first: {key}, stream "
            f"{e.stream_id} [{e.start_offset}, {e.end_offset}), {where}). The "
            "metadata is older than the objects (a restored backup?); starting would hand "
            "those offsets out again. See them with `shoal meta check`; rebuild the metadata "
            "from the objects with `shoal meta rebuild --objects URL`"
        )
    if not inv.adoptable:
        return 0
    return await adopt(store, meta, inv, node_id)


async def adopt(store: ObjectStore, meta: MetaStore, inv: Inventory, node_id: int) -> int:
    """Record the adoptable objects and move their streams' ends, with the
    producers' sequence state their batches carry, in one transaction per
    stream. Returns the offsets adopted."""
    total = 0
    for sid, chain in inv.adoptable.items():
        producers: dict[int, ProducerEntry] = {
            p.producer_id: ProducerEntry.decode(p.epoch, p.batches, p.last_timestamp_ms)
            for p in await meta.load_producers(sid)
        }
        start = inv.streams[sid].end
        new_end = chain[-1][1].end_offset
        rows = await producer_rows(store, sid, chain, producers)
        objects = [
            new_object(inv.listed[key], node_id) for key in dict.fromkeys(k for k, _ in chain)
        ]
        await record_adopted(meta, sid, start, new_end, objects, new_ranges(chain), rows)
        total += new_end - start
        log.warning(
            "stream %d: adopted [%d, %d) from %d object(s) the metadata did not know "
            "(committed under newer metadata, or uploaded just before a crash)",
            sid,
            start,
            new_end,
            len({k for k, _ in chain}),
        )
    return total


def new_object(info: ObjectInfo, node_id: int) -> NewObject:
    """The metadata row of an object found in the store: its writer from its
    key when the key names one, else `node_id`."""
    node = node_of(info.key)
    return NewObject(
        info.key,
        info.size,
        info.last_modified_ms,
        node_id if node is None else node,
        "wal" if info.key.startswith("wal/") else "set",
    )


def new_ranges(chain: list[tuple[str, BlockEntry]]) -> list[NewRange]:
    return [
        NewRange(key, e.start_offset, e.end_offset, e.position, e.size, e.max_timestamp)
        for key, e in chain
    ]


def summary(inv: Inventory) -> str:
    return json.dumps(inv.kinds(), sort_keys=True)
