"""Reconnect-burst replay bench: many edge sites go offline together, then replay.

Why: the moment that hurts an IoT fleet's central cluster is not steady state but
the minute after an outage, when every site sends its backlog at once while live
traffic continues. This bench reproduces that against any Kafka-compatible
cluster and measures what an operator needs: how long until consumers are caught
up, how far behind they got, what the burst does to live produce latency, which
errors the cluster returned, and whether every record arrived exactly once.

Sites are simulated, not processes: one scheduling loop drives all of them over a
single shared confluent-kafka producer, and each site's outage buffer is an
in-memory deque. That keeps hundreds of sites cheap on a small machine, so the
cluster, not the bench, is what gets measured. Consumer and producer run in this
process, so one monotonic clock times every record (no clock sync).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import struct
import threading
import time
from array import array
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from shoal.tools.bench import (
    BenchError,
    LatencyStats,
    check_arg,
    ensure_topic,
    machine_info,
    percentile,
    topic_partitions,
)
from shoal.tools.options import LIBRDKAFKA_LOG

__all__ = [
    "MIN_RECORD_SIZE",
    "RECONNECT_MODES",
    "LagPoint",
    "ReplayResult",
    "ReplaySpec",
    "run_replay",
    "write_replay_chart",
]

ReconnectMode = Literal["all", "jitter"]
RECONNECT_MODES: tuple[str, ...] = ("all", "jitter")

_NS = 1_000_000_000
# Every value starts with: run nonce, site, sequence, creation time, send time, flags.
# The nonce tells our records from anyone else's on a shared topic.
_HEAD = struct.Struct("!8sIQqqB")
MIN_RECORD_SIZE = _HEAD.size
_REPLAYED = 1
# Sites whose turn comes up in one tick send at most this many backlog records, so
# one site's backlog cannot starve the others or the live traffic in that tick.
_REPLAY_CHUNK = 500
_TICK_S = 0.002
# Below a few ms, 2x p99 is inside scheduler noise on a shared machine.
_MIN_THRESHOLD_MS = 10.0
_DEFAULT_MESSAGE_TIMEOUT_MS = 30_000


@dataclass(frozen=True)
class ReplaySpec:
    """One replay scenario. Times are seconds; `rate` and `replay_rate` are per site.

    Timeline: `before_s` steady, then `offline_s` with every site buffering, then
    reconnect (all at once, or spread uniformly over `jitter_s`), then `after_s`
    steady. Live traffic goes on past `after_s` until every backlog is sent, for at
    most `drain_timeout_s`.
    """

    bootstrap: str
    topic: str
    sites: int = 100
    rate: float = 10.0
    offline_s: float = 10.0
    before_s: float = 5.0
    after_s: float = 15.0
    record_size: int = 256
    partitions: int = 6
    reconnect: ReconnectMode = "all"
    jitter_s: float = 5.0
    replay_rate: float | None = None
    catchup_threshold_ms: float | None = None
    drain_timeout_s: float = 30.0
    extra: Mapping[str, str] = field(default_factory=dict)
    consumer_extra: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        check_arg(self.sites >= 1, "sites must be >= 1")
        check_arg(self.rate > 0, "rate must be > 0")
        check_arg(self.offline_s >= 0, "offline_s must be >= 0")
        check_arg(self.before_s > 0, "before_s must be > 0 (the baseline needs records)")
        check_arg(self.after_s > 0, "after_s must be > 0")
        check_arg(self.record_size >= MIN_RECORD_SIZE, f"record_size must be >= {MIN_RECORD_SIZE}")
        check_arg(self.partitions >= 1, "partitions must be >= 1")
        check_arg(self.reconnect in RECONNECT_MODES, f"reconnect must be one of {RECONNECT_MODES}")
        check_arg(self.jitter_s >= 0, "jitter_s must be >= 0")
        check_arg(self.replay_rate is None or self.replay_rate > 0, "replay_rate must be > 0")
        check_arg(
            self.catchup_threshold_ms is None or self.catchup_threshold_ms > 0,
            "catchup_threshold_ms must be > 0",
        )
        check_arg(self.drain_timeout_s > 0, "drain_timeout_s must be > 0")

    def producer_config(self) -> dict[str, Any]:
        """acks=all and a small linger, like an edge uplink; `extra` overrides."""
        cfg: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "logger": LIBRDKAFKA_LOG,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": _DEFAULT_MESSAGE_TIMEOUT_MS,
            # The replay burst may exceed librdkafka's default 100k queued messages.
            "queue.buffering.max.messages": 1_000_000,
        }
        cfg.update(self.extra)
        return cfg

    def consumer_config(self) -> dict[str, Any]:
        # assign() with explicit offsets never joins the group: works without groups.
        cfg: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "logger": LIBRDKAFKA_LOG,
            "group.id": f"shoal-replay-{os.urandom(4).hex()}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
        }
        cfg.update(self.extra)
        cfg.update(self.consumer_extra)
        return cfg

    def message_timeout_s(self) -> float:
        raw = self.extra.get("message.timeout.ms", self.extra.get("delivery.timeout.ms"))
        try:
            return float(raw) / 1000 if raw is not None else _DEFAULT_MESSAGE_TIMEOUT_MS / 1000
        except ValueError:
            return _DEFAULT_MESSAGE_TIMEOUT_MS / 1000


# --------------------------------------------------------------------------- results


@dataclass
class LagPoint:
    """End-to-end lag of the records received in one second (ms)."""

    t_s: float
    records: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class ReplayResult:
    """One replay run; `to_dict`/`from_dict` round-trip through JSON unchanged.

    Times (`*_at_s`) are seconds since the run started. Invariants when the run is
    clean: produced == acked + errors, received_unique == acked, duplicates == 0,
    lost == 0, gaps == 0.
    """

    bootstrap: str
    topic: str
    started_at: str
    spec: dict[str, Any]
    machine: dict[str, str]
    outage_at_s: float
    reconnect_at_s: float
    last_reconnect_at_s: float
    end_at_s: float
    backlog_records: int
    backlog_left: int
    produced: int
    acked: int
    produce_errors: int
    received: int
    received_unique: int
    duplicates: int
    lost: int
    gaps: int
    foreign: int
    unacked_received: int
    queue_full_waits: int
    errors: dict[str, dict[str, int]]
    baseline_lag_p99_ms: float
    catchup_threshold_ms: float
    caught_up: bool
    catchup_s: float | None
    peak_lag_ms: float
    peak_lag_at_s: float
    lag: list[LagPoint]
    e2e_latency: LatencyStats
    produce_latency_before: LatencyStats
    produce_latency_burst: LatencyStats
    produce_latency_after: LatencyStats
    replay_produce_latency: LatencyStats

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReplayResult:
        kw = dict(d)
        kw["lag"] = [LagPoint(**p) for p in kw["lag"]]
        for name in (
            "e2e_latency",
            "produce_latency_before",
            "produce_latency_burst",
            "produce_latency_after",
            "replay_produce_latency",
        ):
            kw[name] = LatencyStats.from_dict(kw[name])
        return cls(**kw)

    def consistent(self) -> bool:
        """Every acked record arrived exactly once and nothing failed."""
        return (
            self.produce_errors == 0
            and self.backlog_left == 0
            and self.received_unique == self.acked == self.produced
            and self.duplicates == 0
            and self.lost == 0
            and self.gaps == 0
        )

    def summary(self) -> list[tuple[str, str]]:
        """(name, value) rows for the CLI and logs."""
        catch = f"{self.catchup_s:.2f} s" if self.catchup_s is not None else "not caught up"

        def lat(s: LatencyStats) -> str:
            return f"p50 {s.p50_ms:.2f}  p99 {s.p99_ms:.2f}  max {s.max_ms:.2f}  (n={s.count:,})"

        rows = [
            ("target", self.bootstrap),
            ("topic", self.topic),
            (
                "sites x rate",
                f"{self.spec['sites']} x {self.spec['rate']:g} rec/s, offline "
                f"{self.spec['offline_s']:g} s, reconnect {self.spec['reconnect']}",
            ),
            ("backlog replayed", f"{self.backlog_records:,} records"),
            (
                "produced / acked / errors",
                f"{self.produced:,} / {self.acked:,} / {self.produce_errors:,}",
            ),
            (
                "received / unique / duplicates",
                f"{self.received:,} / {self.received_unique:,} / {self.duplicates:,}",
            ),
            ("lost (acked, not received) / gaps", f"{self.lost:,} / {self.gaps:,}"),
            (
                "catch-up time",
                f"{catch} (threshold {self.catchup_threshold_ms:.1f} ms; "
                f"baseline e2e p99 {self.baseline_lag_p99_ms:.1f} ms)",
            ),
            ("peak consumer lag", f"{self.peak_lag_ms / 1000:.2f} s at {self.peak_lag_at_s:.1f} s"),
            ("live produce latency ms, before", lat(self.produce_latency_before)),
            ("live produce latency ms, burst", lat(self.produce_latency_burst)),
            ("live produce latency ms, after", lat(self.produce_latency_after)),
            ("replay produce latency ms", lat(self.replay_produce_latency)),
        ]
        if self.backlog_left:
            rows.append(("backlog never sent (drain timeout)", f"{self.backlog_left:,}"))
        if self.unacked_received:
            rows.append(("received but not acked", f"{self.unacked_received:,}"))
        for side, counts in sorted(self.errors.items()):
            if counts:
                kinds = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
                rows.append((f"errors ({side})", kinds))
        return rows


# --------------------------------------------------------------------------- run


class _Counts:
    """Per-site counters indexed by sequence, one byte each: cheap for millions."""

    __slots__ = ("data",)

    def __init__(self, sites: int, capacity: int) -> None:
        self.data = [bytearray(capacity) for _ in range(sites)]

    def bump(self, site: int, seq: int) -> None:
        row = self.data[site]
        if seq >= len(row):
            row.extend(bytes(max(seq + 1 - len(row), len(row))))
        if row[seq] < 255:
            row[seq] += 1


class _Tail(threading.Thread):
    """Reads every partition from the offsets it had before the run; times each record."""

    def __init__(
        self, consumer: Consumer, topic: str, starts: dict[int, int], nonce: bytes, counts: _Counts
    ) -> None:
        super().__init__(name="replay-consumer", daemon=True)
        self.consumer = consumer
        self.topic = topic
        self.starts = starts
        self.nonce = nonce
        self.counts = counts
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.recv_ns: array[int] = array("q")
        self.lag_ns: array[int] = array("q")
        self.replayed_flag = bytearray()
        self.received = 0
        self.foreign = 0
        self.error_counts: dict[str, int] = {}
        self.failure: BaseException | None = None
        self.hard_stop_ns = 0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # surfaced by the main thread
            self.failure = e
            self.ready.set()

    def _run(self) -> None:
        c = self.consumer
        perf = time.perf_counter_ns
        unpack = _HEAD.unpack_from
        size = _HEAD.size
        nonce = self.nonce
        bump = self.counts.bump
        recv, lags, flags = self.recv_ns, self.lag_ns, self.replayed_flag
        c.assign([TopicPartition(self.topic, p, off) for p, off in self.starts.items()])
        warm = c.consume(num_messages=1, timeout=0.2)  # connect before producing
        self.foreign += sum(1 for m in warm if m.error() is None)
        self.ready.set()
        while not self.stop_event.is_set():
            if self.hard_stop_ns and perf() > self.hard_stop_ns:
                break
            first = c.poll(0.05)
            if first is None:
                continue
            batch: list[Message] = [first, *c.consume(num_messages=2000, timeout=0)]
            now = perf()
            for m in batch:
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        self.error_counts[err.name()] = self.error_counts.get(err.name(), 0) + 1
                    continue
                v = m.value()
                if v is None or len(v) < size:
                    self.foreign += 1
                    continue
                tag, site, seq, created, _sent, fl = unpack(v)
                if tag != nonce:
                    self.foreign += 1
                    continue
                bump(site, seq)
                recv.append(now)
                lags.append(now - created)
                flags.append(fl)
                self.received += 1


class _Site:
    __slots__ = ("backlog", "generated", "phase_ns", "reconnect_ns", "replayed")

    def __init__(self, phase_ns: int, reconnect_ns: int) -> None:
        self.phase_ns = phase_ns
        self.reconnect_ns = reconnect_ns
        self.generated = 0
        self.replayed = 0
        self.backlog: deque[tuple[int, int]] = deque()  # (seq, created_ns), oldest first


class _Sender:
    """The shared producer and its delivery bookkeeping."""

    def __init__(self, spec: ReplaySpec, nonce: bytes, acked: _Counts) -> None:
        self.spec = spec
        self.nonce = nonce
        self.acked = acked
        self.client_errors: dict[str, int] = {}
        cfg = spec.producer_config()
        cfg["error_cb"] = self._on_error
        self.producer = Producer(cfg)
        self.pad = b"x" * (spec.record_size - _HEAD.size)
        self.keys = [b"site-%05d" % i for i in range(spec.sites)]
        self.wall_offset_ns = time.time_ns() - time.perf_counter_ns()
        self.produced = 0
        self.acked_n = 0
        self.errors = 0
        self.error_counts: dict[str, int] = {}
        self.queue_full = 0
        # Live records: send time and send->ack latency; replayed: latency only.
        self.live_sent_ns: array[int] = array("q")
        self.live_lat_ns: array[int] = array("q")
        self.replay_lat_ns: array[int] = array("q")

    def _on_error(self, err: KafkaError) -> None:
        self.client_errors[err.name()] = self.client_errors.get(err.name(), 0) + 1

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        now = time.perf_counter_ns()
        if err is not None:
            self.errors += 1
            self.error_counts[err.name()] = self.error_counts.get(err.name(), 0) + 1
            return
        v = msg.value()
        if v is None:
            return
        _tag, site, seq, _created, sent, fl = _HEAD.unpack_from(v)
        self.acked_n += 1
        self.acked.bump(site, seq)
        if fl & _REPLAYED:
            self.replay_lat_ns.append(now - sent)
        else:
            self.live_sent_ns.append(sent)
            self.live_lat_ns.append(now - sent)

    def send(self, site: int, seq: int, created: int, replayed: bool) -> bool:
        """Hand one record to the client; False when its local queue is full."""
        now = time.perf_counter_ns()
        value = (
            _HEAD.pack(self.nonce, site, seq, created, now, _REPLAYED if replayed else 0) + self.pad
        )
        try:
            self.producer.produce(
                self.spec.topic,
                value,
                self.keys[site],
                on_delivery=self._on_delivery,
                timestamp=(created + self.wall_offset_ns) // 1_000_000,
            )
        except BufferError:
            self.queue_full += 1
            return False
        self.produced += 1
        return True


def _schedule(spec: ReplaySpec, start: int) -> list[_Site]:
    rng = random.Random(spec.seed)
    period = _NS / spec.rate
    reconnect = start + int((spec.before_s + spec.offline_s) * _NS)
    sites = []
    for _ in range(spec.sites):
        jitter = rng.uniform(0, spec.jitter_s) if spec.reconnect == "jitter" else 0.0
        sites.append(_Site(int(rng.uniform(0, period)), reconnect + int(jitter * _NS)))
    return sites


def _drive(spec: ReplaySpec, sender: _Sender, sites: list[_Site], start: int) -> tuple[int, int]:
    """The scheduling loop: every site's live records, buffering and replay.

    Returns (backlog records at reconnect, backlog records never sent).
    """
    perf = time.perf_counter_ns
    poll = sender.producer.poll
    send = sender.send
    rate = spec.rate
    replay_rate = spec.replay_rate
    outage = start + int(spec.before_s * _NS)
    last_reconnect = max(s.reconnect_ns for s in sites)
    live_end = last_reconnect + int(spec.after_s * _NS)
    hard_end = live_end + int(spec.drain_timeout_s * _NS)
    backlog_total = 0
    while True:
        now = perf()
        if now >= hard_end:
            break
        pending = False
        for i, s in enumerate(sites):
            # Live records due by now at this site's steady rate (phase-shifted).
            due = (
                int((now - start - s.phase_ns) * rate / _NS) + 1 if now > start + s.phase_ns else 0
            )
            offline = outage <= now < s.reconnect_ns
            while s.generated < due:
                seq = s.generated
                created = start + s.phase_ns + int(seq * _NS / rate)
                s.generated += 1
                if offline:
                    s.backlog.append((seq, created))
                    backlog_total += 1
                elif not send(i, seq, created, False):
                    # Client queue full: the record waits locally like the backlog.
                    s.backlog.append((seq, created))
                    backlog_total += 1
                    break
            if offline or not s.backlog:
                continue
            budget = _REPLAY_CHUNK
            if replay_rate is not None:
                allowed = int((now - s.reconnect_ns) * replay_rate / _NS) + 1 - s.replayed
                budget = min(budget, allowed)
            backlog = s.backlog
            while budget > 0 and backlog:
                seq, created = backlog[0]
                if not send(i, seq, created, True):
                    break
                backlog.popleft()
                s.replayed += 1
                budget -= 1
            pending = pending or bool(backlog)
        if now >= live_end and not pending:
            break
        poll(_TICK_S)
    left = sum(len(s.backlog) for s in sites)
    return backlog_total, left


def _windows(
    recv: Sequence[int], lags: Sequence[int], start: int, width_ns: int
) -> list[list[int]]:
    out: list[list[int]] = []
    for r, lag in zip(recv, lags, strict=True):
        b = max(0, (r - start) // width_ns)
        while len(out) <= b:
            out.append([])
        out[b].append(lag)
    return out


def run_replay(spec: ReplaySpec, *, quiet: bool = True) -> ReplayResult:
    """Run the scenario in `spec` and return what happened (see ReplayResult)."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    partitions = ensure_topic(spec.bootstrap, spec.topic, spec.partitions, extra=spec.extra)
    nonce = os.urandom(8)
    total_s = spec.before_s + spec.offline_s + spec.jitter_s + spec.after_s
    capacity = int(spec.rate * (total_s + 1)) + 16
    received = _Counts(spec.sites, capacity)
    acked = _Counts(spec.sites, capacity)
    consumer = Consumer(spec.consumer_config())
    tail: _Tail | None = None
    sender: _Sender | None = None
    try:
        parts = topic_partitions(consumer, spec.topic, 15.0)
        starts: dict[int, int] = {}
        for p in parts:
            try:
                _lo, hi = consumer.get_watermark_offsets(TopicPartition(spec.topic, p), 10.0)
            except KafkaException as e:
                raise BenchError(f"ListOffsets for {spec.topic}/{p} failed: {e}") from e
            starts[p] = int(hi)
        tail = _Tail(consumer, spec.topic, starts, nonce, received)
        tail.start()
        if not tail.ready.wait(30.0) or tail.failure is not None:
            raise BenchError(f"replay consumer did not start: {tail.failure}")
        sender = _Sender(spec, nonce, acked)
        try:
            sender.producer.list_topics(spec.topic, timeout=10.0)
        except KafkaException as e:
            raise BenchError(f"cannot reach {spec.bootstrap}: {e}") from e
        start = time.perf_counter_ns()
        bound = total_s + spec.drain_timeout_s * 2 + spec.message_timeout_s() + 60
        tail.hard_stop_ns = start + int(bound * _NS)
        sites = _schedule(spec, start)
        if not quiet:
            print(f"replay: {spec.sites} sites, outage at {spec.before_s:g} s", flush=True)
        backlog_total, backlog_left = _drive(spec, sender, sites, start)
        end = time.perf_counter_ns()
        remaining = sender.producer.flush(spec.message_timeout_s() + 10.0)
        if remaining:
            sender.producer.purge(in_queue=True, in_flight=True, blocking=False)
            sender.producer.flush(5.0)
        unresolved = sender.produced - sender.acked_n - sender.errors
        if unresolved > 0:
            sender.errors += unresolved
            sender.error_counts["NO_DELIVERY_REPORT"] = unresolved
        deadline = time.monotonic() + spec.drain_timeout_s
        while tail.received < sender.acked_n and time.monotonic() < deadline:
            if tail.failure is not None or not tail.is_alive():
                break
            time.sleep(0.02)
        time.sleep(0.3)  # late duplicates, if any, get a chance to show
    finally:
        if tail is not None:
            tail.stop_event.set()
            tail.join(timeout=10.0)
        if tail is None or not tail.is_alive():
            consumer.close()
    if tail.failure is not None:
        raise BenchError(f"replay consumer failed: {tail.failure}")
    assert sender is not None
    return _result(
        spec, started, partitions, sender, tail, sites, start, end, backlog_total, backlog_left
    )


