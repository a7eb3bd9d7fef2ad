#!/usr/bin/env python3
"""Fetch sessions at fleet scale (issue 13): one consumer assigned 10,000
partitions, each receiving one record a second; end-to-end latency and broker CPU.

A fresh broker (tests/harness.py) gets --topics x --partitions partitions. A
producer process (confluent-kafka, acks=all, linger.ms=5; or with --producer
batched, fleet_batched.py's client, which puts every record due in one
request as a per-broker batching client does) writes one 200-byte record to
every partition each second, spread evenly over the second. The consumer
reads every partition from its end:

  --client raw           a raw Fetch v12 loop (kio codecs) with an incremental
                         session, or with --no-sessions a full fetch of every
                         partition each time, as a client without KIP-227;
  --client kafka-python  kafka-python's consumer (which implements sessions).

Latency: the consumer's clock at receipt minus the batch's max timestamp.
With --timestamps append (the default) topics use
message.timestamp.type=LogAppendTime, so the figure is the fetch side's: from
the broker's append (before the WAL commit) to the consumer; with create it is
end to end from the producer's send, produce queueing included. Broker CPU:
utime+stime of the broker process over the measured window.

    .venv/bin/python bench/fetch_session_bench.py --seconds 60
    .venv/bin/python bench/fetch_session_bench.py --seconds 60 --no-sessions
"""

from __future__ import annotations

import datetime
import importlib.util
import multiprocessing
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def load(name: str) -> Any:
    """A helper of the test suite (tests/NAME.py), by path."""
    path = ROOT / "tests" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"shoal_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def produce_forever(bootstrap: str, topics: list[str], partitions: int, stop: Any) -> None:
    """One record per partition per second, in 100 slices of 10 ms."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "log_level": 3})
    targets = [(t, i) for t in topics for i in range(partitions)]
    value = b"x" * 200
    slices = 100
    per = (len(targets) + slices - 1) // slices
    start = time.monotonic()
    n = 0
    while not stop.is_set():
        chunk = targets[(n % slices) * per : (n % slices + 1) * per]
        for topic, part in chunk:
            while True:
                try:
                    p.produce(topic, value, partition=part)
                    break
                except BufferError:
                    p.poll(0.01)
        p.poll(0)
        n += 1
        delay = start + n / slices - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    p.flush(10)


def produce_batched(bootstrap: str, topics: list[str], partitions: int, seconds: float) -> None:
    """The same load from a per-broker batching client (bench/fleet_batched.py:
    each request carries every record due since the last, 5 ms apart, with
    at most 5 requests in flight), each batch stamped when it is sent."""
    import asyncio

    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]
    import fleet_batched

    targets = [(t, i) for t in topics for i in range(partitions)]
    asyncio.run(
        fleet_batched.sustained(bootstrap, targets, 200, seconds, 5.0, fresh_timestamps=True)
    )


def batches(records: bytes | None) -> list[tuple[int, int]]:
    """(max timestamp ms, record count) of each batch in a records field: the
    append time on a LogAppendTime topic, else the last record's CreateTime."""
    out = []
    pos = 0
    data = records or b""
    while pos + 61 <= len(data):
        length = struct.unpack_from(">i", data, pos + 8)[0]
        first_ts = struct.unpack_from(">q", data, pos + 35)[0]
        count = struct.unpack_from(">i", data, pos + 57)[0]
        out.append((first_ts, count))
        pos += 12 + length
    return out


def next_offset(records: bytes | None, offset: int) -> int:
    data = records or b""
    pos = 0
    while pos + 61 <= len(data):
        base, length = struct.unpack_from(">qi", data, pos)
        last_delta = struct.unpack_from(">i", data, pos + 23)[0]
        offset = base + last_delta + 1
        pos += 12 + length
    return offset


