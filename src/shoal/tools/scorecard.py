"""Readiness scorecard: short pass/fail checks against any Kafka-compatible cluster.

Why: "Kafka-compatible" means different things per product. Before moving a
fleet onto a cluster, an operator wants to know which client settings and
semantics actually work there: every check drives the real client
(confluent-kafka) and records the evidence, not only a verdict. Checks make
their own topics (scorecard-<run>-...) and delete them at the end.

A check passes, fails, or is skipped when the cluster refuses an optional
feature (transactions). Each runs under its own timeout; one that hangs fails
and the rest go on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

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

from shoal.tools.bench import BenchError, ensure_topic
from shoal.tools.kafka_proxy import KafkaProxy
from shoal.tools.options import LIBRDKAFKA_LOG

if TYPE_CHECKING:
    from shoal.tools.scorecard_security import SecurityOptions

__all__ = ["CheckResult", "Scorecard", "check_ids", "run_scorecard"]

Status = Literal["pass", "fail", "skip"]


class CheckFailed(Exception):
    """A check's verdict is fail; the message is the evidence."""


class Unsupported(Exception):
    """The cluster refuses an optional feature; the check is skipped."""


@dataclass
class CheckResult:
    id: str
    title: str
    status: Status
    mandatory: bool
    evidence: str
    seconds: float


@dataclass
class Scorecard:
    """All results; `passed` is what the exit code reports."""

    bootstrap: str
    started_at: str
    seconds: float
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        # A skipped mandatory check (security checks without their options)
        # is not a failure.
        return all(r.status != "fail" for r in self.results if r.mandatory)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scorecard:
        kw = {k: v for k, v in d.items() if k != "passed"}
        kw["results"] = [CheckResult(**r) for r in kw["results"]]
        return cls(**kw)

    def get(self, check_id: str) -> CheckResult:
        for r in self.results:
            if r.id == check_id:
                return r
        raise KeyError(check_id)


# --------------------------------------------------------------------------- context


class _Ctx:
    """What every check gets: the target, client settings and a deadline."""

    def __init__(
        self,
        bootstrap: str,
        extra: Mapping[str, str],
        run: str,
        security: SecurityOptions | None = None,
    ) -> None:
        from shoal.tools.scorecard_security import SecurityOptions

        self.bootstrap = bootstrap
        self.extra = dict(extra)
        self.security = security or SecurityOptions()
        self.run = run
        self.deadline = 0.0
        self.topics: list[str] = []
        self._n = 0
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return max(0.1, self.deadline - time.monotonic())

    def topic(self, partitions: int = 1, bootstrap: str | None = None) -> str:
        with self._lock:
            self._n += 1
            name = f"scorecard-{self.run}-{self._n}"
            self.topics.append(name)
        try:
            ensure_topic(
                bootstrap or self.bootstrap,
                name,
                partitions,
                extra=self.extra,
                timeout_s=min(10.0, self.remaining()),
            )
        except BenchError as e:
            raise CheckFailed(f"cannot create topic: {e}") from e
        return name

    def base(self, bootstrap: str | None = None) -> dict[str, Any]:
        # Client logs would drown the table; errors reach us through callbacks.
        return {
            "bootstrap.servers": bootstrap or self.bootstrap,
            "logger": LIBRDKAFKA_LOG,
            **self.extra,
        }

    def producer(self, bootstrap: str | None = None, **cfg: Any) -> Producer:
        conf = {
            **self.base(bootstrap),
            "linger.ms": 5,
            "message.timeout.ms": int(min(15.0, self.remaining()) * 1000),
        }
        conf.update(cfg)
        return Producer(conf)

    def consumer(self, bootstrap: str | None = None, **cfg: Any) -> Consumer:
        conf = {
            **self.base(bootstrap),
            "group.id": f"scorecard-{self.run}-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
        }
        conf.update(cfg)
        return Consumer(conf)


Rec = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]] | None]


