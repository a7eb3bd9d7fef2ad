"""The reverse link of one link on one broker: after promotion, copy what is
written to a promoted topic here back to the link's source, so the old
cluster stays a place to roll back to (`shoal link rollback`).

The source cannot be told at which offset to store a batch (Apache Kafka
has no such request), so each batch is produced to it as an idempotent
producer (our producer id, epoch and sequence in the batch header, the rest of
the bytes unchanged) and the offset the source assigns goes into the offset
map (shoal.link.offsetmap), saved with the partition's progress. A batch keeps
its offset span on the source, so while nothing else writes there the map is
the identity: offsets come out the same as here, whatever the source is.
Control batches (transaction markers) are not produced: they leave a gap the
map records.

After a restart the map may miss batches the source took just before (the
map is saved about twice a second): the source's end says how many offsets,
and they are the next batches here, in order, so they are mapped instead of
sent again (`recovered`). A source end that does not fit is an error: another
producer writes to the old cluster.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass, field

import crc32c

from shoal.broker.broker import Broker
from shoal.link.offsetmap import MapError, OffsetMap, Range
from shoal.link.source import ProduceRefused, SourceCluster, SourceError
from shoal.meta.links import (
    COPYING,
    STOPPING,
    LinkStore,
    MirrorRow,
    ReverseProgress,
    ReverseRow,
)
from shoal.meta.store import AbortedTxn
from shoal.protocol.records import BatchHeader, batch_spans, read_header
from shoal.storage.errors import StorageError
from shoal.storage.streams import ReadResult

log = logging.getLogger("shoal.link.reverse")

READ_MAX_BYTES = 4 * 1024 * 1024
PRODUCE_TIMEOUT_S = 30.0
SAVE_S = 0.5
IDLE_SAVE_S = 5.0  # progress rows are refreshed this often when nothing changes
ERROR_BACKOFF_S = 1.0
#: Stopping: the topic must have been read-only this long before "stopped"
#: (produce requests already past the check when it turned read-only land).
STOP_SETTLE_S = 1.0
#: Produce errors after which our producer state on the source is unknown:
#: start again with a new producer id (and map what the source already took).
_RESET = {
    "out_of_order_sequence_number",
    "duplicate_sequence_number",
    "unknown_producer_id",
    "invalid_producer_epoch",
}
_PRODUCER_FIELDS = struct.Struct(">qhi")  # producer id, epoch, base sequence
_TRANSACTIONAL = 0x10


class ReverseError(Exception):
    """The reverse copy of a partition cannot go on; the message says why."""


def as_producer(batch: bytes | memoryview, pid: int, epoch: int, sequence: int) -> bytes:
    """The batch as a client sends it: base offset 0 (Kafka refuses others),
    our idempotent producer's fields (not transactional: markers are not
    copied) and its CRC recomputed."""
    out = bytearray(batch)
    struct.pack_into(">q", out, 0, 0)  # base offset
    struct.pack_into(">i", out, 12, -1)  # partition leader epoch (the source sets it)
    _PRODUCER_FIELDS.pack_into(out, 43, pid, epoch, sequence)
    attributes = struct.unpack_from(">h", out, 21)[0] & ~_TRANSACTIONAL
    struct.pack_into(">h", out, 21, attributes)
    struct.pack_into(">I", out, 17, crc32c.crc32c(memoryview(out)[21:]))
    return bytes(out)


@dataclass(slots=True)
class ReversePartition:
    mirror: str
    source_topic: str
    partition: int
    stream_id: int
    map: OffsetMap
    next_offset: int  # next offset here to copy (markers skipped)
    producer_id: int
    epoch: int
    progress: ReverseProgress
    sequence: int = 0
    failed: bool = False
    stopping_since: float | None = field(default=None)


class ReverseRunner:
    """Copies every owned partition of one link's reversed topics back."""

    def __init__(self, broker: Broker, name: str, source: SourceCluster, store: LinkStore) -> None:
        self.broker = broker
        self.name = name
        self.source = source
        self.store = store
        self.topics: dict[str, tuple[ReverseRow, MirrorRow]] = {}  # set by the manager
        self.parts: dict[tuple[str, int], ReversePartition] = {}
        self.errors: dict[tuple[str, int], str] = {}  # partitions failing to open, too
        # A failed partition waits ERROR_BACKOFF_S; the others go on meanwhile.
        self.retry_at: dict[tuple[str, int], float] = {}
        self.promotion_ends: dict[tuple[str, int], int] = {}  # set by the manager
        self._saved_at = 0.0
        self._saved: object = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"reverse-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.source.close()
        await self.save()

    async def _run(self) -> None:
        while True:
            try:
                worked = await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("link %s: reverse round failed", self.name)
                worked = False
            if not worked:
                await asyncio.sleep(0.2)

    def owned(self) -> list[tuple[ReverseRow, MirrorRow, int, int]]:
        out = []
        for rev, m in self.topics.values():
            if rev.state not in (COPYING, STOPPING):
                continue
            topic = self.broker.topics.get(m.mirror)
            if topic is None:
                continue
            for part in topic.partitions:
                if self.broker.owns(part):
                    out.append((rev, m, part.partition, part.stream_id))
        return out

    async def round(self) -> bool:
        worked = False
        live = set()
        started = time.monotonic()
        for rev, m, index, sid in self.owned():
            key = (m.mirror, index)
            live.add(key)
            if self.retry_at.get(key, 0.0) > started:
                continue
            p = self.parts.get(key)
            try:
                if p is None or p.failed:
                    p = self.parts[key] = await self._open(m, index, sid, p)
                worked = await self._copy(p) or worked
                p.progress.error = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                known = (SourceError, StorageError, ReverseError, MapError)
                detail = str(exc) if isinstance(exc, known) else f"{type(exc).__name__}: {exc}"
                why = f"reverse copy of {m.mirror}-{index}: {detail}"
                if self.errors.get(key) != why:
                    log.warning("link %s: %s", self.name, why)
                self.errors[key] = why
                if p is not None:
                    p.progress.error = why
                    p.progress.stopped = False
                    p.stopping_since = None
                self.retry_at[key] = time.monotonic() + ERROR_BACKOFF_S
                continue
            self.errors.pop(key, None)
            self.retry_at.pop(key, None)
            if rev.state == STOPPING:
                now = time.monotonic()
                if p.stopping_since is None:
                    p.stopping_since = now
                p.progress.stopped = (
                    now - p.stopping_since >= STOP_SETTLE_S
                    and p.next_offset >= p.progress.shoal_end
                )
            else:
                p.stopping_since = None
                p.progress.stopped = False
        for key in [k for k in self.parts if k not in live]:
            del self.parts[key]
        for key in [k for k in self.errors if k not in live]:
            del self.errors[key]
            self.retry_at.pop(key, None)
        since = time.monotonic() - self._saved_at
        if since >= IDLE_SAVE_S or (since >= SAVE_S and self._snapshot() != self._saved):
            await self.save()
        return worked

    def _snapshot(self) -> object:
        """What a save would write, to skip saves that change nothing."""
        return (
            [
                (k, p.next_offset, p.progress.shoal_end, p.progress.error, p.progress.stopped)
                for k, p in sorted(self.parts.items())
            ],
            sorted(self.errors.items()),
        )

    async def save(self) -> None:
        self._saved_at = time.monotonic()
        self._saved = self._snapshot()
        rows = []
        ranges = []
        now = int(time.time() * 1000)
        for p in self.parts.values():
            p.progress.copied_to = p.next_offset
            p.progress.source_end = p.map.source_end
            p.progress.updated_ms = now
            rows.append(p.progress)
            ranges += [
                (p.mirror, p.partition, (r.shoal_start, r.source_start, r.count))
                for r in p.map.take_dirty()
            ]
        for (mirror, index), why in self.errors.items():
            if (mirror, index) not in self.parts:  # never opened: say why
                rows.append(ReverseProgress(mirror, index, error=why, updated_ms=now))
        await self.store.save_reverse(rows, ranges)

    async def _open(
        self, m: MirrorRow, index: int, sid: int, old: ReversePartition | None
    ) -> ReversePartition:
        """Load (or start) the partition's map, map what the source took
        beyond it, and get a fresh producer id."""
        ranges = (await self.store.offset_map(m.mirror, index)).get(index, [])
        progress = old.progress if old is not None else ReverseProgress(m.mirror, index)
        _start, shoal_end = await self.broker.engine.bounds(sid)
        if ranges:
            omap = OffsetMap([Range(*r) for r in ranges])
            source_end = await self.source.end_offset(m.source_topic, index, omap.source_end)
        else:
            promoted_at = self.promotion_ends.get((m.mirror, index))
            at = promoted_at if promoted_at is not None else 0
            source_end = await self.source.end_offset(m.source_topic, index, min(at, shoal_end))
            if source_end > shoal_end:
                raise ReverseError(
                    f"the source's {m.source_topic}-{index} ends at {source_end}, past this "
                    f"topic's end {shoal_end}"
                )
            if promoted_at is not None and source_end < promoted_at:
                raise ReverseError(
                    f"the source's {m.source_topic}-{index} ends at {source_end}, below the "
                    f"promotion point {promoted_at}: the source lost records"
                )
            # Past the promotion point with no map saved: the previous owner
            # copied batches and died before its first save. They are this
            # topic's next batches (checked by _recover below), or another
            # writer's, which _recover refuses.
            omap = OffsetMap.starting_at(promoted_at if promoted_at is not None else source_end)
        p = ReversePartition(
            m.mirror, m.source_topic, index, sid, omap, omap.shoal_end, -1, -1, progress
        )
        if source_end < omap.source_end:
            raise ReverseError(
                f"the source's {m.source_topic}-{index} ends at {source_end}, below the "
                f"{omap.source_end} the reverse link wrote: the source lost records"
            )
        if source_end > omap.source_end:
            await self._recover(p, source_end)
        p.producer_id, p.epoch = await self.source.init_producer_id()
        log.info(
            "link %s: copying %s-%d back to the source's %s-%d from offset %d (to %d there)",
            self.name,
            m.mirror,
            index,
            m.source_topic,
            index,
            p.next_offset,
            omap.source_end,
        )
        return p

    async def _recover(self, p: ReversePartition, source_end: int) -> None:
        """Map the offsets the source took that the saved map does not have
        (a restart between the source's ack and the save): they are the next
        batches here, in order."""
        missing = source_end - p.map.source_end
        offset, left = p.next_offset, missing
        while left > 0:
            _res, data, aborted = await self._read_committed(p.stream_id, offset)
            spans = list(batch_spans(data))
            if not spans:
                break
            for start, _end in spans:
                h = read_header(data, start)
                if h.last_offset < offset:
                    continue
                offset = h.last_offset + 1
                if _not_copied(h, aborted):
                    continue
                span = h.last_offset_delta + 1
                if span > left:
                    left = -1
                    break
                p.map.add(h.base_offset, p.map.source_end, span)
                left -= span
                if left == 0:
                    break
            if left <= 0:
                break
        if left != 0:
            raise ReverseError(
                f"the source's {p.source_topic}-{p.partition} has {missing} offset(s) past the "
                "reverse link's map that are not this topic's next batches: something else "
                "writes to it"
            )
        p.next_offset = offset
        p.progress.recovered += missing
        log.warning(
            "link %s: %s-%d: %d offset(s) the source took before a restart were mapped, "
            "not sent again",
            self.name,
            p.mirror,
            p.partition,
            missing,
        )

    async def _read_committed(
        self, stream_id: int, offset: int
    ) -> tuple[ReadResult, bytes, list[AbortedTxn]]:
        """What a read_committed consumer reads from `offset` (whole batches
        up to the last stable offset) and the aborted transactions in it."""
        engine = self.broker.engine
        res = await engine.read(stream_id, offset, READ_MAX_BYTES, committed=True)
        data = b"".join(res.chunks)
        if not data:
            return res, data, []
        return res, data, await engine.aborted_between(stream_id, offset, res.last_stable_offset)

    async def _copy(self, p: ReversePartition) -> bool:
        """Produce the committed batches from p.next_offset to the source,
        one at a time (Kafka takes one batch per partition per request); True
        if any. Only what a read_committed consumer sees goes back: the copy
        stops at the last stable offset, and aborted transactions and
        markers are skipped (a gap in the offset map), since the copies are
        plain batches of the reverse link's own producer there."""
        engine = self.broker.engine
        _start, end = await engine.bounds(p.stream_id)
        p.progress.shoal_end = end
        if p.next_offset >= end:
            return False
        res, data, aborted = await self._read_committed(p.stream_id, p.next_offset)
        p.progress.shoal_end = res.high_watermark
        worked = False
        for start, stop in batch_spans(data):
            h = read_header(data, start)
            if h.last_offset < p.next_offset:
                continue
            if _not_copied(h, aborted):
                p.next_offset = h.last_offset + 1
                continue
            batch = as_producer(memoryview(data)[start:stop], p.producer_id, p.epoch, p.sequence)
            node = await self.source.leader(p.source_topic, p.partition)
            try:
                base = await self.source.produce(
                    node, p.source_topic, p.partition, batch, PRODUCE_TIMEOUT_S
                )
            except ProduceRefused as exc:
                if exc.error in _RESET:
                    p.failed = True
                raise
            p.map.add(h.base_offset, base, h.last_offset_delta + 1)
            p.sequence = (p.sequence + h.last_offset_delta + 1) & 0x7FFFFFFF
            p.next_offset = h.last_offset + 1
            p.progress.bytes += stop - start
            worked = True
        return worked


def _not_copied(h: BatchHeader, aborted: list[AbortedTxn]) -> bool:
    """Markers and aborted transactions' batches: what a read_committed
    consumer skips, so neither the copy nor the map's recovery counts them
    (they are gaps in the offset map)."""
    return h.is_control or (
        h.is_transactional
        and any(
            a.producer_id == h.producer_id and a.first_offset <= h.base_offset <= a.last_offset
            for a in aborted
        )
    )