class RawConsumer:
    """Fetch v12 by name; with `sessions`, one incremental session."""

    def __init__(
        self,
        wire: Any,
        bootstrap: str,
        topics: list[str],
        parts: int,
        sessions: bool,
        max_wait_ms: int = 500,
    ):
        self.max_wait = datetime.timedelta(milliseconds=max_wait_ms)
        from kio.schema.fetch.v12 import request as fr

        self.fr = fr
        self.client = wire.RawClient(bootstrap, timeout=600)  # the first fetch opens every stream
        self.sessions = sessions
        self.offsets = {(t, p): 0 for t in topics for p in range(parts)}
        self.changed: set[tuple[str, int]] = set(self.offsets)
        self.session = (0, 0 if sessions else -1)
        self.correlation = 0

    def fetch(self) -> tuple[list[tuple[int, int]], int]:
        """One fetch: (batches received, partitions answered)."""
        fr = self.fr
        full = self.session[1] in (0, -1)
        send = self.offsets if full else {k: self.offsets[k] for k in self.changed}
        by_topic: dict[str, list[Any]] = {}
        for (t, p), off in send.items():
            by_topic.setdefault(t, []).append(
                fr.FetchPartition(partition=p, fetch_offset=off, partition_max_bytes=1 << 20)
            )
        body = fr.FetchRequest(
            max_wait=self.max_wait,
            min_bytes=1,
            max_bytes=50 << 20,
            isolation_level=0,
            session_id=self.session[0],
            session_epoch=self.session[1],
            topics=tuple(
                fr.FetchTopic(topic=t, partitions=tuple(ps)) for t, ps in by_topic.items()
            ),
            forgotten_topics_data=(),
            rack_id="",
        )
        self.correlation += 1
        resp = self.client.call(1, 12, body, self.correlation)
        if resp.error_code != 0:
            raise RuntimeError(f"fetch error {resp.error_code}")
        self.changed = set()
        got: list[tuple[int, int]] = []
        answered = 0
        for t in resp.responses:
            for p in t.partitions:
                answered += 1
                if p.error_code:
                    raise RuntimeError(f"{t.topic}-{p.partition_index}: error {p.error_code}")
                if p.records:
                    key = (t.topic, p.partition_index)
                    self.offsets[key] = next_offset(p.records, self.offsets[key])
                    self.changed.add(key)
                    got.extend(batches(p.records))
        if self.sessions:
            if full:
                self.session = (resp.session_id, 1) if resp.session_id else (0, 0)
            else:
                self.session = (self.session[0], self.session[1] + 1)
        return got, answered


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


