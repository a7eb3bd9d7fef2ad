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

With `exactly_once` the producer is transactional (edge/txn.py): records go
out inside a transaction begun when a forwarder has something to send and
committed every `transaction_interval_ms` (or sooner when the window is
full) together with each forwarder's position, written to the central
offsets topic. `acked` is then the committed position: delivery reports only
count. An abortable error aborts the transaction and rewinds every forwarder
to it; a fatal one rebuilds the producer, which reads the positions back
from the offsets topic; being fenced by another gateway with the same
transactional id stops the uplink.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from shoal.broker.broker import Broker
from shoal.edge.config import UplinkConfig
from shoal.edge.lanes import Lane, Lanes
from shoal.edge.pacing import Backoff, PriorityScheduler, TokenBucket
from shoal.edge.txn import (
    OffsetsTopicError,
    TxnStats,
    encode_progress,
    ensure_offsets_topic,
    is_fatal,
    is_fenced,
    new_nonce,
    partition_for,
    progress_key,
    read_positions,
    sync_key,
)
from shoal.protocol.batches import BatchDecodeError, decode_records, is_control, iter_batches
from shoal.storage.errors import OffsetOutOfRange, StorageError

log = logging.getLogger("shoal.edge.uplink")
# librdkafka's own log lines (served by poll() on the event loop): connection
# failures during an outage are expected; error_cb reports the same events,
# summed up by OutageLog and in status. Only critical ones go through.
rdkafka_log = logging.getLogger("shoal.edge.rdkafka")
rdkafka_log.setLevel(logging.CRITICAL)


