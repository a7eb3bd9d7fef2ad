"""Load bench for any Kafka-compatible cluster: produce, consume and end-to-end.

Everything here talks to the cluster only through confluent-kafka (librdkafka), the
client most deployments use, so the same numbers can be taken against Shoal, tansu
or Apache Kafka. Latencies come from `time.perf_counter_ns` and percentiles are
exact (nearest rank over every sample), because estimated percentiles hide tails.

Units: MB is 10**6 bytes; "bytes" counts key plus value of each record.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import math
import os
import platform
import random
import struct
import sys
import threading
import time
from array import array
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal

import confluent_kafka
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # the admin module does not re-export it

from shoal.tools.options import LIBRDKAFKA_LOG

__all__ = [
    "ACKS",
    "COMPRESSIONS",
    "E2E_MIN_RECORD_SIZE",
    "KEY_DISTS",
    "BenchError",
    "BenchResult",
    "ConsumeSpec",
    "ConsumeStats",
    "LatencyStats",
    "ProduceSpec",
    "ProduceStats",
    "Throughput",
    "ensure_topic",
    "machine_info",
    "percentile",
    "run_consume",
    "run_e2e",
    "run_produce",
    "write_chart",
]

KeyDist = Literal["none", "uniform", "zipf"]
Kind = Literal["produce", "consume", "e2e"]

KEY_DISTS: tuple[str, ...] = ("none", "uniform", "zipf")
ACKS: tuple[str, ...] = ("0", "1", "all", "-1")
COMPRESSIONS: tuple[str, ...] = ("none", "gzip", "snappy", "lz4", "zstd")

MB = 1_000_000
_NS = 1_000_000_000
# e2e payloads start with a run nonce and the send time, so the consumer can tell
# our records from anyone else's and compute latency without clock sync (one process).
_STAMP = struct.Struct("!8sQ")
E2E_MIN_RECORD_SIZE = _STAMP.size
# Pre-drawn key indices, cycled; large enough that the cycle does not show in a bench.
_KEY_SEQ_LEN = 1 << 16
# Histogram bucket edges: 10 per decade from 1 us to 100 s, so a chart can be drawn
# from the JSON alone.
_HIST_EDGES_NS: tuple[int, ...] = tuple(round(10 ** (k / 10) * 1_000) for k in range(81))
_DEFAULT_MESSAGE_TIMEOUT_MS = 30_000

# librdkafka's own log lines (`%3|FAIL|...`, one per reconnect attempt) go
# nowhere: the tools report errors themselves, once, from error callbacks and
# results (an unreachable cluster printed hundreds of lines before its error).


class BenchError(RuntimeError):
    """The bench could not run (cluster unreachable, topic missing, bad spec)."""


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class ProduceSpec:
    """What to produce; also the producer half of an e2e run.

    `rate` is records/s, None for as fast as the client can go. The run stops at
    `duration_s` or after `max_records`, whichever comes first.
    """

    bootstrap: str
    topic: str
    record_size: int = 1024
    key_dist: KeyDist = "none"
    keys: int = 1000
    zipf_s: float = 1.0
    partitions: int = 6
    replication_factor: int = 1
    rate: float | None = None
    duration_s: float = 10.0
    max_records: int | None = None
    acks: str = "all"
    compression: str = "none"
    linger_ms: float = 5.0
    extra: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        check_arg(self.record_size >= 0, "record_size must be >= 0")
        check_arg(self.key_dist in KEY_DISTS, f"key_dist must be one of {KEY_DISTS}")
        check_arg(self.keys >= 1, "keys must be >= 1")
        check_arg(self.zipf_s > 0, "zipf_s must be > 0")
        check_arg(self.partitions >= 1, "partitions must be >= 1")
        check_arg(self.replication_factor >= 1, "replication_factor must be >= 1")
        check_arg(self.rate is None or self.rate > 0, "rate must be > 0 (None = unlimited)")
        check_arg(self.duration_s > 0, "duration_s must be > 0")
        check_arg(self.max_records is None or self.max_records >= 0, "max_records must be >= 0")
        check_arg(self.acks in ACKS, f"acks must be one of {ACKS}")
        check_arg(self.compression in COMPRESSIONS, f"compression must be one of {COMPRESSIONS}")
        check_arg(self.linger_ms >= 0, "linger_ms must be >= 0")

    def client_config(self) -> dict[str, Any]:
        """librdkafka settings; `extra` wins so any default can be overridden."""
        cfg: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "logger": LIBRDKAFKA_LOG,
            "acks": self.acks,
            "compression.type": self.compression,
            "linger.ms": self.linger_ms,
        }
        # librdkafka waits 5 min by default; a bench must end in bounded time.
        if "message.timeout.ms" not in self.extra and "delivery.timeout.ms" not in self.extra:
            cfg["message.timeout.ms"] = _DEFAULT_MESSAGE_TIMEOUT_MS
        cfg.update(self.extra)
        return cfg

    def message_timeout_s(self) -> float:
        raw = self.extra.get("message.timeout.ms", self.extra.get("delivery.timeout.ms"))
        try:
            return float(raw) / 1000 if raw is not None else _DEFAULT_MESSAGE_TIMEOUT_MS / 1000
        except ValueError:
            return _DEFAULT_MESSAGE_TIMEOUT_MS / 1000


@dataclass(frozen=True)
class ConsumeSpec:
    """Read `topic` from the beginning of every partition, without a consumer group.

    Stops at `duration_s`, after `max_records`, or (unless `follow`) `end_grace_s`
    after every partition reached the end it had when the run started.
    """

    bootstrap: str
    topic: str
    duration_s: float = 30.0
    max_records: int | None = None
    follow: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)
    end_grace_s: float = 0.5

    def __post_init__(self) -> None:
        check_arg(self.duration_s > 0, "duration_s must be > 0")
        check_arg(self.end_grace_s >= 0, "end_grace_s must be >= 0")
        check_arg(self.max_records is None or self.max_records >= 0, "max_records must be >= 0")


def check_arg(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


# --------------------------------------------------------------------------- results


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Exact nearest-rank percentile of an ascending sequence (0 if empty)."""
    n = len(sorted_values)
    if n == 0:
        return 0
    rank = max(1, math.ceil(q * n))
    return sorted_values[min(rank, n) - 1]


