#!/usr/bin/env python3
"""Consumer-group coordinator bench: offset commits per second, and the time from a
member's death to a completed rebalance.

(a) commits/s: --connections raw Kafka connections, each keeping --window
    OffsetCommit requests (v8, generation -1, --partitions-per-commit partitions
    each) in flight for --duration seconds; then one connection with one commit
    at a time (the latency of a lone commit). A commit counts when its response
    says NONE for every partition, i.e. once it is durable in the metadata store.
(b) rebalance after a death: two raw members in a group; one goes silent (no
    LeaveGroup: its socket closes, as a killed process's would). The survivor
    heartbeats every --heartbeat-ms; the time runs until its SyncGroup of the next
    generation returns. This is the session timeout plus detection and the
    rebalance itself; a graceful LeaveGroup is timed too, which is the
    coordinator's own share.

    .venv/bin/python bench/offset_commits.py                 # starts Shoal on SQLite
    .venv/bin/python bench/offset_commits.py --bootstrap HOST:PORT   # any Kafka

Prints a markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import io
import platform
import statistics
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer

ROOT = Path(__file__).resolve().parent.parent
COMMIT_V = 8


def load_harness() -> Any:
    """tests/harness.py by path: the broker launcher the test suite uses."""
    path = ROOT / "tests" / "harness.py"
    spec = importlib.util.spec_from_file_location("shoal_bench_harness", path)
    if spec is None or spec.loader is None:
        raise click.ClickException(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- wire


def _make(cls: Any, **fields: Any) -> Any:
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in fields.items() if k in names})


def _nested(api: int, version: int, cls_name: str, **fields: Any) -> Any:
    module = sys.modules[load_request_schema(api, version).__module__]
    return _make(getattr(module, cls_name), **fields)


def frame(api: int, version: int, body: Any, correlation_id: int) -> bytes:
    cls = load_request_schema(api, version)
    out = io.BytesIO()
    cid = b"offset-bench"
    out.write(struct.pack(">hhih", api, version, correlation_id, len(cid)) + cid)
    if cls.__flexible__:
        out.write(b"\x00")
    entity_writer(cls)(out, body)
    data = out.getvalue()
    return struct.pack(">i", len(data)) + data


def decode(api: int, version: int, data: bytes) -> Any:
    resp = load_response_schema(api, version)
    return entity_reader(resp)(data, 4 + (1 if resp.__flexible__ else 0))[0]


class Conn:
    """One asyncio connection; responses come back in request order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.cid = 0

    @classmethod
    async def open(cls, bootstrap: str) -> Conn:
        host, _, port = bootstrap.rpartition(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    def send(self, api: int, version: int, body: Any) -> None:
        self.cid += 1
        self.writer.write(frame(api, version, body, self.cid))

    async def recv(self, api: int, version: int) -> Any:
        return decode(api, version, await self.recv_raw())

    async def recv_raw(self) -> bytes:
        (size,) = struct.unpack(">i", await self.reader.readexactly(4))
        return await self.reader.readexactly(size)

    async def call(self, api: int, version: int, body: Any) -> Any:
        self.send(api, version, body)
        return await self.recv(api, version)

    def close(self) -> None:
        self.writer.close()


def ms(n: int) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=n)


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    c = await Conn.open(bootstrap)
    try:
        topic = _nested(
            19,
            7,
            "CreatableTopic",
            name=name,
            num_partitions=partitions,
            replication_factor=-1,
            assignments=(),
            configs=(),
        )
        body = _make(
            load_request_schema(19, 7), topics=(topic,), timeout=ms(30_000), validate_only=False
        )
        r = await c.call(19, 7, body)
        code = r.topics[0].error_code
        if code not in (ErrorCode.none, ErrorCode.topic_already_exists):
            raise click.ClickException(f"cannot create {name}: {ErrorCode(code).name}")
    finally:
        c.close()