def _produce(
    p: Producer, topic: str, recs: list[Rec], ctx: _Ctx, *, partition: int | None = None
) -> list[tuple[int, int]]:
    """Produce and wait for every ack; (partition, offset) per record, in send order."""
    out: list[tuple[int, int] | None] = [None] * len(recs)
    errors: list[str] = []

    def cb(i: int) -> Callable[[KafkaError | None, Message], None]:
        def done(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err.name())
            else:
                out[i] = (int(msg.partition() or 0), int(msg.offset() or 0))

        return done

    for i, (k, v, h) in enumerate(recs):
        kw: dict[str, Any] = {"on_delivery": cb(i)}
        if h is not None:
            kw["headers"] = h
        if partition is not None:
            kw["partition"] = partition
        p.produce(topic, v, k, **kw)
        p.poll(0)
    left = p.flush(ctx.remaining())
    if errors:
        raise CheckFailed(f"{len(errors)} delivery errors: {sorted(set(errors))}")
    if left:
        raise CheckFailed(f"{left} records not acknowledged in time")
    return [o for o in out if o is not None]


def _read(c: Consumer, want: int, ctx: _Ctx, *, grace_s: float = 0.3) -> list[Message]:
    """Poll until `want` records arrived (or the deadline), then `grace_s` more so
    that extra copies, if any, show up too."""
    got: list[Message] = []
    end = ctx.deadline
    grace_end: float | None = None
    while time.monotonic() < end:
        if len(got) >= want:
            if grace_end is None:
                grace_end = time.monotonic() + grace_s
            if time.monotonic() >= grace_end:
                break
        n = want - len(got) if len(got) < want else 1000  # never read past `want` early
        for m in c.consume(num_messages=n, timeout=0.1):
            err = m.error()
            if err is None:
                got.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                raise CheckFailed(f"consume error {err.name()}: {err.str()}")
    return got


def _read_topic(ctx: _Ctx, topic: str, partitions: int, want: int, **cfg: Any) -> list[Message]:
    c = ctx.consumer(**cfg)
    try:
        ends = {}
        for p in range(partitions):
            _lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5.0)
            ends[p] = int(hi)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        # Read up to the high watermarks, so duplicates cannot stand in for missing records.
        got: list[Message] = []
        while time.monotonic() < ctx.deadline and any(e > 0 for e in ends.values()):
            for m in c.consume(num_messages=1000, timeout=0.1):
                err = m.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise CheckFailed(f"consume error {err.name()}: {err.str()}")
                    continue
                got.append(m)
                part = int(m.partition() or 0)
                if int(m.offset() or 0) + 1 >= ends.get(part, 0):
                    ends[part] = 0
        if len(got) < want:
            raise CheckFailed(f"read {len(got)} records up to the high watermarks, want {want}")
        return got
    finally:
        c.close()


def _hdrs(m: Message) -> list[tuple[str, bytes | None]]:
    return cast(list[tuple[str, bytes | None]], list(m.headers() or []))


def _round_trip(
    ctx: _Ctx, recs: list[Rec], *, partitions: int = 1, pcfg: Mapping[str, Any] | None = None
) -> str:
    topic = ctx.topic(partitions)
    p = ctx.producer(**(pcfg or {}))
    acks = _produce(p, topic, recs, ctx)
    got = _read_topic(ctx, topic, partitions, len(recs))
    if len(got) != len(recs):
        raise CheckFailed(f"sent {len(recs)}, read back {len(got)}")
    by_pos = {(m.partition(), m.offset()): m for m in got}
    for i, ((k, v, h), pos) in enumerate(zip(recs, acks, strict=True)):
        m = by_pos.get(pos)
        if m is None:
            raise CheckFailed(f"record {i} acked at {pos} but not read there")
        if m.key() != k or m.value() != v:
            raise CheckFailed(f"record {i} at {pos}: key/value differ ({m.key()!r}, {m.value()!r})")
        if h is not None and _hdrs(m) != h:
            raise CheckFailed(f"record {i}: headers {_hdrs(m)!r} != sent {h!r}")
    return f"{len(recs)} records produced and read back identical"


# --------------------------------------------------------------------------- checks


def check_metadata(ctx: _Ctx) -> str:
    admin = AdminClient(ctx.base())
    try:
        md = admin.list_topics(timeout=min(10.0, ctx.remaining()))
    except KafkaException as e:
        raise CheckFailed(f"no metadata: {e}") from e
    brokers = ", ".join(f"{b.id}@{b.host}:{b.port}" for b in md.brokers.values())
    return f"cluster {md.cluster_id}, controller {md.controller_id}, brokers [{brokers}]"