@click.command()
@click.option("--topics", default=100, show_default=True)
@click.option("--partitions", default=100, show_default=True, help="per topic")
@click.option("--seconds", default=60.0, show_default=True, help="measured window")
@click.option("--warmup", default=10.0, show_default=True)
@click.option("--sessions/--no-sessions", default=True, show_default=True)
@click.option("--client", type=click.Choice(["raw", "kafka-python"]), default="raw")
@click.option("--timestamps", type=click.Choice(["append", "create"]), default="append")
@click.option(
    "--producer",
    "producer_kind",
    type=click.Choice(["librdkafka", "batched"]),
    default="librdkafka",
    show_default=True,
)
@click.option(
    "--idle",
    is_flag=True,
    help="no producer; the consumer fetches with max_wait 0 as fast as it can: "
    "broker CPU per fetch of 10,000 partitions without news",
)
def main(
    topics: int,
    partitions: int,
    seconds: float,
    warmup: float,
    sessions: bool,
    client: str,
    timestamps: str,
    producer_kind: str,
    idle: bool,
) -> None:
    harness = load("harness")
    wire = load("wire")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    names = [f"site-{i:04d}" for i in range(topics)]
    total = topics * partitions
    with tempfile.TemporaryDirectory(prefix="shoal-fsb-") as tmp:
        broker = harness.BrokerProcess(Path(tmp) / "data").start(timeout=60)
        assert broker.proc is not None
        try:
            for name in names:
                configs = (
                    {"message.timestamp.type": "LogAppendTime"} if timestamps == "append" else {}
                )
                code = wire.create_topic(broker.bootstrap, name, partitions, configs)
                assert code.name == "none", (name, code)
            # The consumer's first (full) fetch comes first: it opens every
            # stream (fresh topics: offset 0 is the end) before load starts.
            latencies: list[float] = []
            fetches = answered_total = 0
            if client == "raw":
                consumer = RawConsumer(
                    wire, broker.bootstrap, names, partitions, sessions, 0 if idle else 500
                )
                poll = consumer.fetch
            else:
                consumer, poll = kafka_python_consumer(broker.bootstrap, names, partitions)
            cpu_first, t_first = harness.cpu_seconds(broker.proc.pid), time.monotonic()
            poll()
            first_s = time.monotonic() - t_first
            first_cpu = harness.cpu_seconds(broker.proc.pid) - cpu_first
            stop = multiprocessing.Event()
            if producer_kind == "batched":
                producer = multiprocessing.Process(
                    target=produce_batched,
                    args=(broker.bootstrap, names, partitions, warmup + seconds + 5),
                    daemon=True,
                )
            else:
                producer = multiprocessing.Process(
                    target=produce_forever,
                    args=(broker.bootstrap, names, partitions, stop),
                    daemon=True,
                )
            if not idle:
                producer.start()
            begin = time.monotonic()
            measuring = False
            cpu0 = load0 = 0.0
            while True:
                now = time.monotonic()
                if not measuring and now - begin >= warmup:
                    measuring, t0, cpu0 = True, now, harness.cpu_seconds(broker.proc.pid)
                    load0 = os.getloadavg()[0]
                    latencies.clear()
                    fetches = answered_total = 0
                if measuring and now - t0 >= seconds:
                    break
                got, answered = poll()
                received = time.time() * 1000
                fetches += 1
                answered_total += answered
                for first_ts, count in got:
                    latencies.extend([received - first_ts] * count)
            elapsed = time.monotonic() - t0
            cpu = harness.cpu_seconds(broker.proc.pid) - cpu0
            load1 = os.getloadavg()[0]
            stop.set()
            if not idle:
                producer.join(30)
        finally:
            broker.stop()
    mode = (
        f"{client}, {'sessions' if sessions else 'no sessions (full fetches)'}, {timestamps},"
        f" producer {producer_kind}"
    )
    if idle:
        mode += ", idle (no producer, max_wait 0)"
    print(
        f"\n{total:,} partitions ({topics} topics x {partitions}), 1 record/s each; "
        f"{mode}; {elapsed:.0f} s measured; commit {commit}; "
        f"load average {load0:.2f} -> {load1:.2f}"
    )
    print(
        f"first fetch (a fresh broker: it opens every stream): {first_s:.2f} s, "
        f"broker CPU {first_cpu:.2f} s"
    )
    print(
        "| consumer | records/s | fetches/s | partitions per answer | p50 ms | p99 ms "
        "| p99.9 ms | max ms | broker CPU (cores) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {mode} | {len(latencies) / elapsed:,.0f} | {fetches / elapsed:.1f} "
        f"| {answered_total / max(fetches, 1):,.0f} | {percentile(latencies, 0.5):.1f} "
        f"| {percentile(latencies, 0.99):.1f} | {percentile(latencies, 0.999):.1f} "
        f"| {max(latencies, default=float('nan')):.1f} | {cpu / elapsed:.2f} |"
    )
    print(f"broker CPU per fetch: {cpu / max(fetches, 1) * 1000:.2f} ms")
    if latencies:
        print(f"(mean {statistics.fmean(latencies):.1f} ms over {len(latencies):,} records)")


def kafka_python_consumer(bootstrap: str, names: list[str], partitions: int) -> Any:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=500
    )
    consumer.assign([TopicPartition(t, p) for t in names for p in range(partitions)])
    consumer.seek_to_beginning()

    def poll() -> tuple[list[tuple[int, int]], int]:
        got = []
        for recs in consumer.poll(timeout_ms=500, max_records=100_000).values():
            got.extend((r.timestamp, 1) for r in recs)
        return got, len(got)

    return consumer, poll


if __name__ == "__main__":
    main()