# ----------------------------------------------------------------------------- (a)


@dataclass
class CommitResult:
    connections: int
    window: int
    partitions_per_commit: int
    seconds: float
    commits: int
    failed: int
    latencies_ms: list[float]

    @property
    def per_s(self) -> float:
        return self.commits / self.seconds

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def commit_frames(
    topic: str, group: str, partitions: int, per_commit: int, count: int, seed: int
) -> list[bytes]:
    """Distinct pre-encoded commits (offsets differ), so the client's CPU goes to
    the socket, not to encoding, on a 2-core box shared with the broker."""
    req = load_request_schema(8, COMMIT_V)
    out = []
    for i in range(count):
        parts = tuple(
            _nested(
                8,
                COMMIT_V,
                "OffsetCommitRequestPartition",
                partition_index=(seed + i + k) % partitions,
                committed_offset=seed * 1_000_000 + i,
                committed_leader_epoch=-1,
                committed_metadata="",
            )
            for k in range(per_commit)
        )
        topic_entry = _nested(8, COMMIT_V, "OffsetCommitRequestTopic", name=topic, partitions=parts)
        body = _make(
            req,
            group_id=group,
            generation_id_or_member_epoch=-1,
            member_id="",
            group_instance_id=None,
            topics=(topic_entry,),
        )
        out.append(frame(8, COMMIT_V, body, i + 1))
    return out


async def commit_bench(
    bootstrap: str,
    topic: str,
    partitions: int,
    connections: int,
    window: int,
    per_commit: int,
    duration: float,
) -> CommitResult:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}
    stop_at = 0.0

    async def one(n: int) -> None:
        group = f"bench-{uuid.uuid4().hex[:8]}-{n}"
        frames = commit_frames(topic, group, partitions, per_commit, 512, n)
        conn = await Conn.open(bootstrap)
        sent: asyncio.Queue[float] = asyncio.Queue()
        i = 0

        def fill() -> None:
            nonlocal i
            while sent.qsize() < window and loop.time() < stop_at:
                conn.writer.write(frames[i % len(frames)])
                sent.put_nowait(loop.time())
                i += 1

        fill()
        while not sent.empty():
            data = await conn.recv_raw()
            t0 = sent.get_nowait()
            now = loop.time()
            r = decode(8, COMMIT_V, data)
            if all(p.error_code == ErrorCode.none for t in r.topics for p in t.partitions):
                counts["ok"] += 1
                latencies.append((now - t0) * 1000)
            else:
                counts["failed"] += 1
            fill()
        conn.close()

    start = loop.time()
    stop_at = start + duration
    await asyncio.gather(*(one(n) for n in range(connections)))
    return CommitResult(
        connections,
        window,
        per_commit,
        loop.time() - start,
        counts["ok"],
        counts["failed"],
        latencies,
    )


# ----------------------------------------------------------------------------- (b)


def subscription(topic: str) -> bytes:
    return struct.pack(">hih", 0, 1, len(topic)) + topic.encode() + struct.pack(">i", -1)


async def join_and_sync(
    conn: Conn, group: str, member_id: str, topic: str, session_ms: int
) -> tuple[str, int]:
    """JoinGroup (v5: with the KIP-394 round trip) then SyncGroup; returns
    (member id, generation). The leader assigns nothing: only timing matters."""
    while True:
        protocols = (
            _nested(11, 5, "JoinGroupRequestProtocol", name="range", metadata=subscription(topic)),
        )
        body = _make(
            load_request_schema(11, 5),
            group_id=group,
            session_timeout=ms(session_ms),
            rebalance_timeout=ms(30_000),
            member_id=member_id,
            group_instance_id=None,
            protocol_type="consumer",
            protocols=protocols,
        )
        j = await conn.call(11, 5, body)
        if j.error_code == ErrorCode.member_id_required:
            member_id = j.member_id
            continue
        if j.error_code != ErrorCode.none:
            raise RuntimeError(f"JoinGroup: {ErrorCode(j.error_code).name}")
        member_id = j.member_id
        assignments = tuple(
            _nested(14, 3, "SyncGroupRequestAssignment", member_id=m.member_id, assignment=b"")
            for m in j.members
        )
        s = await conn.call(
            14,
            3,
            _make(
                load_request_schema(14, 3),
                group_id=group,
                generation_id=j.generation_id,
                member_id=member_id,
                group_instance_id=None,
                assignments=assignments,
            ),
        )
        if s.error_code == ErrorCode.rebalance_in_progress:
            continue
        if s.error_code != ErrorCode.none:
            raise RuntimeError(f"SyncGroup: {ErrorCode(s.error_code).name}")
        return member_id, j.generation_id


