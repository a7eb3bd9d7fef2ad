"""The data path of one link on one broker: fetch raw batches from the source
for the mirror partitions this broker owns and append them at the source's
offsets (StreamEngine.append_at), bytes unchanged.

A partition resumes from its stream's committed end (offsets equal the
source's, so the end is the progress), follows the source's log start, and,
while its topic is being promoted, reports when it has reached the source's
end so that promotion can complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import struct
import time
from dataclasses import dataclass

import crc32c

from shoal.broker.broker import Broker
from shoal.link.source import Fetched, SourceAuthError, SourceCluster, SourceError
from shoal.meta.links import MIRRORING, PROMOTED, PROMOTING, LinkStore, MirrorRow, Progress
from shoal.protocol.records import batch_spans, read_header
from shoal.storage.errors import AppendTimeout, BatchBehindEnd, StorageError

log = logging.getLogger("shoal.link")

FETCH_WAIT_MS = 200
FETCH_MAX_BYTES = 64 * 1024 * 1024
PARTITION_MAX_BYTES = 16 * 1024 * 1024
METADATA_MAX_AGE_S = 30.0
ERROR_BACKOFF_S = 1.0
WRITE_THROUGH_TIMEOUT_S = 30.0
PROMOTION_HOLD_S = 5.0
_PRODUCER_FIELDS = struct.Struct(">qhi")  # producer id, epoch, base sequence


def without_producer(records: bytes) -> tuple[bytes, int]:
    """The batches with producer id, epoch and sequence cleared (CRC
    recomputed), and how many offsets they take."""
    out = bytearray(records)
    view = memoryview(out)
    count = 0
    for start, end in batch_spans(view):
        _PRODUCER_FIELDS.pack_into(out, start + 43, -1, -1, -1)
        struct.pack_into(">I", out, start + 17, crc32c.crc32c(view[start + 21 : end]))
        count += read_header(view, start).last_offset_delta + 1
    view.release()
    return bytes(out), count


@dataclass(slots=True)
class PartitionMirror:
    """One mirror partition's state on its owner."""

    mirror: str
    source_topic: str
    partition: int
    stream_id: int
    next_offset: int  # where the next fetch starts (appends may be in flight)
    mirror_start: int
    progress: Progress
    failed: bool = False  # an append failed: re-read the stream's end first