def check_admin(ctx: _Ctx) -> str:
    admin = AdminClient(ctx.base())
    name = ctx.topic(3)
    md = admin.list_topics(name, timeout=5.0).topics.get(name)
    if md is None or len(md.partitions) != 3:
        raise CheckFailed(f"created with 3 partitions, metadata shows {md and len(md.partitions)}")
    fut = admin.delete_topics([name], request_timeout=10.0)[name]
    try:
        fut.result(timeout=ctx.remaining())
    except KafkaException as e:
        raise CheckFailed(f"DeleteTopics failed: {e}") from e
    t0 = time.monotonic()
    while time.monotonic() < ctx.deadline:
        if name not in admin.list_topics(timeout=5.0).topics:
            ctx.topics.remove(name)
            return (
                f"created {name} (3 partitions), deleted; gone from metadata after "
                f"{time.monotonic() - t0:.2f} s"
            )
        time.sleep(0.1)
    raise CheckFailed("topic still listed after DeleteTopics")


def _simple(n: int) -> list[Rec]:
    return [(b"k%d" % (i % 5), b"value-%d-" % i + b"x" * 200, None) for i in range(n)]


def check_acks_all(ctx: _Ctx) -> str:
    return "acks=all: " + _round_trip(ctx, _simple(100), partitions=2, pcfg={"acks": "all"})


def check_acks_1(ctx: _Ctx) -> str:
    return "acks=1: " + _round_trip(ctx, _simple(100), partitions=2, pcfg={"acks": "1"})


def _codec(codec: str) -> Callable[[_Ctx], str]:
    def check(ctx: _Ctx) -> str:
        return f"{codec}: " + _round_trip(ctx, _simple(200), pcfg={"compression.type": codec})

    check.__doc__ = f"compression.type={codec}"
    return check


def check_headers(ctx: _Ctx) -> str:
    recs: list[Rec] = [
        (b"k", b"v0", [("trace", b"abc"), ("site", b"7")]),
        (b"k", b"v1", [("dup", b"1"), ("dup", b"2")]),  # repeated keys keep order
        (b"k", b"v2", [("empty", b""), ("null", None)]),
        (b"k", b"v3", [("utf8-\u00e9", b"\xff\x00binary")]),
    ]
    return _round_trip(ctx, recs) + " (repeated, empty, null, binary headers)"


def check_null_key_value(ctx: _Ctx) -> str:
    recs: list[Rec] = [(None, b"v", None), (b"k", None, None), (None, None, None), (b"", b"", None)]
    return _round_trip(ctx, recs) + " (null key, null value, both, empty bytes)"


def check_offsets_dense(ctx: _Ctx) -> str:
    parts = 3
    topic = ctx.topic(parts)
    p = ctx.producer()
    for _ in range(4):  # several produce requests, so batches follow batches
        _produce(p, topic, _simple(75), ctx)
    got = _read_topic(ctx, topic, parts, 300)
    if len(got) != 300:
        raise CheckFailed(f"produced 300, read {len(got)}")
    per: dict[int, list[int]] = {}
    for m in got:
        per.setdefault(int(m.partition() or 0), []).append(int(m.offset() or 0))
    c = ctx.consumer()
    try:
        for part, offs in per.items():
            if offs != list(range(len(offs))):
                raise CheckFailed(
                    f"partition {part}: offsets {offs[:10]}... not 0..{len(offs) - 1}"
                )
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, part), timeout=5.0)
            if (lo, hi) != (0, len(offs)):
                raise CheckFailed(f"partition {part}: watermarks {(lo, hi)} != (0, {len(offs)})")
    finally:
        c.close()
    sizes = ", ".join(f"p{k}={len(v)}" for k, v in sorted(per.items()))
    return f"300 records in 4 requests: offsets 0..n-1 in order, high watermark = n ({sizes})"