async def heartbeat(conn: Conn, group: str, member_id: str, generation: int) -> ErrorCode:
    body = _make(
        load_request_schema(12, 3),
        group_id=group,
        generation_id=generation,
        member_id=member_id,
        group_instance_id=None,
    )
    return ErrorCode((await conn.call(12, 3, body)).error_code)


async def leave(conn: Conn, group: str, member_id: str) -> None:
    await conn.call(13, 1, _make(load_request_schema(13, 1), group_id=group, member_id=member_id))


async def rebalance_trial(
    bootstrap: str, topic: str, session_ms: int, heartbeat_ms: int, graceful: bool
) -> float:
    """Seconds from the second member's death (or LeaveGroup) to the survivor's
    completed SyncGroup of the next generation."""
    group = f"rebalance-{uuid.uuid4().hex[:8]}"
    a, b = await Conn.open(bootstrap), await Conn.open(bootstrap)
    try:
        a_id, gen = await join_and_sync(a, group, "", topic, session_ms)
        # b joins: a learns of it from a heartbeat and rejoins, as clients do.
        b_task = asyncio.create_task(join_and_sync(b, group, "", topic, session_ms))
        while not b_task.done():
            if await heartbeat(a, group, a_id, gen) == ErrorCode.rebalance_in_progress:
                a_id, gen = await join_and_sync(a, group, a_id, topic, session_ms)
            await asyncio.sleep(heartbeat_ms / 1000)
        b_id, b_gen = await b_task
        gen = max(gen, b_gen)
        loop = asyncio.get_running_loop()
        start = loop.time()
        if graceful:
            await leave(b, group, b_id)
        b.close()
        while True:
            code = await heartbeat(a, group, a_id, gen)
            if code == ErrorCode.rebalance_in_progress:
                await join_and_sync(a, group, a_id, topic, session_ms)
                return loop.time() - start
            if code != ErrorCode.none:
                raise RuntimeError(f"Heartbeat: {code.name}")
            await asyncio.sleep(heartbeat_ms / 1000)
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------------------- main


async def run(
    bootstrap: str,
    connections: int,
    window: int,
    per_commit: list[int],
    duration: float,
    session_ms: int,
    heartbeat_ms: int,
    trials: int,
    say: Callable[[str], None],
) -> tuple[list[CommitResult], dict[str, list[float]]]:
    topic = f"commits-{uuid.uuid4().hex[:8]}"
    partitions = 64
    await create_topic(bootstrap, topic, partitions)
    results = []
    shapes = [(connections, window, k) for k in per_commit] + [(1, 1, 1)]
    for conns, win, k in shapes:
        say(f"(a) {conns} connection(s) x {win} in flight, {k} partition(s) per commit")
        results.append(await commit_bench(bootstrap, topic, partitions, conns, win, k, duration))
    rebalances: dict[str, list[float]] = {"death": [], "leave": []}
    for i in range(trials):
        say(f"(b) rebalance after a member's death, trial {i + 1}/{trials}")
        rebalances["death"].append(
            await rebalance_trial(bootstrap, topic, session_ms, heartbeat_ms, graceful=False)
        )
        rebalances["leave"].append(
            await rebalance_trial(bootstrap, topic, session_ms, heartbeat_ms, graceful=True)
        )
    return results, rebalances


