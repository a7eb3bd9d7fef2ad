#!/usr/bin/env python3
"""What record validation costs on the produce path (issue 18).

Two measurements, for 100 B and 1 KiB records, uncompressed and every codec,
with batches encoded by a real client's encoder (kafka-python's
DefaultRecordBatchBuilder) from IoT-like JSON values:

``micro``: in this process, CPU time per GB of produced batch bytes of the
broker's check of one partition's records: header and CRC only (what the
broker did before validation: records.py `_frame`), and the whole check
(`validate_produce`: header, CRC, decompression and the record walk).

``broker``: brokers started one after another from the given source trees
(e.g. the commit before validation and the commit with it, each checked out
with `git worktree add`), each fed pre-encoded Produce requests (6 partitions,
one 256 KiB-uncompressed batch each, acks=all, 16 requests in flight) by a
client that only writes bytes, so the broker is the bottleneck. Reports
produce MB/s (batch bytes as sent) and broker CPU seconds per GB (utime+stime
of the broker process over the window). The machine is shared: rounds take
turns (before, after, before, after...) and the table shows min and median.

    .venv/bin/python bench/validation_bench.py micro
    git worktree add /tmp/rv-before <commit before>; git worktree add /tmp/rv-after <commit>
    (cd /tmp/rv-after && ../../work/main/.venv/bin/python setup.py build_ext --inplace)
    .venv/bin/python bench/validation_bench.py broker \\
        --src before=/tmp/rv-before/src --src after=/tmp/rv-after/src --repeat 3
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import random
import statistics
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
SIZES = (100, 1024)
BATCH_BYTES = 256 << 10
PARTITIONS = 6
IN_FLIGHT = 16
TICK = os.sysconf("SC_CLK_TCK")


def _load(name: str) -> Any:
    """A tests/ helper module by path (the broker launcher and raw protocol)."""
    path = ROOT / "tests" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"vbench_{name}", path)
    if spec is None or spec.loader is None:
        raise click.ClickException(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def values(size: int, n: int, seed: int) -> list[bytes]:
    """IoT-like JSON readings padded to `size` bytes: compressible as real
    telemetry is (about 2-5x), not as zeros or random bytes."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        v = (
            f'{{"device":"site-{rnd.randrange(40)}/sensor-{rnd.randrange(1000):04d}",'
            f'"seq":{i},"ts":{1_700_000_000_000 + i * 7},'
            f'"temp":{rnd.uniform(-20, 45):.3f},"hum":{rnd.uniform(0, 100):.2f},'
            f'"vbat":{rnd.uniform(3.0, 4.2):.3f},"status":"{rnd.choice(["ok", "warn", "idle"])}"'
        )
        pad = size - len(v) - 2
        v += ',"p":"' + "".join(rnd.choice("abcdefghij0123456789") for _ in range(max(pad - 6, 0)))
        out.append((v[: size - 1] + "}").encode())
    return out


