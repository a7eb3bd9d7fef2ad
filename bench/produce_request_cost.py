#!/usr/bin/env python3
"""Broker CPU per small produce request (issue 13): the fleet's shape.

librdkafka sends one ProduceRequest per partition, so a fleet of quiet
partitions is many small requests and the fixed cost of one (acks=all, one
partition, one batch of one 200-byte record) is what limits it. This driver
starts a broker, creates T topics x P partitions, opens every stream with one
request each (not measured), then sends N more single-partition Produce v9
requests round-robin over the partitions, over C connections with K requests
in flight on each (as a pipelining client does), and reports the broker's
CPU seconds (utime + stime from /proc) per request and the wall time.
Every answer is checked (error code 0) after the measurement.

    PYTHONPATH=src:tests .venv/bin/python bench/produce_request_cost.py \
        [--src /tmp/shoal-OLD/src] [--idempotent] [--requests 10000] [--rounds 3] \
        [--profile /tmp/broker.prof]

--src runs the broker from another tree's sources (A/B in the same minutes);
--profile runs the broker under cProfile and writes its stats on exit.
Results print as one JSON object per round.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from kio.schema.init_producer_id.v4.request import InitProducerIdRequest
from kio.schema.produce.v9 import request as pr

from harness import BrokerProcess, free_port
from wire import RawClient, create_topic, decode_response, make_batch, request_frame


def cpu_s(pid: int, task: str = "") -> float:
    path = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> dict[str, tuple[str, float]]:
    """Each thread's name and CPU seconds (where the broker's CPU goes)."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
            out[task] = (name, cpu_s(pid, task))
        except OSError:
            continue
    return out


def by_thread(
    before: dict[str, tuple[str, float]], after: dict[str, tuple[str, float]]
) -> dict[str, float]:
    spent: dict[str, float] = {}
    for task, (name, cpu) in after.items():
        d = cpu - before.get(task, (name, 0.0))[1]
        if d > 0:
            spent[name] = round(spent.get(name, 0.0) + d, 3)
    return spent