def check_groups(ctx: _Ctx) -> str:
    topic = ctx.topic(2)
    group = f"scorecard-{ctx.run}-group"
    p = ctx.producer()
    _produce(p, topic, _simple(40), ctx)
    cfg: dict[str, Any] = {
        "group.id": group,
        "group.protocol": "classic",
        "session.timeout.ms": 10000,
    }
    c = ctx.consumer(**cfg)
    t0 = time.monotonic()
    try:
        c.subscribe([topic])
        first = _read(c, 40, ctx, grace_s=0.0)
        if len(first) != 40:
            raise CheckFailed(f"joined but read {len(first)} of 40")
        joined = time.monotonic() - t0
        c.commit(asynchronous=False)
        committed = {tp.partition: tp.offset for tp in c.committed(c.assignment(), timeout=5.0)}
    finally:
        c.close()
    ends: dict[int, int] = {}
    for m in first:
        part = int(m.partition() or 0)
        ends[part] = max(ends.get(part, 0), int(m.offset() or 0) + 1)
    if any(committed.get(k) != v for k, v in ends.items()):
        raise CheckFailed(f"committed {committed} != next offsets {ends}")
    _produce(p, topic, [(b"k%d" % i, b"second-%d" % i, None) for i in range(20)], ctx)
    c2 = ctx.consumer(**cfg)
    try:
        c2.subscribe([topic])
        second = _read(c2, 20, ctx, grace_s=1.0)
    finally:
        c2.close()
    values = sorted(m.value() or b"" for m in second)
    if values != sorted(b"second-%d" % i for i in range(20)):
        raise CheckFailed(f"resumed member read {len(second)} records, not exactly the 20 new")
    return (
        f"classic group: joined and read 40 in {joined:.2f} s, committed {committed}; "
        f"a new member resumed there and read exactly the 20 new records"
    )


def _collect(errors: list[str]) -> Callable[[KafkaError | None, Message], None]:
    def done(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err.name())

    return done


def _seq_check(got: list[Message], n: int) -> tuple[int, int, list[str]]:
    """Duplicates, missing, and per-partition order problems of values b'seq-%08d'."""
    seen: dict[int, int] = {}
    problems: list[str] = []
    last: dict[int, int] = {}
    for m in got:
        v = m.value() or b""
        s = int(v[4:12])
        seen[s] = seen.get(s, 0) + 1
        part = int(m.partition() or 0)
        if s <= last.get(part, -1):
            problems.append(f"p{part}: {s} after {last[part]}")
        last[part] = s
    dups = sum(c - 1 for c in seen.values())
    missing = sum(1 for s in range(n) if s not in seen)
    return dups, missing, problems


def _seq_recs(start: int, n: int) -> list[Rec]:
    return [(b"k%d" % (i % 3), b"seq-%08d" % i, None) for i in range(start, start + n)]


def check_idempotence(ctx: _Ctx) -> str:
    topic = ctx.topic(3)
    n = 600
    with KafkaProxy(ctx.bootstrap) as px:
        p = ctx.producer(px.address, **{"enable.idempotence": True, "linger.ms": 2})
        errors: list[str] = []
        for i, (k, v, _h) in enumerate(_seq_recs(0, n)):
            p.produce(topic, v, k, on_delivery=_collect(errors))
            if i % 150 == 149:
                p.poll(0.02)
                px.cut()  # mid-stream: requests in flight are retried by the client
            p.poll(0)
        left = p.flush(ctx.remaining())
        cuts = px.cuts
    if errors or left:
        raise CheckFailed(f"{len(errors)} delivery errors {sorted(set(errors))}, {left} unacked")
    got = _read_topic(ctx, topic, 3, n)
    dups, missing, order = _seq_check(got, n)
    if dups or missing or order:
        raise CheckFailed(f"{dups} duplicates, {missing} missing, order: {order[:3]}")
    return (
        f"enable.idempotence=true, {n} records, {cuts} connection cuts mid-stream: "
        f"read {len(got)}, 0 duplicates, 0 missing, order kept per partition"
    )


