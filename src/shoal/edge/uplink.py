"""Uplinks: forward local topics to a central Kafka-compatible cluster.

One confluent-kafka producer per uplink (idempotent, acks=all, never timing
out on its own), one forwarder per local partition. A forwarder reads the
local log in offset order, decodes each batch, and produces every record with
its key (so the central partitioner keeps a device on one partition), its
timestamp, its headers and an origin header `site/topic/partition/offset`.

Delivery bookkeeping is per forwarder: `acked` is the first offset not yet
confirmed by the central cluster; everything below it was delivered (or
dropped and counted). Progress is persisted only from `acked`, after the
central ack, so a crash repeats at most what was unconfirmed (bounded by
`max_inflight_records` plus what was acknowledged in the last
`progress_interval_ms`) and never skips a record.

When the uplink fails (no acknowledgement for `stall_timeout_ms`, all brokers
down, authentication refused, a fatal producer error) the producer is torn
down, every forwarder rewinds to its `acked` offset, and a new producer is
made after a full-jitter backoff. The idempotent producer never reorders
within a partition, so a rewind can repeat records but not reorder a device.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from shoal.broker.broker import Broker
from shoal.edge.config import UplinkConfig
from shoal.edge.lanes import Lane, Lanes
from shoal.edge.pacing import Backoff, PriorityScheduler, TokenBucket
from shoal.protocol.batches import BatchDecodeError, decode_records, is_control, iter_batches
from shoal.storage.errors import OffsetOutOfRange, StorageError

log = logging.getLogger("shoal.edge.uplink")
# librdkafka's own log lines (served by poll() on the event loop): connection
# failures during an outage are expected; error_cb reports the same events,
# summed up by OutageLog and in status. Only critical ones go through.
rdkafka_log = logging.getLogger("shoal.edge.rdkafka")
rdkafka_log.setLevel(logging.CRITICAL)
# How often a continuing outage is summarised in the log.
OUTAGE_REPORT_S = 30.0

TOPIC_MISSING = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
}
AUTH = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION,
    KafkaError.UNSUPPORTED_SASL_MECHANISM,
    KafkaError.ILLEGAL_SASL_STATE,
}
TOO_LARGE = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD,
}
PURGED = {KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}


def error_kind(code: int) -> str:
    if code in TOPIC_MISSING:
        return "topic-missing"
    if code in AUTH:
        return "auth"
    if code in TOO_LARGE:
        return "rejected"
    return "delivery"


class OutageLog:
    """An uplink outage is an expected condition at the edge: one warning
    when it starts, one summary per OUTAGE_REPORT_S while it lasts, one line
    when the link is back, instead of a line per failed attempt."""

    def __init__(self, name: str, interval: float = OUTAGE_REPORT_S) -> None:
        self.name = name
        self.interval = interval
        self.since = 0.0  # monotonic start of the outage; 0: none
        self.failures = 0
        self._reported_at = 0.0
        self._unreported = 0

    def failed(self, message: str) -> None:
        now = time.monotonic()
        self.failures += 1
        if not self.since:
            self.since = self._reported_at = now
            self._unreported = 0
            log.warning("uplink %s: down: %s; retrying with backoff", self.name, message)
            return
        self._unreported += 1
        if now - self._reported_at >= self.interval:
            log.warning(
                "uplink %s: still down after %.0fs (%d failed attempts in the last %.0fs; "
                "last: %s)",
                self.name,
                now - self.since,
                self._unreported,
                now - self._reported_at,
                message,
            )
            self._reported_at = now
            self._unreported = 0

    def recovered(self) -> None:
        if self.since:
            log.info(
                "uplink %s: connected again after %.1fs down (%d failed attempts)",
                self.name,
                time.monotonic() - self.since,
                self.failures,
            )
        self.since = 0.0
        self.failures = 0


@dataclass(slots=True)
class _Sent:
    offset: int
    timestamp: int


@dataclass(slots=True)
class Forwarder:
    """Forwarding state of one local partition on one uplink."""

    uplink: Uplink
    topic: str
    partition: int
    stream_id: int
    lane: Lane
    central_topic: str
    acked: int  # first offset not confirmed centrally (in memory)
    saved: int  # what the state store holds
    next_read: int
    log_epoch: int = 0
    pending: collections.deque[_Sent] = field(default_factory=collections.deque)
    done: set[int] = field(default_factory=set)
    fgen: int = 0
    end_offset: int = 0
    start_offset: int = 0
    error: str | None = None
    error_kind: str | None = None
    paused_until: float = 0.0
    backoff: Backoff | None = None
    draining: bool = False
    drain_gen: int = 0
    inflight: int = 0
    counted: list[list[int]] = field(default_factory=list)  # [lo, hi) counted as dropped
    trims: int = 0
    task: asyncio.Task[None] | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return self.uplink.cfg.name, self.topic, self.partition

    @property
    def backlog_records(self) -> int:
        return max(0, self.end_offset - self.acked)

    def _advance(self) -> None:
        pending, done = self.pending, self.done
        while pending and pending[0].offset in done:
            done.discard(pending.popleft().offset)
        self.acked = pending[0].offset if pending else self.next_read

    def rewind(self) -> None:
        """Forget everything unconfirmed: it will be read and sent again."""
        self.fgen += 1
        self.pending.clear()
        self.done.clear()
        self.next_read = self.acked
        self.draining = False

    def trimmed(self, old_start: int, new_start: int) -> int:
        """The local log start moved from `old_start` to `new_start` (disk
        budget). Returns how many of the records now gone were never handed
        to the producer: dropped, for the caller to count. Records already in
        flight are counted only if their delivery then fails (see `_step`),
        so a record is never counted as dropped and delivered too."""
        self.start_offset = max(self.start_offset, new_start)
        first_unread = max(self.next_read, old_start)
        if new_start <= first_unread:
            return 0
        self.next_read = new_start
        self.trims += 1  # records decoded but not yet produced are gone now
        if not self.pending:
            self.acked = new_start
        return self._count(first_unread, new_start)

    def _count(self, lo: int, hi: int) -> int:
        """Records in [lo, hi) not counted as dropped before; marks them."""
        fresh = hi - lo
        acked = self.acked
        self.counted = [c for c in self.counted if c[1] > acked]  # never read again
        for a, b in self.counted:
            fresh -= max(0, min(b, hi) - max(a, lo))
        self.counted.append([lo, hi])
        self.counted.sort()
        merged: list[list[int]] = []
        for a, b in self.counted:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.counted = merged
        return max(0, fresh)

    async def run(self) -> None:
        up = self.uplink
        while True:
            try:
                await self._step(up)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "forwarder %s-%d on %s failed; retrying",
                    self.topic,
                    self.partition,
                    up.cfg.name,
                )
                await asyncio.sleep(1)

    async def _step(self, up: Uplink) -> None:
        await up.ready.wait()
        now = time.monotonic()
        if self.draining:
            # A record failed: wait for the rest in flight, then resend from it.
            if self.inflight > 0 and up.gen == self.drain_gen:
                await asyncio.sleep(0.05)
                return
            self.rewind()
        if now < self.paused_until:
            await asyncio.sleep(min(self.paused_until - now, 0.5))
            return
        gen, fgen, trims = up.gen, self.fgen, self.trims
        engine = up.broker.engine
        try:
            result = await engine.read(self.stream_id, self.next_read, up.cfg.chunk_bytes)
        except OffsetOutOfRange as exc:
            self.end_offset = exc.end
            if self.next_read < exc.start:
                # Handed to a producer that failed, and trimmed meanwhile:
                # never confirmed, gone now.
                self.drop("disk-budget", self.next_read, exc.start, 0)
                self.counted = [c for c in self.counted if c[1] > exc.start]
                self.pending.clear()
                self.done.clear()
                self.acked = self.next_read = exc.start
            elif self.next_read > exc.end:
                # The local log is shorter than our position (repaired after a
                # torn write): records from `end` on are new ones.
                log.warning(
                    "%s-%d: local end %d is below uplink %s position %d; resuming at %d",
                    self.topic,
                    self.partition,
                    exc.end,
                    up.cfg.name,
                    self.next_read,
                    exc.end,
                )
                self.pending.clear()
                self.done.clear()
                self.acked = self.next_read = exc.end
                self.log_epoch = await up.bump_epoch(self.topic, self.partition)
            return
        except StorageError as exc:
            log.warning("%s-%d: local read failed: %s", self.topic, self.partition, exc)
            await asyncio.sleep(0.5)
            return
        self.end_offset = result.high_watermark
        self.start_offset = result.log_start_offset
        if not result.chunks:
            watch = engine.watch(self.stream_id)
            if watch is not None:
                try:
                    await asyncio.wait_for(watch, timeout=1.0)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0.2)
            return
        await self._forward(up, result.chunks, gen, fgen, trims)

    def drop(self, reason: str, lo: int, hi: int, nbytes: int) -> None:
        """Count records [lo, hi) as dropped, once: a rewind may skip them again."""
        fresh = self._count(lo, hi)
        if fresh:
            self.lane.count_drop(reason, fresh, nbytes * fresh // max(hi - lo, 1))

    def _current(self, up: Uplink, gen: int, fgen: int, trims: int) -> bool:
        """Nothing happened since the read that voids what was decoded."""
        return (
            up.gen == gen
            and self.fgen == fgen
            and self.trims == trims
            and up.producer is not None
            and not self.draining
        )

    async def _forward(
        self, up: Uplink, chunks: list[Any], gen: int, fgen: int, trims: int
    ) -> None:
        lane = self.lane
        ttl = lane.cfg.ttl_ms
        now_ms = int(time.time() * 1000)
        origin_prefix = f"{up.site}/{self.topic}/{self.partition}/"
        hdr_name = up.cfg.origin_header
        epoch_hdr: list[tuple[str, bytes]] = (
            [(hdr_name + ".epoch", str(self.log_epoch).encode())] if self.log_epoch else []
        )
        out: list[tuple[int, int, bytes | None, bytes | None, list[Any], int]] = []
        size = 0
        last = self.next_read - 1
        for chunk in chunks:
            for batch in iter_batches(chunk):
                base = int.from_bytes(batch[0:8], "big", signed=True)
                last_in_batch = base + int.from_bytes(batch[23:27], "big", signed=True)
                if last_in_batch < self.next_read:
                    continue
                if is_control(batch):
                    last = max(last, last_in_batch)
                    continue
                max_ts = int.from_bytes(batch[35:43], "big", signed=True)
                if ttl and max_ts < now_ms - ttl:
                    self.drop("ttl", max(base, self.next_read), last_in_batch + 1, len(batch))
                    last = last_in_batch
                    continue
                try:
                    records = decode_records(batch)
                except BatchDecodeError as exc:
                    first = max(base, self.next_read)
                    log.error(
                        "%s-%d: batch at %d cannot be decoded (%s): %d records dropped",
                        self.topic,
                        self.partition,
                        base,
                        exc,
                        last_in_batch - first + 1,
                    )
                    self.drop("corrupt", first, last_in_batch + 1, len(batch))
                    last = last_in_batch
                    continue
                for r in records:
                    if r.offset < self.next_read:
                        continue
                    if ttl and r.timestamp < now_ms - ttl:
                        self.drop("ttl", r.offset, r.offset + 1, r.size)
                        last = r.offset
                        continue
                    headers = list(r.headers)
                    origin = (origin_prefix + str(r.offset)).encode()
                    headers.append((hdr_name, origin))
                    headers.extend(epoch_hdr)
                    nbytes = r.size + len(hdr_name) + len(origin)
                    out.append((r.offset, r.timestamp, r.key, r.value, headers, nbytes))
                    size += nbytes
                    last = r.offset
                if size >= up.cfg.chunk_bytes:
                    break
            if size >= up.cfg.chunk_bytes:
                break
        # produce in slices sized for the bandwidth grant
        i = 0
        slice_bytes = up.slice_bytes
        slice_records = max(1, up.cfg.max_inflight_records // 4)
        while i < len(out):
            j = i
            nbytes = 0
            while j < len(out) and (
                j == i or (nbytes + out[j][5] <= slice_bytes and j - i < slice_records)
            ):
                nbytes += out[j][5]
                j += 1
            await up.pace(lane, nbytes)
            await up.wait_window(j - i, nbytes)
            if not self._current(up, gen, fgen, trims):
                return  # rewound or trimmed meanwhile: read again
            for offset, ts, key, value, headers, nb in out[i:j]:
                if not up.produce(self, offset, ts, key, value, headers, nb):
                    return
                self.next_read = offset + 1
            i = j
        if self._current(up, gen, fgen, trims):
            self.next_read = max(self.next_read, last + 1)
            self._advance()

    # delivery reports (on the event loop, from producer.poll) ----------------

    def delivered(self, gen: int, fgen: int, offset: int, nbytes: int, err: Any, _msg: Any) -> None:
        up = self.uplink
        if gen != up.gen:
            return  # a report from a producer already torn down
        up.settled(nbytes)
        self.inflight -= 1
        if fgen != self.fgen or offset < self.acked:
            return
        if err is None:
            self.done.add(offset)
            up.succeeded(nbytes)
            if self.error_kind in ("topic-missing", "rejected"):
                self.error = self.error_kind = None
                self.backoff = None
            self._advance()
            return
        code = err.code()
        if code in PURGED:
            return
        kind = error_kind(code)
        if kind == "rejected":
            # The central cluster will never take it: count it, move on.
            self.done.add(offset)
            self.drop("rejected", offset, offset + 1, nbytes)
            self.error, self.error_kind = f"{err.name()}: {err.str()}", kind
            self._advance()
            return
        self.error, self.error_kind = f"{err.name()}: {err.str()}", kind
        up.record_error(kind, f"{self.central_topic}: {err.name()}: {err.str()}")
        if kind == "auth" or err.fatal():
            up.fail(kind, f"{err.name()}: {err.str()}")
            return
        # The topic is missing (or another per-topic error): pause this
        # partition only, let what is in flight settle, then resend from
        # the first unconfirmed record after a backoff.
        if self.backoff is None:
            self.backoff = Backoff(up.cfg.backoff_initial_ms, up.cfg.backoff_max_ms)
        if not self.draining:
            self.draining = True
            self.drain_gen = up.gen
            self.paused_until = time.monotonic() + self.backoff.next_delay()


class Uplink:
    def __init__(
        self,
        cfg: UplinkConfig,
        site: str,
        broker: Broker,
        lanes: Lanes,
        scheduler: PriorityScheduler,
        progress: dict[tuple[str, str, int], int],
        epochs: dict[tuple[str, int], int],
        bump_epoch: Callable[[str, int], Any],
    ) -> None:
        self.cfg = cfg
        self.site = site
        self.broker = broker
        self.lanes = lanes
        self.scheduler = scheduler
        self.progress = progress
        self.epochs = epochs
        self._bump_epoch = bump_epoch
        self.forwarders: dict[tuple[str, int], Forwarder] = {}
        self.producer: Producer | None = None
        self.gen = 0
        self.ready = asyncio.Event()
        self.state = "starting"
        self.inflight_records = 0
        self.inflight_bytes = 0
        self.unsaved = 0  # confirmed centrally, progress not yet written
        self._window = asyncio.Event()
        self._window.set()
        self.backoff = Backoff(cfg.backoff_initial_ms, cfg.backoff_max_ms)
        self.replay = (
            TokenBucket(cfg.replay_bytes_per_sec, max(cfg.replay_bytes_per_sec // 10, 1024))
            if cfg.replay_bytes_per_sec > 0
            else None
        )
        self.last_success = 0.0  # monotonic
        self.last_success_wall = 0.0
        # monotonic time of the last failed attempt (delivery, connection,
        # metadata probe): "connected" needs a success after it.
        self.last_failure = 0.0
        self.outage = OutageLog(cfg.name)
        self.reachable_at = 0.0
        self.busy_since = 0.0
        self.last_error: str | None = None
        self.last_error_kind: str | None = None
        self.retry_at = 0.0
        self.failures = 0
        self.reconnects = 0
        self.sent_records = 0
        self.sent_bytes = 0
        self._failed: asyncio.Future[tuple[str, str]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # pacing ------------------------------------------------------------------

    @property
    def slice_bytes(self) -> int:
        """How many bytes to ask the bandwidth cap for at a time: small enough
        that priorities interleave finely under a cap."""
        cap = self.scheduler.rate
        if self.replay is not None:
            cap = min(cap, self.replay.rate) if cap > 0 else self.replay.rate
        if cap <= 0:
            return self.cfg.chunk_bytes
        return int(max(1024, min(self.cfg.chunk_bytes, cap / 20)))

    async def pace(self, lane: Lane, nbytes: int) -> None:
        await self.scheduler.acquire(lane.cfg.priority, nbytes)
        if self.replay is not None and self.replaying:
            await self.replay.take(nbytes)

    @property
    def replaying(self) -> bool:
        """Catching up after a reconnect: some forwarder is behind by more
        than one chunk."""
        return any(
            f.backlog_records > 0 and f.end_offset - f.next_read > 0
            for f in self.forwarders.values()
        )

    async def wait_window(self, records: int, nbytes: int) -> None:
        """Hold a forwarder while too much is unconfirmed: records in flight
        plus records acknowledged whose progress is not written yet. That sum
        is what a crash can send twice, so it is bounded by
        max_inflight_records."""
        cfg = self.cfg
        while (self.inflight_records + self.unsaved) > 0 and (
            self.inflight_records + self.unsaved + records > self.window_records
            or self.inflight_bytes + nbytes > cfg.max_inflight_bytes
        ):
            self._window.clear()
            await self._window.wait()

    @property
    def window_records(self) -> int:
        """Until a produce succeeds on this connection, one slice at a time:
        records handed to a producer that cannot deliver would all go at once
        when the link returns, ahead of higher-priority lanes and of the
        replay limit."""
        if self.state == "connected":
            return self.cfg.max_inflight_records
        return min(self.cfg.max_inflight_records, 16)

    def window_changed(self) -> None:
        self._window.set()

    def settled(self, nbytes: int) -> None:
        self.inflight_records -= 1
        self.inflight_bytes -= nbytes
        if self.inflight_records <= 0:
            self.inflight_records = 0
            self.inflight_bytes = 0
        self._window.set()

    def succeeded(self, nbytes: int) -> None:
        now = time.monotonic()
        self.last_success = now
        self.last_success_wall = time.time()
        self.sent_records += 1
        self.sent_bytes += nbytes
        self.unsaved += 1
        if self.outage.since:
            self.outage.recovered()
        if self.state != "connected":
            if self.state == "connecting" and self.reconnects <= 1:
                log.info("uplink %s: connected (first produce acknowledged)", self.cfg.name)
            self.state = "connected"
            self.backoff.reset()
            self._window.set()
        if self.last_error_kind in ("transport", "stall", "auth", "fatal"):
            self.last_error_kind = None

    # producing -----------------------------------------------------------------

    def produce(
        self,
        fw: Forwarder,
        offset: int,
        ts: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[Any],
        nbytes: int,
    ) -> bool:
        p = self.producer
        if p is None:
            return False
        cb = functools.partial(fw.delivered, self.gen, fw.fgen, offset, nbytes)
        while True:
            try:
                p.produce(
                    fw.central_topic,
                    value=value,
                    key=key,
                    headers=headers,
                    timestamp=ts,
                    on_delivery=cb,
                )
                break
            except BufferError:
                p.poll(0.01)
            except KafkaException as exc:
                # A fatal producer state (e.g. the central cluster refused
                # InitProducerId: the principal may write nothing) does not
                # always reach error_cb: without this the forwarder retried
                # forever while status said `connecting` with no error.
                self.fail(
                    "fatal",
                    f"cannot produce: {exc.args[0].str()} (a refusal by the central "
                    "cluster, e.g. InitProducerId for a principal that may write nothing)",
                )
                return False
        if self.inflight_records == 0:
            self.busy_since = time.monotonic()
        self.inflight_records += 1
        self.inflight_bytes += nbytes
        fw.inflight += 1
        fw.pending.append(_Sent(offset, ts))
        return True

    async def bump_epoch(self, topic: str, partition: int) -> int:
        epoch = int(await self._bump_epoch(topic, partition))
        self.epochs[(topic, partition)] = epoch
        return epoch

    def record_error(self, kind: str, message: str) -> None:
        if kind in ("transport", "stall", "delivery"):
            # The link itself failed: not connected until a produce succeeds.
            self.last_failure = time.monotonic()
            self.outage.failed(f"{message} ({kind})")
        elif message != self.last_error:
            log.warning("uplink %s: %s (%s)", self.cfg.name, message, kind)
        self.last_error, self.last_error_kind = message, kind

    def fail(self, kind: str, message: str) -> None:
        """Tear this producer down and reconnect after a backoff. The first
        reason of a round is the one reported: what follows it (all brokers
        down after an authentication failure, say) is a consequence."""
        if self._failed is None or self._failed.done():
            return
        self.last_failure = time.monotonic()
        self.record_error(kind, message)
        self._failed.set_result((kind, message))
        # Forwarders wait for the next producer instead of feeding this one.
        self.ready.clear()

    def _error_cb(self, err: KafkaError) -> None:
        if self._failed is None or self._failed.done():
            return  # the producer is being torn down
        code = err.code()
        if err.fatal():
            self.fail("fatal", f"{err.name()}: {err.str()}")
        elif code in AUTH:
            self.fail("auth", f"{err.name()}: {err.str()}")
        elif code == KafkaError._ALL_BROKERS_DOWN:
            # Every connection to the central cluster is down: tear the
            # producer down and back off (status shows backoff and retry_in_s
            # at once, not after the stall timeout).
            self.fail("transport", f"{err.name()}: {err.str()}")
        else:
            # One broker's connection failed: not connected until a produce
            # succeeds again; librdkafka reconnects it.
            self.record_error("transport", f"{err.name()}: {err.str()}")

    # life cycle ----------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._supervise(), name=f"uplink-{self.cfg.name}"),
            asyncio.create_task(self._poll_loop()),
            asyncio.create_task(self._discover_loop()),
        ]

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self.gen += 1
            self._failed = loop.create_future()
            conf: dict[str, Any] = dict(self.cfg.producer_config())
            conf["error_cb"] = self._error_cb
            conf["logger"] = rdkafka_log
            try:
                self.producer = Producer(conf)
            except Exception as exc:  # a bad passthrough property, typically
                self.fail("config", f"cannot create producer: {exc}")
                self.producer = None
            else:
                self.state = "connecting"
                self.reconnects += 1
                self.ready.set()
                probe = asyncio.create_task(self._probe(self.producer))
                await self._failed
                probe.cancel()
            self.failures += 1
            self.ready.clear()
            await self._teardown()
            if self._stopping:
                return
            delay = self.backoff.next_delay()
            self.state = "backoff"
            self.retry_at = time.time() + delay
            log.debug(
                "uplink %s: %s; reconnecting in %.1fs (attempt %d)",
                self.cfg.name,
                self.last_error,
                delay,
                self.backoff.attempt,
            )
            await asyncio.sleep(delay)

    async def _probe(self, producer: Producer) -> None:
        """Reachability while there is nothing to send (metadata, not a
        produce: it can make an uplink `idle`, never `connected`)."""
        while True:
            idle = self.inflight_records == 0 and not any(
                f.backlog_records for f in self.forwarders.values()
            )
            if idle and time.monotonic() - self.reachable_at > 5:
                try:
                    await asyncio.to_thread(producer.list_topics, timeout=2)
                    self.reachable_at = time.monotonic()
                except Exception as exc:
                    self.record_error("transport", f"metadata request failed: {exc}")
            await asyncio.sleep(1)

    async def _teardown(self) -> None:
        p = self.producer
        self.producer = None
        self.gen += 1  # every report from the old producer is stale now
        if p is not None:
            try:
                p.purge(True, True, False)
                p.poll(0)
            except Exception:
                pass
            holder = [p]
            del p
            await asyncio.to_thread(holder.clear)  # rd_kafka_destroy may block
        self.inflight_records = 0
        self.inflight_bytes = 0
        self._window.set()
        for fw in self.forwarders.values():
            fw.inflight = 0
            fw.rewind()

    async def _poll_loop(self) -> None:
        while True:
            p = self.producer
            if p is not None:
                p.poll(0)
                now = time.monotonic()
                if (
                    self.inflight_records > 0
                    and now - max(self.last_success, self.busy_since)
                    > self.cfg.stall_timeout_ms / 1000
                ):
                    self.fail(
                        "stall",
                        f"no acknowledgement from {self.cfg.bootstrap} for "
                        f"{self.cfg.stall_timeout_ms / 1000:.0f}s with "
                        f"{self.inflight_records} records in flight",
                    )
            await asyncio.sleep(0.005 if self.inflight_records else 0.05)

    async def _discover_loop(self) -> None:
        while True:
            await self.discover()
            await asyncio.sleep(1.0)

    async def discover(self) -> None:
        """Start a forwarder for every local partition this uplink forwards,
        including topics that local applications create later."""
        if self._stopping:
            return
        for topic in self.broker.topics.all():
            if not self.cfg.forwards(topic.name):
                continue
            for part in topic.partitions:
                k = (topic.name, part.partition)
                if k in self.forwarders:
                    continue
                start = self.progress.get((self.cfg.name, topic.name, part.partition), 0)
                # Below the log start is gone: forwarded, or dropped and
                # counted by whoever trimmed it.
                log_start, _end = await self.broker.engine.bounds(part.stream_id)
                if k in self.forwarders:
                    continue
                start = max(start, log_start)
                fw = Forwarder(
                    uplink=self,
                    topic=topic.name,
                    partition=part.partition,
                    stream_id=part.stream_id,
                    lane=self.lanes.lane_of(topic.name),
                    central_topic=self.cfg.central_topic(topic.name),
                    acked=start,
                    saved=start,
                    next_read=start,
                    log_epoch=self.epochs.get((topic.name, part.partition), 0),
                )
                fw.task = asyncio.create_task(fw.run())
                self.forwarders[k] = fw

    async def stop(self, timeout: float = 10.0) -> None:
        """Give what is in flight a moment to be acknowledged, then stop."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        for fw in self.forwarders.values():
            if fw.task is not None:
                fw.task.cancel()
        while self.producer is not None and self.inflight_records > 0:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            *(fw.task for fw in self.forwarders.values() if fw.task is not None),
            return_exceptions=True,
        )
        await self._teardown()

    # status --------------------------------------------------------------------

    def current_state(self) -> str:
        """`connected` only while the last attempt succeeded: a failed send,
        connection or metadata request ends it at once."""
        now = time.monotonic()
        if self.state in ("backoff", "starting"):
            return self.state
        failed = self.last_failure > max(self.last_success, self.reachable_at)
        if (
            not failed
            and self.last_success
            and now - self.last_success <= self.cfg.connected_window_ms / 1000
        ):
            if any(f.error_kind == "topic-missing" for f in self.forwarders.values()):
                return "degraded"
            return "connected"
        if any(f.error_kind for f in self.forwarders.values()) or self.last_error_kind == "auth":
            return "error"
        if any(f.backlog_records for f in self.forwarders.values()):
            return "connecting"
        if not failed and self.reachable_at and now - self.reachable_at <= 15:
            return "idle"
        return "connecting"

    @property
    def down(self) -> bool:
        """For monitoring (`shoal edge status` exits non-zero): backing off,
        refused, or the last attempt failed."""
        if self.state == "backoff" or self.current_state() == "error":
            return True
        return self.last_failure > max(self.last_success, self.reachable_at)