def _result(
    spec: ReplaySpec,
    started: str,
    partitions: int,
    sender: _Sender,
    tail: _Tail,
    sites: list[_Site],
    start: int,
    end: int,
    backlog_total: int,
    backlog_left: int,
) -> ReplayResult:
    outage = start + int(spec.before_s * _NS)
    reconnect = min(s.reconnect_ns for s in sites)
    last_reconnect = max(s.reconnect_ns for s in sites)

    # Exactly-once accounting, per site and sequence.
    duplicates = lost = gaps = unacked_received = unique = 0
    for s, (got_row, ack_row) in enumerate(zip(tail.counts.data, sender.acked.data, strict=True)):
        n = sites[s].generated
        for seq in range(max(n, len(got_row))):
            got = got_row[seq] if seq < len(got_row) else 0
            ack = ack_row[seq] if seq < len(ack_row) else 0
            if got:
                unique += 1
                duplicates += got - 1
                if not ack:
                    unacked_received += 1
            else:
                if ack:
                    lost += 1
                if seq < n:
                    gaps += 1

    # Baseline: lag of records received before the outage, minus the first second
    # (connections and metadata still warming up).
    recv, lags = tail.recv_ns, tail.lag_ns
    warm = start + _NS
    base = sorted(lag for r, lag in zip(recv, lags, strict=True) if warm <= r < outage)
    if not base:
        base = sorted(lag for r, lag in zip(recv, lags, strict=True) if r < outage)
    base_p99_ms = percentile(base, 0.99) / 1e6
    threshold_ms = spec.catchup_threshold_ms or max(2 * base_p99_ms, _MIN_THRESHOLD_MS)

    # Caught up: the first 100 ms window, once every replayed record has arrived,
    # whose p99 lag is back under the threshold.
    n_replayed = sum(s.replayed for s in sites)
    width = _NS // 10
    seen_replay = 0
    catchup_ns: int | None = None
    windows = _windows(recv, lags, start, width)
    flags = tail.replayed_flag
    replay_by_window = [0] * len(windows)
    for r, fl in zip(recv, flags, strict=True):
        if fl & _REPLAYED:
            replay_by_window[max(0, (r - start) // width)] += 1
    for w, bucket in enumerate(windows):
        seen_replay += replay_by_window[w]
        w_end = start + (w + 1) * width
        if w_end <= reconnect or seen_replay < n_replayed or not bucket:
            continue
        if percentile(sorted(bucket), 0.99) / 1e6 <= threshold_ms:
            catchup_ns = max(w_end - reconnect, 0)
            break
    burst_end = reconnect + catchup_ns if catchup_ns is not None else end

    lag_points: list[LagPoint] = []
    for sec, bucket in enumerate(_windows(recv, lags, start, _NS)):
        bucket.sort()
        lag_points.append(
            LagPoint(
                t_s=float(sec),
                records=len(bucket),
                p50_ms=percentile(bucket, 0.5) / 1e6,
                p99_ms=percentile(bucket, 0.99) / 1e6,
                max_ms=(bucket[-1] / 1e6) if bucket else 0.0,
            )
        )
    peak_i = max(range(len(lags)), key=lags.__getitem__, default=None)
    peak_ms = lags[peak_i] / 1e6 if peak_i is not None else 0.0
    peak_at = (recv[peak_i] - start) / _NS if peak_i is not None else 0.0

    before: list[int] = []
    burst: list[int] = []
    after: list[int] = []
    for sent, lat in zip(sender.live_sent_ns, sender.live_lat_ns, strict=True):
        if sent < warm:
            continue
        if sent < outage:
            before.append(lat)
        elif reconnect <= sent < burst_end:
            burst.append(lat)
        elif sent >= burst_end:
            after.append(lat)

    d = dataclasses.asdict(spec)
    d["extra"] = dict(spec.extra)
    d["consumer_extra"] = dict(spec.consumer_extra)
    d["actual_partitions"] = partitions
    return ReplayResult(
        bootstrap=spec.bootstrap,
        topic=spec.topic,
        started_at=started,
        spec=d,
        machine=machine_info(),
        outage_at_s=(outage - start) / _NS,
        reconnect_at_s=(reconnect - start) / _NS,
        last_reconnect_at_s=(last_reconnect - start) / _NS,
        end_at_s=(end - start) / _NS,
        backlog_records=backlog_total,
        backlog_left=backlog_left,
        produced=sender.produced,
        acked=sender.acked_n,
        produce_errors=sender.errors,
        received=tail.received,
        received_unique=unique,
        duplicates=duplicates,
        lost=lost,
        gaps=gaps,
        foreign=tail.foreign,
        unacked_received=unacked_received,
        queue_full_waits=sender.queue_full,
        errors={
            "delivery": dict(sender.error_counts),
            "producer_client": dict(sender.client_errors),
            "consumer": dict(tail.error_counts),
        },
        baseline_lag_p99_ms=base_p99_ms,
        catchup_threshold_ms=threshold_ms,
        caught_up=catchup_ns is not None,
        catchup_s=catchup_ns / _NS if catchup_ns is not None else None,
        peak_lag_ms=peak_ms,
        peak_lag_at_s=peak_at,
        lag=lag_points,
        e2e_latency=LatencyStats.from_ns(lags),
        produce_latency_before=LatencyStats.from_ns(before),
        produce_latency_burst=LatencyStats.from_ns(burst),
        produce_latency_after=LatencyStats.from_ns(after),
        replay_produce_latency=LatencyStats.from_ns(sender.replay_lat_ns),
    )


# --------------------------------------------------------------------------- chart


def write_replay_chart(result: ReplayResult, path: str | Path) -> None:
    """PNG: consumer lag per second (log scale) with the outage shaded, and
    records received per second; drawn from the result alone, so JSON redraws it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise BenchError("PNG charts need matplotlib (pip install matplotlib)") from e

    fig = Figure(figsize=(10, 6.5), layout="constrained")
    ax, bx = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    xs = [p.t_s + 0.5 for p in result.lag]
    for attr, label, style in (
        ("max_ms", "max", ":"),
        ("p99_ms", "p99", "-"),
        ("p50_ms", "p50", "--"),
    ):
        # Seconds without records stay blank rather than drawing a line across them.
        ys = [max(getattr(p, attr), 0.01) if p.records else float("nan") for p in result.lag]
        ax.plot(xs, ys, style, marker=".", label=f"lag {label}")
    for a in (ax, bx):
        a.axvspan(result.outage_at_s, result.reconnect_at_s, color="tab:red", alpha=0.15)
        if result.last_reconnect_at_s > result.reconnect_at_s:
            a.axvspan(
                result.reconnect_at_s, result.last_reconnect_at_s, color="tab:orange", alpha=0.12
            )
        if result.catchup_s is not None:
            a.axvline(result.reconnect_at_s + result.catchup_s, color="tab:green", linestyle="--")
    ax.axhline(result.catchup_threshold_ms, color="grey", linewidth=0.8, linestyle="-.")
    ax.set_yscale("log")
    ax.set_ylabel("end-to-end lag (ms, log)")
    catch = f"{result.catchup_s:.1f} s" if result.catchup_s is not None else "never"
    ax.set_title(
        f"offline (red) {result.reconnect_at_s - result.outage_at_s:g} s; caught up after "
        f"{catch} (green); peak lag {result.peak_lag_ms / 1000:.1f} s",
        fontsize="medium",
    )
    ax.legend(loc="upper left", fontsize="small")
    bx.bar(
        [p.t_s for p in result.lag],
        [p.records for p in result.lag],
        width=1.0,
        align="edge",
        color="tab:blue",
    )
    bx.set_ylabel("records received / s")
    bx.set_xlabel("seconds since start")
    s = result.spec
    fig.suptitle(
        f"replay: {s['sites']} sites x {s['rate']:g} rec/s, reconnect {s['reconnect']} "
        f"@ {result.bootstrap}  ({result.started_at})",
        fontsize="medium",
    )
    fig.savefig(str(path), dpi=100)