class _ProducerLog:
    """librdkafka's log for one producer, acting on its FATAL line.

    A fatal error is meant to reach error_cb; with librdkafka 2.16 it did
    not in the gateway tests (about one run in fifteen under load): refused
    InitProducerId logged `FATAL ... Fatal error`, error_cb never ran, and
    records produced just before it stayed queued with no delivery report,
    so the uplink said `connecting` with no error for as long as it ran.
    The log line is the one report librdkafka always makes. At-least-once
    uplinks only: with exactly-once the transaction calls raise the error,
    and the uplink must tell a fenced producer from another fatal one."""

    def __init__(self, on_fatal: Callable[[str], None]) -> None:
        self._on_fatal = on_fatal

    def log(self, level: int, fmt: str, *args: Any) -> None:
        rdkafka_log.log(level, fmt, *args)
        # confluent-kafka calls log(level, "%s [%s] %s", fac, name, message).
        if args and args[0] == "FATAL":
            self._on_fatal(str(args[-1]))


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
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,  # an ACL, not another producer
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
    # Exactly-once: offsets the central cluster refused for good (counted as
    # dropped), skipped when the aborted transaction is sent again.
    skip: set[int] = field(default_factory=set)
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

    def trimmed(self, new_start: int) -> int:
        """The local log start moved up to `new_start` (disk budget). Returns
        how many of the records now gone were never handed to the producer:
        dropped, for the caller to count. Records already in flight are
        counted only if their delivery then fails (see `_step`), so a record
        is never counted as dropped and delivered too.

        Counting starts at `next_read`, not at the old log start: records an
        earlier trim took while they were in flight are below it once a
        teardown has rewound the forwarder, and this trim moves `next_read`
        past them for good."""
        self.start_offset = max(self.start_offset, new_start)
        first_unread = self.next_read
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
                    if r.offset in self.skip:
                        last = r.offset
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
            if up.eos:
                await up.txn_slot()
            if not self._current(up, gen, fgen, trims):
                return  # rewound or trimmed meanwhile: read again
            for offset, ts, key, value, headers, nb in out[i:j]:
                if not up.produce(self, offset, ts, key, value, headers, nb):
                    return
                self.next_read = offset + 1
            i = j
        if self._current(up, gen, fgen, trims):
            self.next_read = max(self.next_read, last + 1)
            if up.eos:
                # acked moves at commit; a position moved past records not
                # sent (TTL, control batches) still has to be committed.
                up.want_txn()
            else:
                self._advance()

    # delivery reports (on the event loop, from producer.poll) ----------------

    def delivered(self, gen: int, fgen: int, offset: int, nbytes: int, err: Any, _msg: Any) -> None:
        up = self.uplink
        if gen != up.gen:
            return  # a report from a producer already torn down
        up.settled(nbytes)
        self.inflight -= 1
        if up.eos:
            self._delivered_in_txn(up, offset, nbytes, err)
            return
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

    def _delivered_in_txn(self, up: Uplink, offset: int, nbytes: int, err: Any) -> None:
        """Exactly-once: a delivery report only counts and reports errors;
        what is delivered counts once its transaction commits, and a failed
        record makes the transaction fail (it is aborted and sent again)."""
        if err is None:
            up.succeeded(nbytes)
            if self.error_kind in ("topic-missing", "rejected"):
                self.error = self.error_kind = None
            return
        code = err.code()
        if code in PURGED:
            return
        kind = error_kind(code)
        self.error, self.error_kind = f"{err.name()}: {err.str()}", kind
        if kind == "rejected" and offset not in self.skip:
            self.skip.add(offset)
            self.drop("rejected", offset, offset + 1, nbytes)
            return
        up.record_error(kind, f"{self.central_topic}: {err.name()}: {err.str()}")


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
        # exactly-once ---------------------------------------------------------
        self.eos = cfg.exactly_once
        self.txn = TxnStats()
        self.committed: dict[tuple[str, int], int] = {}  # positions in the offsets topic
        self.positions_loaded = False
        self.fenced = False
        self.txn_open = False
        self.txn_records = 0  # produced in the open transaction
        self.txn_bytes = 0
        self._txn_gate = asyncio.Event()  # set while records may be produced
        self._txn_waiters = 0
        self._want = asyncio.Event()
        self._txn_full = asyncio.Event()
        # A transaction ended (committed, aborted, producer gone): what
        # wait_window waits for, not every delivery report as _window.
        self._txn_ended = asyncio.Event()
        self._txn_backoff = Backoff(cfg.backoff_initial_ms, cfg.backoff_max_ms)
        self._blocking: asyncio.Future[Any] | None = None
        self._offsets_partition = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._txn_task: asyncio.Task[None] | None = None

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
        if self.eos:
            # What the open transaction holds; a full window commits it early.
            while self.txn_records > 0 and (
                self.txn_records + records > self.window_records
                or self.txn_bytes + nbytes > cfg.max_inflight_bytes
            ):
                self._txn_full.set()
                self._txn_ended.clear()
                await self._txn_ended.wait()
            return
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
        if not self.eos:
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
        cb: Any = functools.partial(fw.delivered, self.gen, fw.fgen, offset, nbytes)
        if self.eos:
            cb = self._on_loop(cb)
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
                if self.eos and not is_fatal(exc.args[0]):
                    # Abortable: the transaction loop aborts and rewinds.
                    self.record_error("transaction", f"cannot produce: {exc.args[0].str()}")
                    self._txn_full.set()
                    return False
                if self.eos:
                    self._txn_error("produce", exc)
                    return False
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
        if self.eos:
            self.txn_records += 1
            self.txn_bytes += nbytes
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
        if self.eos and is_fenced(err):
            self.fence(f"{err.name()}: {err.str()}")  # even if failing already
            return
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

    def _fatal_logged(self, gen: int, message: str) -> None:
        if gen != self.gen or self._failed is None or self._failed.done():
            return  # reported already, or from a producer being torn down
        self.fail("fatal", f"fatal producer error: {message.split(': ', 1)[-1]}")

    # life cycle ----------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
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
            conf["error_cb"] = self._on_loop(self._error_cb) if self.eos else self._error_cb
            if self.eos:
                # The transaction loop's calls raise the fatal error, and a
                # fenced producer must become `fenced`, not be rebuilt (its
                # InitProducerId would fence the other gateway back).
                conf["logger"] = rdkafka_log
            else:
                fatal = functools.partial(self._fatal_logged, self.gen)
                conf["logger"] = _ProducerLog(self._on_loop(fatal))
            try:
                self.producer = Producer(conf)
            except Exception as exc:  # a bad passthrough property, typically
                self.fail("config", f"cannot create producer: {exc}")
                self.producer = None
            else:
                self.state = "connecting"
                self.reconnects += 1
                helpers = [asyncio.create_task(self._probe(self.producer))]
                if not self.eos:
                    self.ready.set()
                elif await self._start_transactions(self.producer):
                    self._txn_task = asyncio.create_task(self._run_transactions(self.producer))
                    helpers.append(self._txn_task)
                    self.ready.set()
                await self._failed
                for h in helpers:
                    h.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
            self.failures += 1
            self.ready.clear()
            await self._teardown()
            if self._stopping:
                return
            if self.fenced:
                self.state = "fenced"
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
            if self.fenced:  # learnt from a late report of the old producer
                self.state = "fenced"
                return

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
        if self._blocking is not None and not self._blocking.done():
            # A commit or abort still running on a worker thread: the
            # producer must outlive it.
            await asyncio.wait([self._blocking])
        self.txn_open = False
        self._txn_gate.clear()
        self.txn_records = self.txn_bytes = 0
        self._txn_ended.set()
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
                saved = self.progress.get((self.cfg.name, topic.name, part.partition), 0)
                # Below the log start is gone: forwarded, or dropped and
                # counted by whoever trimmed it.
                log_start, _end = await self.broker.engine.bounds(part.stream_id)
                if k in self.forwarders:
                    continue
                # Exactly-once: the committed position is authoritative.
                start = max(self.committed.get(k, saved), log_start)
                fw = Forwarder(
                    uplink=self,
                    topic=topic.name,
                    partition=part.partition,
                    stream_id=part.stream_id,
                    lane=self.lanes.lane_of(topic.name),
                    central_topic=self.cfg.central_topic(topic.name),
                    acked=start,
                    # (what state.db holds; never above what is committed)
                    saved=min(saved, start) if self.eos else start,
                    next_read=start,
                    log_epoch=self.epochs.get((topic.name, part.partition), 0),
                )
                fw.task = asyncio.create_task(fw.run())
                self.forwarders[k] = fw

    # exactly-once ----------------------------------------------------------------

    def _on_loop(self, fn: Callable[..., Any]) -> Callable[..., None]:
        """librdkafka serves callbacks in whichever thread polls or flushes,
        and commit_transaction flushes on a worker thread: run them on the
        event loop, where the uplink's state lives."""
        loop, tid = self._loop, self._loop_thread

        def call(*args: Any) -> None:
            if loop is None or threading.get_ident() == tid:
                fn(*args)
            else:
                loop.call_soon_threadsafe(fn, *args)

        return call

    async def _blocking_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A blocking librdkafka call on a worker thread. Cancelling the
        caller does not stop the thread: teardown waits for it."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(None, fn, *args)
        self._blocking = fut
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done():
                # An exception's traceback holds the producer: let it go.
                self._blocking = None

    def want_txn(self) -> None:
        self._want.set()

    async def txn_slot(self) -> None:
        """Wait until records may be produced: a transaction is open and not
        being committed. Returns with no await after the check, so the
        caller's produce calls land in that transaction."""
        while not (self.txn_open and self._txn_gate.is_set()):
            self._txn_waiters += 1
            self._want.set()
            try:
                await self._txn_gate.wait()
            finally:
                self._txn_waiters -= 1

    def fence(self, message: str) -> None:
        """Another gateway took this transactional id: stop forwarding (going
        on would fence it back, and each would abort the other's work)."""
        if self.fenced:
            return
        self.fenced = True
        # The failure may already be under way for a consequence (the
        # producer's next call failing as _FATAL): the cause is what shows.
        self.last_error_kind = "fenced"
        self.last_error = (
            f"fenced by another producer with transactional id "
            f"{self.cfg.transactional_id!r}: {message}"
        )
        log.error(
            "uplink %s: fenced: another producer uses transactional id %r (%s); this "
            "uplink stops forwarding; stop the other gateway and restart this one",
            self.cfg.name,
            self.cfg.transactional_id,
            message,
        )
        self.fail("fenced", self.last_error)

    def _txn_error(self, what: str, exc: KafkaException) -> None:
        err: KafkaError = exc.args[0]
        p = self.producer
        if err.code() == KafkaError._FATAL and p is not None:
            # Calls after a fatal error only say _FATAL; a transactional
            # call answers the cause at once (being fenced, typically).
            try:
                p.abort_transaction(0.1)
            except KafkaException as cause:
                if cause.args[0].code() != KafkaError._FATAL:
                    err = cause.args[0]
        message = f"{what}: {err.name()}: {err.str()}"
        if is_fenced(err):
            self.fence(message)
        elif err.code() in AUTH:
            self.fail("auth", message)
        elif is_fatal(err):
            self.fail("fatal", message)
        else:
            self.fail("transport", message)

    async def _start_transactions(self, p: Producer) -> bool:
        """init_transactions (fencing an older instance, finishing its open
        transaction), the offsets topic, then the committed positions. False
        (after fail()) when any of it fails."""
        cfg = self.cfg
        timeout = cfg.stall_timeout_ms / 1000
        while True:
            try:
                await self._blocking_call(p.init_transactions, timeout)
                break
            except KafkaException as exc:
                err = exc.args[0]
                if is_fatal(err) or is_fenced(err) or not err.retriable():
                    self._txn_error("init_transactions", exc)
                    return False
                # The cluster is not reachable: resume the same call on the
                # same producer (a new producer would leave this one's
                # InitProducerId pending, and both would get an epoch).
                message = f"init_transactions: {err.name()}: {err.str()}"
                self.txn.init_timeouts += 1
            self.record_error("transport", message)
            delay = self.backoff.next_delay()
            self.state, self.retry_at = "backoff", time.time() + delay
            await asyncio.sleep(delay)
            self.state = "connecting"
        self.backoff.reset()
        conf = cfg.client_config()
        try:
            parts = await self._blocking_call(
                ensure_offsets_topic, conf, cfg.offsets_topic, timeout
            )
        except OffsetsTopicError as exc:
            self.fail("offsets-topic", str(exc))
            return False
        except KafkaException as exc:
            self.fail("transport", f"offsets topic {cfg.offsets_topic!r}: {exc.args[0].str()}")
            return False
        self._offsets_partition = partition_for(self.site, cfg.name, parts)
        nonce = new_nonce()
        try:
            p.begin_transaction()
            self._produce_control(
                p, cfg.offsets_topic, sync_key(self.site, cfg.name), nonce, self._offsets_partition
            )
            await self._blocking_call(p.commit_transaction, timeout)
        except KafkaException as exc:
            self._txn_error("sync transaction", exc)
            return False
        try:
            positions = await self._blocking_call(
                read_positions,
                conf,
                cfg.offsets_topic,
                self._offsets_partition,
                self.site,
                cfg.name,
                nonce,
                2 * timeout,
            )
        except (KafkaException, TimeoutError) as exc:
            self.fail("transport", f"reading offsets topic {cfg.offsets_topic!r}: {exc}")
            return False
        self.committed = positions
        for k, fw in self.forwarders.items():
            if k in positions:
                fw.acked = positions[k]
                fw.saved = min(fw.saved, fw.acked)
            fw.rewind()
        if not self.positions_loaded:
            log.info(
                "uplink %s: exactly-once, transactional id %r, %d positions from %s[%d]",
                cfg.name,
                cfg.transactional_id,
                len(positions),
                cfg.offsets_topic,
                self._offsets_partition,
            )
        self.positions_loaded = True
        return True

    def _moved(self) -> dict[tuple[str, int], int]:
        return {
            k: fw.next_read
            for k, fw in self.forwarders.items()
            if fw.next_read != self.committed.get(k)
        }

    async def _run_transactions(self, p: Producer) -> None:
        try:
            await self._transactions(p)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave the uplink waiting forever
            log.exception("uplink %s: transaction loop failed", self.cfg.name)
            self.fail("fatal", f"transaction loop failed: {exc!r}")

    @staticmethod
    def _produce_control(p: Producer, topic: str, key: bytes, value: bytes, part: int) -> None:
        """An offsets-topic record: waits for room in a full queue."""
        while True:
            try:
                p.produce(topic, key=key, value=value, partition=part)
                return
            except BufferError:
                p.poll(0.01)

    async def _transactions(self, p: Producer) -> None:
        """Begin a transaction when there is something to send, let the
        forwarders produce into it for transaction_interval_ms (less when the
        window fills), then write the positions and commit."""
        cfg = self.cfg
        interval = cfg.transaction_interval_ms / 1000
        timeout = cfg.stall_timeout_ms / 1000
        while True:
            while not (self._txn_waiters or self._moved()):
                if self._stopping:
                    return
                self._want.clear()
                try:
                    await asyncio.wait_for(self._want.wait(), 1.0)
                except TimeoutError:
                    pass
            try:
                p.begin_transaction()
            except KafkaException as exc:
                self._txn_error("begin_transaction", exc)
                return
            self.txn_open = True
            self.txn_records = self.txn_bytes = 0
            self._txn_full.clear()
            self._txn_gate.set()
            if not self._stopping:
                try:
                    await asyncio.wait_for(self._txn_full.wait(), interval)
                except TimeoutError:
                    pass
            # From here no record is produced until the next begin: the
            # positions taken now cover exactly what the transaction holds.
            self._txn_gate.clear()
            moved = self._moved()
            t0 = time.monotonic()
            try:
                for (topic, partition), nxt in moved.items():
                    self._produce_control(
                        p,
                        cfg.offsets_topic,
                        progress_key(self.site, cfg.name, topic, partition),
                        encode_progress(nxt),
                        self._offsets_partition,
                    )
                await self._blocking_call(p.commit_transaction, timeout)
            except KafkaException as exc:
                self.txn_open = False
                if not await self._abort(p, exc):
                    return
                continue
            self.txn_open = False
            self.txn.commit_took(time.monotonic() - t0)
            self._txn_backoff.reset()
            self.committed.update(moved)
            for k, nxt in moved.items():
                fw = self.forwarders[k]
                fw.acked = nxt
                while fw.pending and fw.pending[0].offset < nxt:
                    fw.pending.popleft()
                if fw.skip:
                    fw.skip = {o for o in fw.skip if o >= nxt}
            self.txn_records = self.txn_bytes = 0
            self._txn_ended.set()
            if self._stopping:
                return

    async def _abort(self, p: Producer, exc: KafkaException) -> bool:
        """A failed commit: abort and rewind to the committed positions when
        the transaction can be aborted (True), else fail the producer."""
        err: KafkaError = exc.args[0]
        message = f"commit_transaction: {err.name()}: {err.str()}"
        if is_fenced(err) or is_fatal(err) or not (err.txn_requires_abort() or err.retriable()):
            self._txn_error("commit_transaction", exc)
            return False
        try:
            await self._blocking_call(p.abort_transaction, self.cfg.stall_timeout_ms / 1000)
        except KafkaException as exc2:
            self._txn_error("abort_transaction", exc2)
            return False
        self.txn.aborted += 1
        self.txn.last_abort_reason = message
        self.record_error("transaction", f"transaction aborted: {message}")
        log.warning(
            "uplink %s: transaction aborted (%s); resending from the committed positions",
            self.cfg.name,
            message,
        )
        for fw in self.forwarders.values():
            fw.pending.clear()
            fw.rewind()
        self.txn_records = self.txn_bytes = 0
        self._txn_ended.set()
        await asyncio.sleep(self._txn_backoff.next_delay())
        return True

    async def stop(self, timeout: float = 10.0) -> None:
        """Give what is in flight a moment to be acknowledged, then stop."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        for fw in self.forwarders.values():
            if fw.task is not None:
                fw.task.cancel()
        if self.eos and self._txn_task is not None and not self._txn_task.done():
            # Commit what the open transaction holds, then stop.
            self._txn_full.set()
            self._want.set()
            await asyncio.wait([self._txn_task], timeout=timeout)
            self._txn_task.cancel()
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
        if self.state in ("backoff", "starting", "fenced"):
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
        if self.state in ("backoff", "fenced") or self.current_state() == "error":
            return True
        return self.last_failure > max(self.last_success, self.reachable_at)