def markdown(
    target: str,
    results: list[CommitResult],
    rebalances: dict[str, list[float]],
    session_ms: int,
    heartbeat_ms: int,
) -> str:
    lines = [
        f"Target: {target}; {platform.machine()}, {_cpus()} CPUs, Python "
        f"{platform.python_version()}.",
        "",
        "| offset commits | connections x in flight | commits/s | partition offsets/s "
        "| p50 ms | p99 ms | failed |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.partitions_per_commit} partition(s) each | {r.connections} x {r.window} "
            f"| {r.per_s:,.0f} | {r.per_s * r.partitions_per_commit:,.0f} "
            f"| {r.pct(0.5):.1f} | {r.pct(0.99):.1f} | {r.failed} |"
        )
    lines += [
        "",
        f"| rebalance (session.timeout.ms {session_ms}, heartbeat every {heartbeat_ms} ms) "
        "| median s | min s | max s | trials |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    labels = {
        "death": "member dies (no LeaveGroup) → survivor synced",
        "leave": "member leaves (LeaveGroup) → survivor synced",
    }
    for key, xs in rebalances.items():
        if xs:
            lines.append(
                f"| {labels[key]} | {statistics.median(xs):.2f} | {min(xs):.2f} "
                f"| {max(xs):.2f} | {len(xs)} |"
            )
    return "\n".join(lines)


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


@click.command()
@click.option("--bootstrap", default=None, help="Bench this cluster instead of starting Shoal.")
@click.option("--connections", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--window", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--partitions-per-commit",
    "per_commit",
    multiple=True,
    type=click.IntRange(min=1, max=64),
    default=(1, 10),
    show_default=True,
)
@click.option("--duration", type=click.FloatRange(min=0.5), default=10.0, show_default=True)
@click.option("--session-ms", type=click.IntRange(min=1), default=6000, show_default=True)
@click.option("--heartbeat-ms", type=click.IntRange(min=10), default=100, show_default=True)
@click.option("--trials", type=click.IntRange(min=0), default=3, show_default=True)
def main(
    bootstrap: str | None,
    connections: int,
    window: int,
    per_commit: tuple[int, ...],
    duration: float,
    session_ms: int,
    heartbeat_ms: int,
    trials: int,
) -> None:
    """Offset commits/s and rebalance time after a member's death."""

    def say(msg: str) -> None:
        click.echo(msg, err=True)

    broker = None
    tmp = None
    target = bootstrap or ""
    if bootstrap is None:
        harness = load_harness()
        tmp = tempfile.TemporaryDirectory(prefix="offset-bench-")
        broker = harness.BrokerProcess(
            Path(tmp.name) / "data",
            env={
                "SHOAL_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
                "SHOAL_GROUP_MIN_SESSION_TIMEOUT_MS": str(min(session_ms, 6000)),
            },
            args=["--log-level", "WARNING"],
        ).start()
        bootstrap = broker.bootstrap
        target = "Shoal (SQLite metadata, file object store), broker and bench on one machine"
    try:
        t0 = time.monotonic()
        try:
            import uvloop

            runner: Any = uvloop.run
        except ImportError:  # pragma: no cover
            runner = asyncio.run
        results, rebalances = runner(
            run(
                bootstrap,
                connections,
                window,
                list(per_commit),
                duration,
                session_ms,
                heartbeat_ms,
                trials,
                say,
            )
        )
        say(f"done in {time.monotonic() - t0:.0f} s")
    finally:
        if broker is not None:
            broker.stop()
        if tmp is not None:
            tmp.cleanup()
    click.echo(markdown(target, results, rebalances, session_ms, heartbeat_ms))


if __name__ == "__main__":
    main()