@dataclass
class LatencyStats:
    """Latency summary in milliseconds, plus a log-bucketed histogram for charts."""

    count: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    # (lower_ms, upper_ms, count) for each non-empty bucket.
    histogram: list[tuple[float, float, int]] = field(default_factory=list)

    @classmethod
    def from_ns(cls, samples: Sequence[int] | array[int]) -> LatencyStats:
        values = sorted(samples)
        if not values:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, [])
        hist: list[tuple[float, float, int]] = []
        lo_idx = 0
        lower = 0
        for edge in (*_HIST_EDGES_NS, max(values[-1], _HIST_EDGES_NS[-1])):
            hi_idx = bisect.bisect_right(values, edge, lo_idx)
            if hi_idx > lo_idx:
                hist.append((lower / 1e6, edge / 1e6, hi_idx - lo_idx))
            lo_idx, lower = hi_idx, edge
            if lo_idx >= len(values):
                break
        return cls(
            count=len(values),
            min_ms=values[0] / 1e6,
            mean_ms=sum(values) / len(values) / 1e6,
            p50_ms=percentile(values, 0.50) / 1e6,
            p95_ms=percentile(values, 0.95) / 1e6,
            p99_ms=percentile(values, 0.99) / 1e6,
            p999_ms=percentile(values, 0.999) / 1e6,
            max_ms=values[-1] / 1e6,
            histogram=hist,
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyStats:
        kw = dict(d)
        kw["histogram"] = [(float(a), float(b), int(c)) for a, b, c in kw.get("histogram", [])]
        return cls(**kw)


@dataclass
class Throughput:
    """Records and bytes over a wall-clock window, with a per-second breakdown."""

    records: int
    bytes: int
    elapsed_s: float
    records_per_s: float
    mb_per_s: float
    per_second_records: list[int] = field(default_factory=list)
    per_second_bytes: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, records: int, nbytes: int, elapsed_ns: int, timeline: _Timeline) -> Throughput:
        secs = max(elapsed_ns, 1) / _NS
        return cls(
            records=records,
            bytes=nbytes,
            elapsed_s=secs,
            records_per_s=records / secs,
            mb_per_s=nbytes / secs / MB,
            per_second_records=list(timeline.records),
            per_second_bytes=list(timeline.bytes),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Throughput:
        return cls(**d)


@dataclass
class ProduceStats:
    """Producer side. Invariant: sent == delivered + errors."""

    sent: int
    delivered: int
    errors: int
    error_counts: dict[str, int]
    queue_full_waits: int
    target_rate: float | None
    send_rate: float
    throughput: Throughput
    latency: LatencyStats

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProduceStats:
        kw = dict(d)
        kw["throughput"] = Throughput.from_dict(kw["throughput"])
        kw["latency"] = LatencyStats.from_dict(kw["latency"])
        return cls(**kw)


@dataclass
class ConsumeStats:
    """Consumer side.

    `foreign` counts e2e records not written by this run. `beyond_end` counts records
    read past the end offsets the broker reported at the start: on a topic nobody
    writes to, anything but 0 means its ListOffsets under-reports the end.
    """

    consumed: int
    errors: int
    error_counts: dict[str, int]
    partitions: int
    end_reached: bool
    foreign: int
    throughput: Throughput
    beyond_end: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConsumeStats:
        kw = dict(d)
        kw["throughput"] = Throughput.from_dict(kw["throughput"])
        return cls(**kw)


@dataclass
class BenchResult:
    """One bench run; `to_dict`/`from_dict` round-trip through JSON unchanged."""

    kind: Kind
    bootstrap: str
    topic: str
    started_at: str
    spec: dict[str, Any]
    machine: dict[str, str]
    produce: ProduceStats | None = None
    consume: ConsumeStats | None = None
    e2e_latency: LatencyStats | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchResult:
        kw = dict(d)
        if kw.get("produce") is not None:
            kw["produce"] = ProduceStats.from_dict(kw["produce"])
        if kw.get("consume") is not None:
            kw["consume"] = ConsumeStats.from_dict(kw["consume"])
        if kw.get("e2e_latency") is not None:
            kw["e2e_latency"] = LatencyStats.from_dict(kw["e2e_latency"])
        return cls(**kw)

    def summary(self) -> list[tuple[str, str]]:
        """Human-readable (name, value) rows, for the CLI and logs."""
        rows: list[tuple[str, str]] = [("target", self.bootstrap), ("topic", self.topic)]
        if self.produce is not None:
            p = self.produce
            rows += [
                (
                    "produce sent / delivered / errors",
                    f"{p.sent:,} / {p.delivered:,} / {p.errors:,}",
                ),
                ("produce throughput", _tput(p.throughput)),
                ("produce latency ms", _lat(p.latency)),
            ]
            if p.error_counts:
                rows.append(("produce error kinds", _kinds(p.error_counts)))
        if self.consume is not None:
            c = self.consume
            rows += [
                ("consumed / errors", f"{c.consumed:,} / {c.errors:,}"),
                ("consume throughput", _tput(c.throughput)),
            ]
            if c.error_counts:
                rows.append(("consume error kinds", _kinds(c.error_counts)))
            if c.beyond_end:
                rows.append(("read past the end offsets listed at start", f"{c.beyond_end:,}"))
        if self.e2e_latency is not None:
            rows.append(("end-to-end latency ms", _lat(self.e2e_latency)))
        return rows

    def error_total(self) -> int:
        return (self.produce.errors if self.produce else 0) + (
            self.consume.errors if self.consume else 0
        )


def _tput(t: Throughput) -> str:
    return (
        f"{t.mb_per_s:,.2f} MB/s, {t.records_per_s:,.0f} records/s "
        f"({t.records:,} records in {t.elapsed_s:.2f} s)"
    )


def _lat(s: LatencyStats) -> str:
    return (
        f"p50 {s.p50_ms:.3f}  p95 {s.p95_ms:.3f}  p99 {s.p99_ms:.3f}  "
        f"p999 {s.p999_ms:.3f}  max {s.max_ms:.3f}  (n={s.count:,})"
    )


def _kinds(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


# --------------------------------------------------------------------------- helpers


def machine_info() -> dict[str, str]:
    """What a reader needs to compare numbers across machines."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 0
    return {
        "nproc": str(cpus),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "confluent_kafka": _version_str(confluent_kafka.version()),
        "librdkafka": _version_str(confluent_kafka.libversion()),
    }


def _version_str(v: object) -> str:
    # (text, int) in most releases, text alone in some.
    return str(v[0]) if isinstance(v, tuple) else str(v)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _spec_dict(spec: ProduceSpec | ConsumeSpec) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    d["extra"] = dict(spec.extra)
    return d


class _Timeline:
    """Records and bytes per one-second bucket since the run started."""

    __slots__ = ("bytes", "records")

    def __init__(self) -> None:
        self.records: list[int] = []
        self.bytes: list[int] = []

    def add(self, bucket: int, records: int, nbytes: int) -> None:
        if bucket >= len(self.records):
            grow = bucket + 1 - len(self.records)
            self.records.extend([0] * grow)
            self.bytes.extend([0] * grow)
        self.records[bucket] += records
        self.bytes[bucket] += nbytes


class _Progress:
    """A live one-line status on stderr; a no-op when quiet or not a terminal."""

    def __init__(self, quiet: bool, interval_s: float = 0.25) -> None:
        self._live: Any = None
        self._interval_ns = int(interval_s * _NS)
        self._next_ns = 0
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live("", console=Console(stderr=True), auto_refresh=False, transient=True)

    @property
    def enabled(self) -> bool:
        return self._live is not None

    def due(self, now_ns: int) -> bool:
        if self._live is None or now_ns < self._next_ns:
            return False
        self._next_ns = now_ns + self._interval_ns
        return True

    def show(self, text: str) -> None:
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(text), refresh=True)

    @contextmanager
    def running(self) -> Iterator[_Progress]:
        if self._live is not None:
            self._live.start()
        try:
            yield self
        finally:
            if self._live is not None:
                self._live.stop()


class _RateMeter:
    """Rate since the last progress update, for the live line."""

    def __init__(self, start_ns: int) -> None:
        self._t = start_ns
        self._records = 0
        self._bytes = 0

    def rate(self, now_ns: int, records: int, nbytes: int) -> tuple[float, float]:
        dt = max(now_ns - self._t, 1) / _NS
        r = (records - self._records) / dt
        b = (nbytes - self._bytes) / dt / MB
        self._t, self._records, self._bytes = now_ns, records, nbytes
        return r, b


def _kafka_error(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        return f"{err.name()}: {err.str()}"
    return str(exc) or type(exc).__name__


def _admin_config(bootstrap: str, extra: Mapping[str, str]) -> dict[str, Any]:
    # Pass connection/security settings through; client-kind specific keys only warn.
    return {"bootstrap.servers": bootstrap, "logger": LIBRDKAFKA_LOG, **extra}


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    replication_factor: int = 1,
    extra: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Create `topic` if missing; return its partition count once every partition has a leader.

    An existing topic is used as it is (its partition count may differ from the one
    asked for; the result records the actual count).
    """
    admin = AdminClient(_admin_config(bootstrap, extra or {}))
    try:  # fail fast, with the client's reason, when nothing answers
        admin.list_topics(timeout=min(10.0, timeout_s))
    except KafkaException as e:
        raise BenchError(f"cannot reach {bootstrap}: {_kafka_error(e)}") from e
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor)],
        request_timeout=timeout_s,
    )
    try:
        futures[topic].result(timeout=timeout_s)
    except FutureTimeout as e:
        raise BenchError(f"no answer from {bootstrap} creating topic {topic!r}") from e
    except KafkaException as e:
        err = e.args[0] if e.args else None
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise BenchError(f"cannot create topic {topic!r}: {_kafka_error(e)}") from e
    deadline = time.monotonic() + timeout_s
    last = "no metadata"
    while True:
        try:
            md = admin.list_topics(topic, timeout=min(5.0, timeout_s))
            t = md.topics.get(topic)
            if t is not None and t.error is None and t.partitions:
                if all(p.leader >= 0 for p in t.partitions.values()):
                    return len(t.partitions)
                last = "partitions without a leader"
            elif t is not None and t.error is not None:
                last = str(t.error)
        except KafkaException as e:
            last = _kafka_error(e)
        if time.monotonic() >= deadline:
            raise BenchError(f"topic {topic!r} not ready on {bootstrap} after {timeout_s}s: {last}")
        time.sleep(0.1)