def check_raw_duplicate(ctx: _Ctx) -> str:
    """The same idempotent batch sent twice by hand: the log must hold one copy."""
    import datetime as dt

    from kio.schema.init_producer_id.v1.request import InitProducerIdRequest
    from kio.schema.produce.v7 import request as pr
    from kio.schema.types import TopicName
    from kio.static.primitive import i16, i32, i32Timedelta

    from shoal.protocol.batches import BatchBuilder

    topic = ctx.topic(1)
    admin = AdminClient(ctx.base())
    md = admin.list_topics(topic, timeout=5.0)
    leader = md.topics[topic].partitions[0].leader
    b = md.brokers[leader]
    with _Raw(str(b.host), int(b.port), ctx.remaining()) as raw:
        init = raw.call(
            22,
            1,
            InitProducerIdRequest(
                transactional_id=None,
                transaction_timeout=i32Timedelta.parse(dt.timedelta(seconds=60)),
            ),
        )
        if init.error_code.value != 0:
            raise CheckFailed(f"InitProducerId: {init.error_code.name}")
        builder = BatchBuilder(
            producer_id=int(init.producer_id),
            producer_epoch=int(init.producer_epoch),
            base_sequence=0,
        )
        now = int(time.time() * 1000)
        for i in range(5):
            builder.append(now, None, b"raw-%d" % i)
        batch = builder.build()
        req = pr.ProduceRequest(
            transactional_id=None,
            acks=i16(-1),
            timeout=i32Timedelta.parse(dt.timedelta(seconds=10)),
            topic_data=(
                pr.TopicProduceData(
                    name=TopicName(topic),
                    partition_data=(
                        pr.PartitionProduceData(index=i32(0), records=cast(Any, batch)),
                    ),
                ),
            ),
        )
        answers = []
        for _ in range(2):
            resp = raw.call(0, 7, req)
            part = resp.responses[0].partition_responses[0]
            answers.append((part.error_code.name, int(part.base_offset)))
    first, second = answers
    if first[0] != "none":
        raise CheckFailed(f"first send refused: {first}")
    if second[0] not in ("none", "duplicate_sequence_number"):
        raise CheckFailed(f"duplicate answered {second}")
    c = ctx.consumer()
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=5.0)
    finally:
        c.close()
    if hi - lo != 5:
        raise CheckFailed(f"log holds {hi - lo} records after the duplicate, expected 5")
    return (
        f"pid {int(init.producer_id)}: batch of 5 at offset {first[1]}; the same batch again "
        f"answered {second[0]} (offset {second[1]}); log holds 5 records"
    )