def wal_objects(metrics: str) -> int:
    """WAL objects committed so far (the broker's Prometheus counter): the
    requests per object say how much each commit's fixed cost is shared."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("shoal_wal_objects_committed_total "):
                return int(float(line.split()[1]))
    raise RuntimeError("no shoal_wal_objects_committed_total in the broker's metrics")


class Profiled(BrokerProcess):
    """The broker under cProfile (stats written when it exits)."""

    def __init__(self, *args: Any, profile: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.profile = profile

    def command(self) -> list[str]:
        cmd = super().command()
        return [cmd[0], "-m", "cProfile", "-o", self.profile, *cmd[1:]]


def init_producer_id(bootstrap: str) -> tuple[int, int]:
    body = InitProducerIdRequest(
        transactional_id=None,
        transaction_timeout=datetime.timedelta(seconds=60),
        producer_id=-1,
        producer_epoch=-1,
    )
    with RawClient(bootstrap) as c:
        r = c.call(22, 4, body)
    assert r.error_code == 0, r
    return int(r.producer_id), int(r.producer_epoch)


def frames(
    targets: list[tuple[str, int]],
    count: int,
    size: int,
    producer: tuple[int, int] | None,
    sequences: dict[tuple[str, int], int],
) -> list[bytes]:
    out = []
    payload = b"x" * size
    for i in range(count):
        topic, part = targets[i % len(targets)]
        kw: dict[str, int] = {}
        if producer is not None:
            seq = sequences.get((topic, part), 0)
            sequences[(topic, part)] = seq + 1
            kw = {"producer_id": producer[0], "producer_epoch": producer[1], "base_sequence": seq}
        body = pr.ProduceRequest(
            transactional_id=None,
            acks=-1,
            timeout=datetime.timedelta(seconds=60),
            topic_data=(
                pr.TopicProduceData(
                    name=topic,
                    partition_data=(
                        pr.PartitionProduceData(index=part, records=make_batch([payload], **kw)),
                    ),
                ),
            ),
        )
        out.append(request_frame(0, 9, body, correlation_id=i))
    return out


async def _connection(bootstrap: str, mine: list[bytes], inflight: int) -> list[bytes]:
    host, _, port = bootstrap.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    answers: list[bytes] = []
    sent = 0
    window = asyncio.Semaphore(inflight)

    async def read_all() -> None:
        for _ in mine:
            size = struct.unpack(">i", await reader.readexactly(4))[0]
            answers.append(await reader.readexactly(size))
            window.release()

    reading = asyncio.create_task(read_all())
    for frame in mine:
        await window.acquire()
        writer.write(frame)
        sent += 1
    await reading
    writer.close()
    return answers


async def send(
    bootstrap: str, all_frames: list[bytes], connections: int, inflight: int
) -> list[bytes]:
    parts = [all_frames[i::connections] for i in range(connections)]
    got = await asyncio.gather(*(_connection(bootstrap, p, inflight) for p in parts))
    return [a for g in got for a in g]


def check(answers: list[bytes]) -> int:
    bad = 0
    for frame in answers:
        r = decode_response(0, 9, frame)
        p = r.responses[0].partition_responses[0]
        if p.error_code != 0:
            bad += 1
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topics", type=int, default=200)
    ap.add_argument("--partitions", type=int, default=5)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--connections", type=int, default=1)
    ap.add_argument("--inflight", type=int, default=100, help="requests in flight per connection")
    ap.add_argument("--size", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--idempotent", action="store_true")
    ap.add_argument("--src", help="run the broker from this tree's src/ (A/B)")
    ap.add_argument("--profile", help="run the broker under cProfile, stats to this file")
    ap.add_argument("--label", default="")
    args = ap.parse_args()

    metrics = f"127.0.0.1:{free_port()}"
    env = {"SHOAL_METRICS_LISTEN": metrics}
    if args.src:
        env["PYTHONPATH"] = f"{args.src}:{os.environ.get('PYTHONPATH', '')}"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        if args.profile:
            broker: BrokerProcess = Profiled(data, env=env, profile=args.profile)
        else:
            broker = BrokerProcess(data, env=env)
        broker.start(timeout=120)
        try:
            assert broker.proc is not None
            pid = broker.proc.pid
            print(f"broker pid {pid}", file=sys.stderr, flush=True)
            names = [f"fleet-{i}" for i in range(args.topics)]
            for n in names:
                code = create_topic(broker.bootstrap, n, args.partitions)
                assert int(code) == 0, (n, code)
            targets = [(n, p) for p in range(args.partitions) for n in names]
            producer = init_producer_id(broker.bootstrap) if args.idempotent else None
            seqs: dict[tuple[str, int], int] = {}
            warm = frames(targets, len(targets), args.size, producer, seqs)
            bad = check(asyncio.run(send(broker.bootstrap, warm, args.connections, args.inflight)))
            assert bad == 0, f"{bad} warm-up requests failed"
            for r in range(args.rounds):
                todo = frames(targets, args.requests, args.size, producer, seqs)
                load = os.getloadavg()[0]
                th0 = threads(pid)
                objects0 = wal_objects(metrics)
                c0, t0 = cpu_s(pid), time.monotonic()
                answers = asyncio.run(send(broker.bootstrap, todo, args.connections, args.inflight))
                c1, t1 = cpu_s(pid), time.monotonic()
                th1 = threads(pid)
                objects = wal_objects(metrics) - objects0
                bad = check(answers)
                print(
                    json.dumps(
                        {
                            "label": args.label,
                            "round": r + 1,
                            "requests": args.requests,
                            "partitions": len(targets),
                            "idempotent": args.idempotent,
                            "connections": args.connections,
                            "inflight": args.inflight,
                            "wall_s": round(t1 - t0, 3),
                            "broker_cpu_s": round(c1 - c0, 3),
                            "cpu_us_per_request": round((c1 - c0) / args.requests * 1e6, 1),
                            "wal_objects": objects,
                            "requests_per_object": round(args.requests / max(objects, 1), 2),
                            "failed": bad,
                            "threads_cpu_s": by_thread(th0, th1),
                            "load1": round(load, 2),
                        }
                    ),
                    flush=True,
                )
        finally:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