def topic_partitions(client: Consumer, topic: str, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    last = "no metadata"
    while True:
        try:
            md = client.list_topics(topic, timeout=min(5.0, timeout_s))
            t = md.topics.get(topic)
            if t is not None and t.error is None and t.partitions:
                return sorted(t.partitions)
            if t is not None and t.error is not None:
                last = str(t.error)
        except KafkaException as e:
            last = _kafka_error(e)
        if time.monotonic() >= deadline:
            raise BenchError(f"topic {topic!r} not readable: {last}")
        time.sleep(0.1)


def _watermarks(client: Consumer, topic: str, parts: Sequence[int]) -> dict[int, tuple[int, int]]:
    out: dict[int, tuple[int, int]] = {}
    for p in parts:
        try:
            lo, hi = client.get_watermark_offsets(TopicPartition(topic, p), timeout=10.0)
        except KafkaException as e:
            raise BenchError(f"ListOffsets for {topic}/{p} failed: {_kafka_error(e)}") from e
        out[p] = (int(lo), int(hi))
    return out


def _consumer_config(bootstrap: str, extra: Mapping[str, str]) -> dict[str, Any]:
    # librdkafka insists on a group.id, but with assign() and explicit offsets it never
    # joins or commits, so this works against brokers without consumer groups.
    cfg: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "logger": LIBRDKAFKA_LOG,
        "group.id": f"shoal-bench-{os.urandom(4).hex()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
    }
    cfg.update(extra)
    return cfg