class _Raw:
    """A blocking Kafka connection for hand-built requests (kio schemas)."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.corr = 0

    def __enter__(self) -> _Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def call(self, key: int, version: int, body: Any) -> Any:
        import io

        from kio.index import load_request_schema, load_response_schema
        from kio.serial import entity_reader, entity_writer

        self.corr += 1
        req = load_request_schema(key, version)
        out = io.BytesIO()
        out.write(struct.pack(">hhih", key, version, self.corr, 9) + b"scorecard")
        if req.__flexible__:
            out.write(b"\x00")
        entity_writer(req)(out, body)
        data = out.getvalue()
        self.sock.sendall(struct.pack(">i", len(data)) + data)
        (size,) = struct.unpack(">i", self._exact(4))
        frame = self._exact(size)
        resp = load_response_schema(key, version)
        pos = 5 if resp.__flexible__ and key != 18 else 4
        value, _ = entity_reader(resp)(frame, pos)
        return value

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise CheckFailed("connection closed by the broker")
            buf += chunk
        return bytes(buf)


_REFUSED = {
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
    "UNSUPPORTED_VERSION",
    "UNSUPPORTED_FOR_MESSAGE_FORMAT",
    "_UNSUPPORTED_FEATURE",
    "CLUSTER_AUTHORIZATION_FAILED",
}


def check_transactions(ctx: _Ctx) -> str:
    topic = ctx.topic(1)
    p = ctx.producer(**{"transactional.id": f"scorecard-{ctx.run}-tx"})
    try:
        p.init_transactions(min(10.0, ctx.remaining()))
    except KafkaException as e:
        err = e.args[0] if e.args else None
        name = err.name() if isinstance(err, KafkaError) else str(e)
        if name in _REFUSED:
            raise Unsupported(
                f"not supported by this cluster: InitProducerId refused ({name})"
            ) from e
        raise CheckFailed(f"init_transactions: {e}") from e
    p.begin_transaction()
    _produce(p, topic, [(None, b"committed-%d" % i, None) for i in range(5)], ctx)
    p.commit_transaction(ctx.remaining())
    p.begin_transaction()
    _produce(p, topic, [(None, b"aborted-%d" % i, None) for i in range(5)], ctx)
    p.abort_transaction(ctx.remaining())
    p.begin_transaction()
    _produce(p, topic, [(None, b"last-%d" % i, None) for i in range(2)], ctx)
    p.commit_transaction(ctx.remaining())
    got = _read_topic(ctx, topic, 1, 7, **{"isolation.level": "read_committed"})
    values = [m.value() or b"" for m in got]
    if any(v.startswith(b"aborted") for v in values) or len(values) != 7:
        raise CheckFailed(f"read_committed saw {values}")
    return "commit, abort, commit: read_committed saw the 7 committed records only"


def check_reconnect(ctx: _Ctx) -> str:
    """Default producer settings; the link drops twice while records flow."""
    topic = ctx.topic(2)
    n = 400
    with KafkaProxy(ctx.bootstrap) as px:
        p = ctx.producer(px.address)
        errors: list[str] = []
        for i, (k, v, _h) in enumerate(_seq_recs(0, n)):
            p.produce(topic, v, k, on_delivery=_collect(errors))
            if i % 150 == 149:
                p.poll(0.02)
                px.cut()
            p.poll(0.001)
        left = p.flush(ctx.remaining())
        conns = px.connections
    if errors or left:
        raise CheckFailed(f"{len(errors)} delivery errors {sorted(set(errors))}, {left} unacked")
    got = _read_topic(ctx, topic, 2, n)
    dups, missing, _order = _seq_check(got, n)
    if missing:
        raise CheckFailed(f"{missing} acked records missing after reconnects")
    return (
        f"{n} records, 2 cuts, {conns} connections through the proxy: all acked, "
        f"none missing ({dups} duplicates from retries of a non-idempotent producer)"
    )


def check_offset_continuity(ctx: _Ctx) -> str:
    """Offsets continue where they were across a drop, for producer and consumer."""
    topic = ctx.topic(1)
    with KafkaProxy(ctx.bootstrap) as px:
        p = ctx.producer(px.address, **{"enable.idempotence": True})
        a = _produce(p, topic, _seq_recs(0, 100), ctx, partition=0)
        px.cut()
        b = _produce(p, topic, _seq_recs(100, 100), ctx, partition=0)
        offsets = [o for _, o in a + b]
        if offsets != list(range(offsets[0], offsets[0] + 200)):
            raise CheckFailed(f"offsets across the cut not dense: ...{offsets[95:105]}...")
        c = ctx.consumer(px.address)
        try:
            c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
            first = _read(c, 120, ctx, grace_s=0.0)
            px.cut()
            rest = _read(c, 80, ctx)
        finally:
            c.close()
    seen = [int(m.offset() or 0) for m in first + rest]
    if seen != list(range(200)):
        raise CheckFailed(f"consumer across a cut read offsets {seen[115:125]}... (want 0..199)")
    return (
        "producer: offsets 0..99 before a cut, 100..199 after; consumer: cut after 120 "
        "records, resumed at 120, read 0..199 once each"
    )


def check_list_offsets(ctx: _Ctx) -> str:
    topic = ctx.topic(1)
    base = int(time.time() * 1000) - 100_000
    p = ctx.producer()
    for i in range(50):
        p.produce(topic, b"t%d" % i, partition=0, timestamp=base + i * 1000)
    if p.flush(ctx.remaining()):
        raise CheckFailed("records not acknowledged in time")
    c = ctx.consumer()
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=5.0)
        if (lo, hi) != (0, 50):
            raise CheckFailed(f"earliest/latest {(lo, hi)} != (0, 50)")
        probes = {0: base, 10: base + 10_000, 25: base + 24_500, 49: base + 49_000}
        found = []
        for ts in [*probes.values(), base + 60_000]:  # one request per probe
            (tp,) = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=5.0)
            found.append(tp.offset)
    finally:
        c.close()
    want = [*probes, -1]
    if found != want:
        raise CheckFailed(f"offsets_for_times {found} != {want} (after the last record: -1)")
    return (
        "earliest 0, latest 50; by time: exact ts -> its offset, between records -> "
        "the next, past the end -> -1 (end)"
    )


_Check = tuple[str, str, bool, Callable[[_Ctx], str]]

CHECKS: list[_Check] = [
    ("metadata", "Metadata / ApiVersions", True, check_metadata),
    ("admin.topics", "admin create/delete topic", True, check_admin),
    ("produce.acks_all", "round trip acks=all", True, check_acks_all),
    ("produce.acks_1", "round trip acks=1", True, check_acks_1),
    *[
        (f"produce.{c}", f"round trip compression {c}", True, _codec(c))
        for c in ("gzip", "snappy", "lz4", "zstd")
    ],
    ("produce.headers", "record headers", True, check_headers),
    ("produce.null_key_value", "null key / null value", True, check_null_key_value),
    ("offsets.dense", "offsets dense and in order", True, check_offsets_dense),
    ("groups.classic", "group join / commit / resume (classic)", True, check_groups),
    ("idempotence.retries", "idempotent producer across drops", True, check_idempotence),
    ("idempotence.raw_duplicate", "same idempotent batch twice (raw)", False, check_raw_duplicate),
    ("transactions", "transactions", False, check_transactions),
    ("reconnect.producer", "producer survives connection drops", True, check_reconnect),
    ("reconnect.offsets", "offset continuity across a drop", True, check_offset_continuity),
    ("list_offsets", "ListOffsets earliest / latest / by time", True, check_list_offsets),
]


def all_checks() -> list[_Check]:
    """The functional checks, then the security ones (their module imports
    this one, hence the late import)."""
    from shoal.tools.scorecard_security import CHECKS as SECURITY_CHECKS

    return [*CHECKS, *SECURITY_CHECKS]


def check_ids() -> list[str]:
    return [c[0] for c in all_checks()]


def _run_one(ctx: _Ctx, check: _Check, timeout_s: float) -> CheckResult:
    cid, title, mandatory, fn = check
    box: dict[str, tuple[Status, str]] = {}

    def target() -> None:
        try:
            box["r"] = ("pass", fn(ctx))
        except Unsupported as e:
            box["r"] = ("skip", str(e))
        except CheckFailed as e:
            box["r"] = ("fail", str(e))
        except Exception as e:  # a check that breaks is a failed check, with the reason
            box["r"] = ("fail", f"{type(e).__name__}: {e}")

    t0 = time.monotonic()
    ctx.deadline = t0 + timeout_s
    worker = threading.Thread(target=target, name=f"scorecard-{cid}", daemon=True)
    worker.start()
    worker.join(timeout_s + 2.0)  # checks bound their own waits; this is the backstop
    status, evidence = box.get("r", ("fail", f"timed out after {timeout_s:g} s"))
    return CheckResult(cid, title, status, mandatory, evidence, round(time.monotonic() - t0, 3))


def run_scorecard(
    bootstrap: str,
    *,
    extra: Mapping[str, str] | None = None,
    timeout_s: float = 15.0,
    only: list[str] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
    security: SecurityOptions | None = None,
) -> Scorecard:
    """Run the checks (all, or those in `only`) one after another."""
    started = datetime.now(UTC).isoformat(timespec="seconds")
    ctx = _Ctx(bootstrap, extra or {}, os.urandom(3).hex(), security)
    t0 = time.monotonic()
    card = Scorecard(bootstrap, started, 0.0)
    for check in all_checks():
        if only and check[0] not in only:
            continue
        if card.results and card.results[0].id == "metadata" and card.results[0].status == "fail":
            r = CheckResult(check[0], check[1], "fail", check[2], "cluster unreachable", 0.0)
        else:
            r = _run_one(ctx, check, timeout_s)
        card.results.append(r)
        if on_result is not None:
            on_result(r)
    _cleanup(ctx)
    card.seconds = round(time.monotonic() - t0, 3)
    return card


def _cleanup(ctx: _Ctx) -> None:
    """Best effort: a cluster without DeleteTopics keeps the scorecard's topics."""
    if not ctx.topics:
        return
    try:
        admin = AdminClient(ctx.base())
        for fut in admin.delete_topics(list(ctx.topics), request_timeout=5.0).values():
            try:
                fut.result(timeout=5.0)
            except Exception:
                pass
    except Exception:
        pass