class LinkRunner:
    """Mirrors every owned partition of one link's mirror topics."""

    def __init__(self, broker: Broker, name: str, source: SourceCluster) -> None:
        self.broker = broker
        self.name = name
        self.source = source
        self.mirrors: dict[str, MirrorRow] = {}  # set by the manager
        self.parts: dict[tuple[str, int], PartitionMirror] = {}
        self.leaders: dict[str, list[int]] = {}
        self._leaders_at = 0.0
        self.error = ""
        self.bytes = 0
        self.transactional: set[str] = set()  # mirrors warned about transactions
        self.store = LinkStore(broker.meta)
        self.max_producer_id = -1  # highest producer id reserved past (see _reserve)
        # Set when a partition reached the source's end during promotion: the
        # manager saves progress and completes the promotion at once (the
        # produce pause of a write-through cutover lasts until then).
        self.reached_end = asyncio.Event()
        self.inflight: dict[tuple[str, int], int] = {}  # write-through forwards under way
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"link-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.source.close()

    async def _run(self) -> None:
        while True:
            try:
                worked = await self.round()
                self.error = ""
            except asyncio.CancelledError:
                raise
            except SourceAuthError as exc:
                self._fail(str(exc))
                await asyncio.sleep(ERROR_BACKOFF_S * 5)
                continue
            except (SourceError, StorageError) as exc:
                self._fail(str(exc))
                self._leaders_at = 0.0  # leaders may have moved
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            except Exception as exc:
                log.exception("link %s: round failed", self.name)
                self._fail(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(ERROR_BACKOFF_S)
                continue
            if not worked:
                await asyncio.sleep(0.2)

    def _fail(self, why: str) -> None:
        if why != self.error:
            log.warning("link %s: %s", self.name, why)
        self.error = why
        for p in self.parts.values():
            p.progress.error = why

    def owned(self) -> list[tuple[MirrorRow, int]]:
        """Mirror partitions this broker should work on now."""
        out = []
        for m in self.mirrors.values():
            if m.state == PROMOTED:
                continue
            topic = self.broker.topics.get(m.mirror)
            if topic is None:
                continue
            for part in topic.partitions:
                if self.broker.owns(part):
                    out.append((m, part.partition))
        return out

    async def _partition(self, m: MirrorRow, index: int) -> PartitionMirror | None:
        key = (m.mirror, index)
        p = self.parts.get(key)
        if p is not None and not p.failed:
            return p
        topic = self.broker.topics.get(m.mirror)
        if topic is None or index >= len(topic.partitions):
            return None
        sid = topic.partitions[index].stream_id
        start, end = await self.broker.engine.bounds(sid)
        progress = p.progress if p is not None else Progress(m.mirror, index)
        progress.mirror_end = end
        p = PartitionMirror(m.mirror, m.source_topic, index, sid, end, start, progress)
        self.parts[key] = p
        log.info(
            "link %s: mirroring %s-%d into %s from offset %d",
            self.name,
            m.source_topic,
            index,
            m.mirror,
            end,
        )
        return p

    async def round(self) -> bool:
        """One fetch from every source leader of the owned partitions; True
        when there was anything to do."""
        wanted: list[PartitionMirror] = []
        live = set()
        for m, index in self.owned():
            live.add((m.mirror, index))
            p = await self._partition(m, index)
            if p is not None and not (m.state == PROMOTING and p.progress.promoted):
                wanted.append(p)
        for key in [k for k in self.parts if k not in live]:
            del self.parts[key]  # moved to another broker, promoted or gone
        if not wanted:
            return False
        now = time.monotonic()
        age = now - self._leaders_at
        if age > METADATA_MAX_AGE_S or (
            age > ERROR_BACKOFF_S
            and any(p.partition >= len(self.leaders.get(p.source_topic, ())) for p in wanted)
        ):
            self.leaders = (await self.source.metadata()).partitions
            self._leaders_at = now
        by_leader: dict[int, list[PartitionMirror]] = {}
        for p in wanted:
            leaders = self.leaders.get(p.source_topic)
            if leaders is None or p.partition >= len(leaders):
                p.progress.error = f"source has no partition {p.source_topic}-{p.partition}"
                continue
            by_leader.setdefault(leaders[p.partition], []).append(p)
        if -1 in by_leader:
            self._leaders_at = min(self._leaders_at, now - METADATA_MAX_AGE_S + ERROR_BACKOFF_S)
            for p in by_leader.pop(-1):
                p.progress.error = f"source partition {p.source_topic}-{p.partition} has no leader"
        results = await asyncio.gather(
            *(self._fetch_from(node, parts) for node, parts in by_leader.items()),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        # A round of errors only (source topic gone, leaders moving) comes back
        # at once: report "nothing done" so the loop pauses instead of spinning.
        return any(results)

    async def _fetch_from(self, node: int, parts: list[PartitionMirror]) -> bool:
        """One Fetch from one source broker; True if any partition had no error."""
        by_key = {(p.source_topic, p.partition): p for p in parts}
        fetched = await self.source.fetch(
            node,
            [(p.source_topic, p.partition, p.next_offset) for p in parts],
            FETCH_WAIT_MS,
            FETCH_MAX_BYTES,
            PARTITION_MAX_BYTES,
        )
        healthy = False
        for f in fetched:
            p = by_key.get((f.topic, f.partition))
            if p is not None:
                await self._apply(p, f)
                healthy = healthy or f.error == "none"
        return healthy

    async def _apply(self, p: PartitionMirror, f: Fetched) -> None:
        if f.error != "none":
            await self._source_error(p, f)
            return
        p.progress.source_start = f.log_start
        p.progress.source_end = f.high_watermark
        data = f.records
        appended = 0
        for start, end in batch_spans(data):
            h = read_header(data, start)
            if h.magic != 2:
                p.progress.error = (
                    f"source {f.topic}-{f.partition} offset {h.base_offset}: message format "
                    f"v{h.magic} (only v2 record batches can be mirrored)"
                )
                return
            if h.last_offset < p.next_offset:
                continue  # the fetch began inside a batch we have
            if h.producer_id > self.max_producer_id:
                await self._reserve(h.producer_id)
            if (h.is_transactional or h.is_control) and p.mirror not in self.transactional:
                self.transactional.add(p.mirror)
                log.info(
                    "link %s: %s-%d has transactional batches; they are mirrored with their "
                    "markers, which end each transaction here as on the source",
                    self.name,
                    f.topic,
                    f.partition,
                )
            try:
                fut = await self.broker.engine.append_at(p.stream_id, data[start:end])
            except BatchBehindEnd:
                p.failed = True
                return
            fut.add_done_callback(functools.partial(self._committed, p))
            p.next_offset = h.last_offset + 1
            appended += end - start
        p.progress.bytes += appended
        self.bytes += appended
        if appended:
            p.progress.error = ""
        await self._follow_start(p, f.log_start)
        start, end = await self.broker.engine.bounds(p.stream_id)
        p.progress.mirror_end = end
        if end >= f.high_watermark:
            p.progress.caught_up_ms = int(time.time() * 1000)
        state = self.mirrors.get(p.mirror)
        if (
            state is not None
            and state.state == PROMOTING
            and not appended
            and end == p.next_offset >= f.high_watermark
            and (p.mirror, p.partition) not in self.inflight
        ):
            p.progress.promoted = True
            self.reached_end.set()
            log.info(
                "link %s: %s-%d reached the source's end %d (promotion)",
                self.name,
                p.mirror,
                p.partition,
                end,
            )

    async def _reserve(self, pid: int) -> None:
        """Producer ids come along with the batches: make sure this cluster
        never gives the same id to a new producer (after promotion it would
        collide with the mirrored sequences), before the batch is stored."""
        await self.store.reserve_producer_ids(pid)
        self.broker.producer_ids.skip_past(pid)
        self.max_producer_id = pid

    async def forward(self, mirror: str, partition: int, records: bytes) -> int:
        """Write-through: send a client's batch for a mirror topic to the
        source, then wait until the mirror holds it; returns its offset (the
        source's, which is the mirror's). Idempotence fields are cleared
        first: this broker's producer ids mean nothing on the source, so a
        retried forward can write a duplicate there (at least once)."""
        m = self.mirrors.get(mirror)
        topic = self.broker.topics.get(mirror)
        if m is None or topic is None or partition >= len(topic.partitions):
            raise AppendTimeout(f"{mirror}-{partition} is not mirrored by link {self.name}")
        if m.state == PROMOTING:
            m = await self._promotion_done(mirror)
            if m.state != MIRRORING:
                # A retriable answer: the producer's retry lands here, on the
                # promoted topic (or waits again).
                raise AppendTimeout(f"{mirror} is being promoted; retry")
        # Counted from here (no await since the state check): promotion does
        # not declare the source's end reached while a forward may still add
        # to it, or the record would be on the source and not here.
        key = (mirror, partition)
        self.inflight[key] = self.inflight.get(key, 0) + 1
        try:
            return await self._forward(m, topic.partitions[partition].stream_id, partition, records)
        finally:
            self.inflight[key] -= 1
            if not self.inflight[key]:
                del self.inflight[key]

    async def _forward(self, m: MirrorRow, sid: int, partition: int, records: bytes) -> int:
        mirror = m.mirror
        try:
            node = await self.source.leader(m.source_topic, partition)
            data, count = without_producer(records)
            base = await self.source.produce(
                node, m.source_topic, partition, data, WRITE_THROUGH_TIMEOUT_S
            )
        except SourceError as exc:
            log.info(
                "link %s: write-through to %s-%d failed: %s", self.name, mirror, partition, exc
            )
            raise AppendTimeout(f"write-through to the source failed: {exc}") from None
        deadline = time.monotonic() + WRITE_THROUGH_TIMEOUT_S
        while (await self.broker.engine.bounds(sid))[1] < base + count:
            waiter = self.broker.engine.watch(sid)
            left = deadline - time.monotonic()
            if waiter is None or left <= 0:
                raise AppendTimeout(
                    f"{mirror}-{partition}: offset {base} written to the source, not mirrored yet"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, min(left, 0.5))
        return base

    async def _promotion_done(self, mirror: str) -> MirrorRow:
        """Hold a write-through produce while its topic is being promoted (a
        retriable error at once would put the client into its retry backoff,
        which grows): until promoted, back to mirroring (promote timed out),
        or PROMOTION_HOLD_S."""
        deadline = time.monotonic() + PROMOTION_HOLD_S
        m = self.mirrors[mirror]
        while m.state == PROMOTING and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            m = self.mirrors.get(mirror, m)
        return m

    def _committed(self, p: PartitionMirror, fut: asyncio.Future[int]) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        if not p.failed:
            log.warning(
                "link %s: append to %s-%d failed, resuming from the committed end: %s",
                self.name,
                p.mirror,
                p.partition,
                fut.exception(),
            )
        p.failed = True

    async def _follow_start(self, p: PartitionMirror, log_start: int) -> None:
        """The mirror's log start follows the source's, as far as it has data."""
        if log_start <= p.mirror_start:
            return
        start, end = await self.broker.engine.bounds(p.stream_id)
        target = min(log_start, end)
        if target > start:
            p.mirror_start = await self.broker.engine.trim(p.stream_id, target)

    async def _source_error(self, p: PartitionMirror, f: Fetched) -> None:
        if f.error == "offset_out_of_range":
            # Retention upstream removed what we had not copied yet: jump to
            # the source's log start (the gap is recorded as one).
            start, end = await self.source.offsets(f.topic, f.partition)
            if p.next_offset < start:
                log.warning(
                    "link %s: %s-%d: offsets %d..%d are gone from the source; "
                    "continuing at its log start %d",
                    self.name,
                    f.topic,
                    f.partition,
                    p.next_offset,
                    start - 1,
                    start,
                )
                p.next_offset = start
                return
            p.progress.error = (
                f"source {f.topic}-{f.partition} ends at {end}, below the mirror's end "
                f"{p.next_offset}: the source lost data or was re-created"
            )
            return
        if f.error in (
            "not_leader_or_follower",
            "unknown_topic_or_partition",
            "fenced_leader_epoch",
        ):
            self._leaders_at = 0.0
        p.progress.error = f"source {f.topic}-{f.partition}: {f.error}"