def _next_batch(consumer: Consumer, max_n: int, timeout_s: float) -> list[Message]:
    """Wait for one record, then take whatever else is already queued.

    `Consumer.consume(n, timeout)` waits for n records or the timeout, which would
    add up to the timeout to every measured latency at low rates.
    """
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    if max_n <= 1:
        return [first]
    return [first, *consumer.consume(num_messages=max_n - 1, timeout=0)]


def _key_sequence(spec: ProduceSpec) -> list[bytes] | None:
    """Keys to cycle through, drawn once up front so the send loop stays cheap."""
    if spec.key_dist == "none":
        return None
    width = len(str(spec.keys - 1))
    names = [b"key-%0*d" % (width, i) for i in range(spec.keys)]
    rng = random.Random(spec.seed)
    if spec.key_dist == "uniform":
        idx = [rng.randrange(spec.keys) for _ in range(_KEY_SEQ_LEN)]
    else:
        weights = [1.0 / (i + 1) ** spec.zipf_s for i in range(spec.keys)]
        cum = list(itertools.accumulate(weights))
        idx = rng.choices(range(spec.keys), cum_weights=cum, k=_KEY_SEQ_LEN)
    return [names[i] for i in idx]


def _payload(size: int, seed: int) -> bytes:
    # Random capital letters: compressible about as much as text, like Kafka's own
    # perf tool, so compression settings are not measured on an unrealistic extreme.
    rng = random.Random(seed)
    return bytes(rng.choices(range(65, 91), k=size))


# --------------------------------------------------------------------------- produce