def client_batch(size: int, codec: str, seed: int) -> bytes:
    """One batch of ~BATCH_BYTES uncompressed, as kafka-python encodes it."""
    from kafka.record.default_records import DefaultRecordBatchBuilder

    n = max(1, BATCH_BYTES // (size + 10))
    b = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=CODECS[codec],
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    ts = int(time.time() * 1000)
    for i, v in enumerate(values(size, n, seed)):
        assert b.append(i, ts, f"sensor-{i % 1000}".encode(), v, []) is not None
    return bytes(b.build())


# -- micro -------------------------------------------------------------------------


def _cpu_per_gb(fn: Any, batch: bytes, seconds: float) -> float:
    n = 0
    start = time.process_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            fn(batch)
        n += 20
    return (time.process_time() - start) / (n * len(batch) / 1e9)


@click.group()
def cli() -> None:
    """Record validation cost: in-process (micro) and end to end (broker)."""


@cli.command()
@click.option("--seconds", default=1.0, show_default=True, help="per measurement")
@click.option("--repeat", default=5, show_default=True)
def micro(seconds: float, repeat: int) -> None:
    """CPU s/GB of the header+CRC check and of the whole validation, in process."""
    from shoal.protocol import recordcheck
    from shoal.protocol.records import _frame, validate_produce

    native = recordcheck.check_records is not recordcheck.check_records_py
    click.echo(f"C record walk: {'yes' if native else 'NO (Python fallback)'}")
    click.echo(
        "| record size | codec | batch bytes (ratio) | records | header+CRC s/GB "
        "| full validation s/GB | added s/GB | full GB/s |"
    )
    click.echo("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in SIZES:
        for codec in CODECS:
            batch = client_batch(size, codec, seed=size)
            count = struct.unpack_from(">i", batch, 57)[0]
            ratio = BATCH_BYTES / len(batch)
            frame = [_cpu_per_gb(lambda d: _frame(memoryview(d), 1 << 30), batch, seconds)]
            full = [
                _cpu_per_gb(lambda d: validate_produce(d, 1 << 30, api_version=9), batch, seconds)
            ]
            for _ in range(repeat - 1):
                frame.append(_cpu_per_gb(lambda d: _frame(memoryview(d), 1 << 30), batch, seconds))
                full.append(
                    _cpu_per_gb(
                        lambda d: validate_produce(d, 1 << 30, api_version=9), batch, seconds
                    )
                )
            f, v = min(frame), min(full)
            click.echo(
                f"| {size} B | {codec} | {len(batch):,} ({ratio:.1f}x) | {count:,} | {f:.3f} "
                f"| {v:.3f} | {v - f:.3f} | {1 / v:.1f} |"
            )


# -- broker ------------------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def produce_frame(wire: Any, topic: str, batches: list[bytes]) -> bytes:
    import datetime

    from kio.schema.produce.v9 import request as pr

    body = pr.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(seconds=30),
        topic_data=(
            pr.TopicProduceData(
                name=topic,
                partition_data=tuple(
                    pr.PartitionProduceData(index=p, records=batches[p]) for p in range(PARTITIONS)
                ),
            ),
        ),
    )
    frame: bytes = wire.request_frame(0, 9, body, correlation_id=0, client_id="vbench")
    return frame


async def _drive(
    host: str, port: int, frame: bytes, seconds: float, warmup: float
) -> dict[str, Any]:
    """Send `frame` with IN_FLIGHT requests outstanding; count answered
    requests and partition errors inside the measured window."""
    from kio.schema.produce.v9.response import ProduceResponse
    from kio.serial import entity_reader

    read_resp = entity_reader(ProduceResponse)
    reader, writer = await asyncio.open_connection(host, port)
    slots = asyncio.Semaphore(IN_FLIGHT)
    state = {"done": 0, "errors": 0, "measuring": False, "stop": False}
    body = bytearray(frame)

    async def read_loop() -> None:
        while True:
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            data = await reader.readexactly(size)
            resp, _ = read_resp(data, 5)  # correlation id, empty tagged fields
            for t in resp.responses:
                for p in t.partition_responses:
                    if p.error_code != 0:
                        state["errors"] += 1
            if state["measuring"]:
                state["done"] += 1
            slots.release()

    rtask = asyncio.create_task(read_loop())
    t_end = time.perf_counter() + warmup + seconds
    t_measure = time.perf_counter() + warmup
    cid = 0
    while time.perf_counter() < t_end:
        await slots.acquire()
        if not state["measuring"] and time.perf_counter() >= t_measure:
            state["measuring"] = True
            state["t0"] = time.perf_counter()
        cid += 1
        struct.pack_into(">i", body, 8, cid)
        writer.write(bytes(body))
        await writer.drain()
    state["t1"] = time.perf_counter()
    for _ in range(IN_FLIGHT):
        await slots.acquire()
    rtask.cancel()
    writer.close()
    return state


def _round(
    harness: Any, wire: Any, src: str, size: int, codec: str, seconds: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vbench-") as tmp:
        broker = harness.BrokerProcess(
            Path(tmp) / "data", env={"PYTHONPATH": src}, target="shoal"
        ).start()
        try:
            topic = f"vb-{uuid.uuid4().hex[:8]}"
            from kio.schema.errors import ErrorCode

            assert wire.create_topic(broker.bootstrap, topic, PARTITIONS) == ErrorCode.none
            batches = [client_batch(size, codec, seed=p) for p in range(PARTITIONS)]
            frame = produce_frame(wire, topic, batches)
            sent = sum(len(b) for b in batches)
            host, _, port = broker.bootstrap.rpartition(":")
            pid = broker.proc.pid

            async def run() -> tuple[dict[str, Any], float, float]:
                task = asyncio.create_task(_drive(host, int(port), frame, seconds, 1.0))
                await asyncio.sleep(1.0)
                c0, w0 = _cpu_s(pid), time.perf_counter()
                state = await task
                return state, _cpu_s(pid) - c0, time.perf_counter() - w0

            state, cpu, _wall = asyncio.run(run())
            window = state["t1"] - state["t0"]
            gb = state["done"] * sent / 1e9
            return {
                "mb_s": state["done"] * sent / window / 1e6,
                "cpu_s_per_gb": cpu / gb if gb else float("nan"),
                "broker_cores": cpu / window,
                "errors": state["errors"],
                "requests": state["done"],
                "batch_bytes": sent // PARTITIONS,
            }
        finally:
            broker.stop()


@cli.command()
@click.option("--src", "srcs", multiple=True, required=True, help="NAME=PATH of a src/ tree")
@click.option("--repeat", default=3, show_default=True)
@click.option("--seconds", default=6.0, show_default=True, help="measured window per round")
@click.option("--sizes", default="100,1024", show_default=True)
@click.option("--codecs", default=",".join(CODECS), show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
def broker(
    srcs: tuple[str, ...],
    repeat: int,
    seconds: float,
    sizes: str,
    codecs: str,
    json_path: Path | None,
) -> None:
    """Produce MB/s and broker CPU s/GB per source tree, taking turns."""
    harness, wire = _load("harness"), _load("wire")
    targets = [s.split("=", 1) for s in srcs]
    results: dict[str, list[dict[str, Any]]] = {}
    for size in (int(s) for s in sizes.split(",")):
        for codec in codecs.split(","):
            for r in range(repeat):
                for name, path in targets:
                    res = _round(harness, wire, path, size, codec, seconds)
                    results.setdefault(f"{name}|{size}|{codec}", []).append(res)
                    click.echo(
                        f"{name} {size} B {codec} round {r + 1}: {res['mb_s']:.1f} MB/s, "
                        f"{res['cpu_s_per_gb']:.2f} CPU s/GB, {res['broker_cores']:.2f} cores, "
                        f"errors {res['errors']}",
                        err=True,
                    )
    if json_path:
        json_path.write_text(json.dumps(results, indent=1))
    names = [n for n, _ in targets]
    click.echo(
        "| record size | codec | "
        + " | ".join(f"{n} MB/s min/median | {n} CPU s/GB min/median" for n in names)
        + " | errors |"
    )
    click.echo("| ---: | --- | " + " | ".join("---: | ---:" for _ in names) + " | ---: |")
    for size in (int(s) for s in sizes.split(",")):
        for codec in codecs.split(","):
            cells = []
            errors = 0
            for n in names:
                rs = results[f"{n}|{size}|{codec}"]
                mb = [x["mb_s"] for x in rs]
                cpu = [x["cpu_s_per_gb"] for x in rs]
                errors += sum(x["errors"] for x in rs)
                cells.append(
                    f"{min(mb):.0f} / {statistics.median(mb):.0f} | "
                    f"{min(cpu):.2f} / {statistics.median(cpu):.2f}"
                )
            click.echo(f"| {size} B | {codec} | " + " | ".join(cells) + f" | {errors} |")


if __name__ == "__main__":
    cli()