class _ProducerRun:
    """The send loop shared by produce and e2e."""

    def __init__(self, spec: ProduceSpec, *, stamp: bool, nonce: bytes, batch: bool = True) -> None:
        self.spec = spec
        self.batch = batch
        self.stamp = stamp
        self.nonce = nonce
        self.producer = Producer(spec.client_config())
        self.keys = _key_sequence(spec)
        self.value = _payload(spec.record_size, spec.seed)
        self.latencies: array[int] = array("q")
        self.timeline = _Timeline()
        self.sent = 0
        self.delivered = 0
        self.errors = 0
        self.bytes = 0
        self.error_counts: dict[str, int] = {}
        self.queue_full = 0
        self.start_ns = 0
        self.send_end_ns = 0
        self.last_event_ns = 0

    def _on_delivery(self, t0: int, nbytes: int, err: KafkaError | None, _msg: Message) -> None:
        now = time.perf_counter_ns()
        self.last_event_ns = now
        if err is not None:
            self.errors += 1
            name = err.name()
            self.error_counts[name] = self.error_counts.get(name, 0) + 1
            return
        self.delivered += 1
        self.bytes += nbytes
        self.latencies.append(now - t0)
        self.timeline.add((now - self.start_ns) // _NS, 1, nbytes)

    def warm_up(self) -> None:
        """Fetch metadata and connect before the clock starts."""
        try:
            self.producer.list_topics(self.spec.topic, timeout=10.0)
        except KafkaException as e:
            raise BenchError(f"cannot reach {self.spec.bootstrap}: {_kafka_error(e)}") from e

    def run(self, progress: _Progress, label: str, extra_status: Any = None) -> None:
        spec = self.spec
        produce = self.producer.produce
        poll = self.producer.poll
        topic = spec.topic
        keys = self.keys
        mask = (len(keys) - 1) if keys else 0
        klen = len(keys[0]) if keys else 0  # every key has the same width
        # produce_batch (newer confluent-kafka) costs a third of per-record produce()
        # calls, which leaves more of a shared machine to the broker being measured.
        produce_batch = getattr(self.producer, "produce_batch", None) if self.batch else None
        value = self.value
        stamp = self.stamp
        tail = value[_STAMP.size :] if stamp else b""
        pack = _STAMP.pack
        nonce = self.nonce
        on_delivery = self._on_delivery
        perf = time.perf_counter_ns
        rate = spec.rate
        max_records = spec.max_records if spec.max_records is not None else sys.maxsize

        start = perf()
        self.start_ns = start
        deadline = start + int(spec.duration_s * _NS)
        meter = _RateMeter(start)
        n = 0
        while True:
            now = perf()
            if now >= deadline or n >= max_records:
                break
            if progress.due(now):
                r, mbs = meter.rate(now, self.delivered, self.bytes)
                status = (
                    f"{label} {(now - start) / _NS:5.1f}/{spec.duration_s:g}s  sent {n:,}  "
                    f"ok {self.delivered:,}  err {self.errors:,}  {r:,.0f} rec/s  {mbs:,.1f} MB/s"
                )
                if extra_status is not None:
                    status += extra_status()
                progress.show(status)
            if rate is not None:
                due = min(int((now - start) * rate / _NS) + 1, max_records)
                todo = due - n
                if todo <= 0:
                    # Wait in poll() so delivery callbacks run (and are timed) promptly;
                    # librdkafka's timeout has 1 ms granularity, so never ask for less.
                    wait_s = (start + n * _NS / rate - now) / _NS
                    poll(min(max(wait_s, 0.001), 0.05))
                    continue
                todo = min(todo, 1000)
            else:
                todo = min(64, max_records - n)
            if produce_batch is not None:
                # One call enqueues the whole burst: every record in it is handed to
                # the client at the same instant t0, so one stamp and one callback fit.
                t0 = perf()
                v = pack(nonce, t0) + tail if stamp else value
                if keys is not None:
                    msgs = [{"value": v, "key": keys[(n + i) & mask]} for i in range(todo)]
                else:
                    msgs = [{"value": v} for _ in range(todo)]
                ok = produce_batch(topic, msgs, on_delivery=partial(on_delivery, t0, len(v) + klen))
                n += ok
                if ok < todo:  # local queue full: the client is ahead of the cluster
                    self.queue_full += 1
                    poll(0.001)
            else:
                for _ in range(todo):
                    key = keys[n & mask] if keys is not None else None
                    t0 = perf()
                    v = pack(nonce, t0) + tail if stamp else value
                    try:
                        produce(topic, v, key, on_delivery=partial(on_delivery, t0, len(v) + klen))
                    except BufferError:
                        # Local queue full: back off briefly while serving callbacks;
                        # this is not an error.
                        self.queue_full += 1
                        poll(0.001)
                        break
                    n += 1
            poll(0)
        self.sent = n
        self.send_end_ns = perf()

    def finish(self) -> None:
        """Wait for every outstanding delivery report, bounded by the message timeout."""
        timeout = self.spec.message_timeout_s() + 10.0
        remaining = self.producer.flush(timeout)
        if remaining > 0:
            self.producer.purge(in_queue=True, in_flight=True, blocking=False)
            self.producer.flush(5.0)
        unresolved = self.sent - self.delivered - self.errors
        if unresolved > 0:  # no report at all: count them, so sent == delivered + errors
            self.errors += unresolved
            self.error_counts["NO_DELIVERY_REPORT"] = unresolved
        self.last_event_ns = max(self.last_event_ns, self.send_end_ns)

    def stats(self) -> ProduceStats:
        spec = self.spec
        send_window = max(self.send_end_ns - self.start_ns, 1) / _NS
        return ProduceStats(
            sent=self.sent,
            delivered=self.delivered,
            errors=self.errors,
            error_counts=dict(self.error_counts),
            queue_full_waits=self.queue_full,
            target_rate=spec.rate,
            send_rate=self.sent / send_window,
            throughput=Throughput.of(
                self.delivered, self.bytes, self.last_event_ns - self.start_ns, self.timeline
            ),
            latency=LatencyStats.from_ns(self.latencies),
        )

    def close(self) -> None:
        close = getattr(self.producer, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # best effort: the numbers are already taken
                pass


def run_produce(spec: ProduceSpec, *, quiet: bool = False) -> BenchResult:
    """Produce for `spec.duration_s` and measure throughput and send->ack latency."""
    started = _now_iso()
    partitions = ensure_topic(
        spec.bootstrap,
        spec.topic,
        spec.partitions,
        replication_factor=spec.replication_factor,
        extra=spec.extra,
    )
    run = _ProducerRun(spec, stamp=False, nonce=b"\0" * 8)
    try:
        run.warm_up()
        progress = _Progress(quiet)
        with progress.running():
            run.run(progress, "produce")
            if progress.enabled:
                waiting = run.sent - run.delivered - run.errors
                progress.show(f"produce: waiting for {waiting:,} acks")
            run.finish()
    finally:
        run.close()
    d = _spec_dict(spec)
    d["actual_partitions"] = partitions
    return BenchResult(
        kind="produce",
        bootstrap=spec.bootstrap,
        topic=spec.topic,
        started_at=started,
        spec=d,
        machine=machine_info(),
        produce=run.stats(),
    )


# --------------------------------------------------------------------------- consume


def run_consume(spec: ConsumeSpec, *, quiet: bool = False) -> BenchResult:
    """Read the topic from the beginning and measure consume throughput."""
    started = _now_iso()
    consumer = Consumer(_consumer_config(spec.bootstrap, spec.extra))
    try:
        parts = topic_partitions(consumer, spec.topic, 15.0)
        marks = _watermarks(consumer, spec.topic, parts)
        ends = {p: hi for p, (lo, hi) in marks.items() if hi > lo}
        consumer.assign([TopicPartition(spec.topic, p, OFFSET_BEGINNING) for p in parts])
        stats = _consume_loop(consumer, spec, ends, quiet)
    finally:
        consumer.close()
    stats.partitions = len(parts)
    d = _spec_dict(spec)
    d["end_offsets"] = {str(p): hi for p, (_, hi) in marks.items()}
    return BenchResult(
        kind="consume",
        bootstrap=spec.bootstrap,
        topic=spec.topic,
        started_at=started,
        spec=d,
        machine=machine_info(),
        consume=stats,
    )


def _consume_loop(
    consumer: Consumer, spec: ConsumeSpec, ends: dict[int, int], quiet: bool
) -> ConsumeStats:
    perf = time.perf_counter_ns
    max_records = spec.max_records if spec.max_records is not None else sys.maxsize
    pending = set() if spec.follow else set(ends)
    timeline = _Timeline()
    n = nbytes = errors = 0
    error_counts: dict[str, int] = {}
    start = perf()
    deadline = start + int(spec.duration_s * _NS)
    end_ns = start
    end_reached = False
    beyond_end = 0
    progress = _Progress(quiet)
    meter = _RateMeter(start)
    with progress.running():
        while True:
            now = perf()
            if not spec.follow and not pending and not end_reached:
                # Every partition reached the end offset ListOffsets gave at the start.
                # Read on briefly: a broker that under-reports its end offsets would
                # otherwise make its last batches look missing.
                end_reached = True
                deadline = min(deadline, now + int(spec.end_grace_s * _NS))
            if now >= deadline or n >= max_records:
                break
            if progress.due(now):
                r, mbs = meter.rate(now, n, nbytes)
                progress.show(
                    f"consume {(now - start) / _NS:5.1f}/{spec.duration_s:g}s  {n:,} records  "
                    f"err {errors:,}  {r:,.0f} rec/s  {mbs:,.1f} MB/s"
                )
            batch = _next_batch(consumer, min(1000, max_records - n), 0.1)
            if not batch:
                continue
            now = perf()
            got = got_bytes = 0
            for m in batch:
                err = m.error()
                if err is not None:
                    errors += 1
                    error_counts[err.name()] = error_counts.get(err.name(), 0) + 1
                    continue
                got += 1
                value = m.value()
                key = m.key()
                got_bytes += (len(value) if value is not None else 0) + (
                    len(key) if key is not None else 0
                )
                if pending:
                    p = m.partition()
                    off = m.offset()
                    if p in pending and off is not None and off + 1 >= ends[p]:
                        pending.discard(p)
            if end_reached:
                beyond_end += got
            if got:
                n += got
                nbytes += got_bytes
                end_ns = now
                timeline.add((now - start) // _NS, got, got_bytes)
    if not end_reached and n < max_records:
        end_ns = perf()  # stopped by the clock: the whole window counts
    # else the window ends with the last record: the grace period is not counted
    return ConsumeStats(
        consumed=n,
        errors=errors,
        error_counts=error_counts,
        partitions=0,
        end_reached=end_reached,
        foreign=0,
        beyond_end=beyond_end,
        throughput=Throughput.of(n, nbytes, end_ns - start, timeline),
    )


# --------------------------------------------------------------------------- e2e


class _TailConsumer(threading.Thread):
    """Tails the topic from the offsets it had before producing; times each record."""

    def __init__(
        self,
        consumer: Consumer,
        topic: str,
        starts: dict[int, int],
        nonce: bytes,
        hard_stop_s: float,
    ) -> None:
        super().__init__(name="bench-e2e-consumer", daemon=True)
        self.consumer = consumer
        self.topic = topic
        self.starts = starts
        self.nonce = nonce
        self.hard_stop_ns = time.perf_counter_ns() + int(hard_stop_s * _NS)
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.latencies: array[int] = array("q")
        self.timeline = _Timeline()
        self.ours = 0
        self.foreign = 0
        self.bytes = 0
        self.errors = 0
        self.error_counts: dict[str, int] = {}
        self.start_ns = time.perf_counter_ns()
        self.last_ns = self.start_ns
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # surfaced by the main thread
            self.failure = e
            self.ready.set()

    def _run(self) -> None:
        c = self.consumer
        perf = time.perf_counter_ns
        unpack = _STAMP.unpack_from
        size = _STAMP.size
        nonce = self.nonce
        c.assign([TopicPartition(self.topic, p, off) for p, off in self.starts.items()])
        # Connect before the producer starts; nothing of this run exists yet.
        warm = c.consume(num_messages=1, timeout=0.2)
        self.foreign += sum(1 for m in warm if m.error() is None)
        self.ready.set()
        while not self.stop_event.is_set() and perf() < self.hard_stop_ns:
            batch = _next_batch(c, 1000, 0.1)
            if not batch:
                continue
            now = perf()
            got = got_bytes = 0
            for m in batch:
                err = m.error()
                if err is not None:
                    self.errors += 1
                    self.error_counts[err.name()] = self.error_counts.get(err.name(), 0) + 1
                    continue
                v = m.value()
                if v is None or len(v) < size:
                    self.foreign += 1
                    continue
                tag, sent_ns = unpack(v)
                if tag != nonce:
                    self.foreign += 1
                    continue
                key = m.key()
                got += 1
                got_bytes += len(v) + (len(key) if key is not None else 0)
                self.latencies.append(now - sent_ns)
            if got:
                self.ours += got
                self.bytes += got_bytes
                self.last_ns = now
                self.timeline.add((now - self.start_ns) // _NS, got, got_bytes)


def run_e2e(
    spec: ProduceSpec,
    *,
    consumer_extra: Mapping[str, str] | None = None,
    drain_timeout_s: float = 10.0,
    quiet: bool = False,
) -> BenchResult:
    """Produce at `spec.rate` while a consumer tails the topic; time each record end to end.

    Both sides run in this process, so one monotonic clock times the record: no
    clock synchronisation is involved.
    """
    if spec.rate is None:
        raise ValueError("e2e needs a fixed rate")
    if spec.record_size < E2E_MIN_RECORD_SIZE:
        raise ValueError(f"e2e needs record_size >= {E2E_MIN_RECORD_SIZE} (nonce + timestamp)")
    started = _now_iso()
    partitions = ensure_topic(
        spec.bootstrap,
        spec.topic,
        spec.partitions,
        replication_factor=spec.replication_factor,
        extra=spec.extra,
    )
    nonce = os.urandom(8)
    cextra = dict(consumer_extra or {})
    consumer = Consumer(_consumer_config(spec.bootstrap, cextra))
    run: _ProducerRun | None = None
    tail: _TailConsumer | None = None
    try:
        parts = topic_partitions(consumer, spec.topic, 15.0)
        starts = {p: hi for p, (_, hi) in _watermarks(consumer, spec.topic, parts).items()}
        hard_stop = spec.duration_s + drain_timeout_s + spec.message_timeout_s() + 60.0
        tail = _TailConsumer(consumer, spec.topic, starts, nonce, hard_stop)
        tail.start()
        if not tail.ready.wait(30.0):
            raise BenchError("e2e consumer did not start within 30 s")
        if tail.failure is not None:
            raise BenchError(f"e2e consumer failed: {_kafka_error(tail.failure)}")
        run = _ProducerRun(spec, stamp=True, nonce=nonce)
        run.warm_up()
        progress = _Progress(quiet)
        t = tail
        with progress.running():
            tail.start_ns = time.perf_counter_ns()  # one time origin for both timelines
            run.run(progress, "e2e", lambda: f"  recv {t.ours:,}")
            run.finish()
            deadline = time.monotonic() + drain_timeout_s
            while tail.ours < run.delivered and time.monotonic() < deadline:
                if tail.failure is not None or not tail.is_alive():
                    break
                if progress.due(time.perf_counter_ns()):
                    progress.show(f"e2e: draining, received {tail.ours:,} of {run.delivered:,}")
                time.sleep(0.02)
    finally:
        if tail is not None:
            tail.stop_event.set()
            tail.join(timeout=10.0)
        if run is not None:
            run.close()
        if tail is None or not tail.is_alive():
            consumer.close()
    if tail.failure is not None:
        raise BenchError(f"e2e consumer failed: {_kafka_error(tail.failure)}")
    consume = ConsumeStats(
        consumed=tail.ours,
        errors=tail.errors,
        error_counts=dict(tail.error_counts),
        partitions=len(parts),
        end_reached=tail.ours >= run.delivered,
        foreign=tail.foreign,
        throughput=Throughput.of(tail.ours, tail.bytes, tail.last_ns - run.start_ns, tail.timeline),
    )
    d = _spec_dict(spec)
    d["actual_partitions"] = partitions
    d["consumer_extra"] = cextra
    d["drain_timeout_s"] = drain_timeout_s
    return BenchResult(
        kind="e2e",
        bootstrap=spec.bootstrap,
        topic=spec.topic,
        started_at=started,
        spec=d,
        machine=machine_info(),
        produce=run.stats(),
        consume=consume,
        e2e_latency=LatencyStats.from_ns(tail.latencies),
    )


# --------------------------------------------------------------------------- chart


def write_chart(result: BenchResult, path: str | Path) -> None:
    """PNG: throughput per second, and latency histograms with p50/p99/p999 marked.

    Drawn from the result alone (no raw samples), so a chart can be redrawn from JSON.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError as e:  # optional: only charts need it
        raise BenchError("PNG charts need matplotlib (pip install matplotlib)") from e

    lats: list[tuple[str, LatencyStats]] = []
    if result.produce is not None and result.produce.latency.count:
        lats.append(("produce (send -> ack)", result.produce.latency))
    if result.e2e_latency is not None and result.e2e_latency.count:
        lats.append(("end to end", result.e2e_latency))
    ncols = 1 + len(lats)
    fig = Figure(figsize=(6.0 * ncols, 4.2), layout="constrained")
    ax = fig.add_subplot(1, ncols, 1)
    series: list[tuple[str, Throughput]] = []
    if result.produce is not None:
        series.append(("produced (acked)", result.produce.throughput))
    if result.consume is not None:
        series.append(("consumed", result.consume.throughput))
    for label, tp in series:
        ys = [b / MB for b in tp.per_second_bytes]
        if ys:
            # The last bucket usually covers part of a second: show its rate, not its sum.
            last = tp.elapsed_s - (len(ys) - 1)
            if 0.05 < last < 1.0:
                ys[-1] /= last
            ax.stairs(ys, range(len(ys) + 1), label=label)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("MB/s")
    ax.set_title("throughput per second")
    ax.set_ylim(bottom=0)
    if series:
        ax.legend(loc="lower right")
    for i, (label, st) in enumerate(lats, start=2):
        hx = fig.add_subplot(1, ncols, i)
        lowers = [max(lo, up / 10**0.1) for lo, up, _ in st.histogram]
        widths = [up - lo for lo, (_, up, _) in zip(lowers, st.histogram, strict=True)]
        counts = [c for _, _, c in st.histogram]
        hx.bar(lowers, counts, width=widths, align="edge", color="tab:blue", alpha=0.7)
        hx.set_xscale("log")
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        hx.xaxis.set_major_formatter(plain)
        if st.histogram and st.histogram[-1][1] < 30 * lowers[0]:  # narrow: label minor ticks
            hx.xaxis.set_minor_formatter(plain)
        for q, value, style in (
            ("p50", st.p50_ms, "-"),
            ("p99", st.p99_ms, "--"),
            ("p999", st.p999_ms, ":"),
        ):
            hx.axvline(value, color="tab:red", linestyle=style, label=f"{q} {value:.2f} ms")
        hx.set_xlabel("latency (ms, log scale)")
        hx.set_ylabel("records")
        hx.set_title(f"{label} latency")
        hx.legend(loc="best", fontsize="small")
    fig.suptitle(
        f"{result.kind}: {result.topic} @ {result.bootstrap}\n{result.started_at}",
        fontsize="medium",
    )
    fig.savefig(str(path), dpi=100)
