#!/usr/bin/env python3
"""Cost of the request guard (src/shoal/protocol/guard.py) per request, next to
the kio decode it protects: a Produce of one topic and one partition (a 1 KiB
batch) and a Fetch of 1,000 partitions, each in a flexible and a pre-flexible
version. Single process, no broker.

    .venv/bin/python bench/guard_bench.py

Prints a markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import io
import platform
import struct
import sys
import timeit
from pathlib import Path
from typing import Any

from kio.serial import entity_writer

from shoal.protocol.apis import decode_request, request_type
from shoal.protocol.guard import check_body
from shoal.protocol.headers import body_offset, peek_header

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from wire import make_batch


def frame(api_key: int, version: int, body: Any) -> bytes:
    cls = request_type(api_key, version)
    out = io.BytesIO()
    out.write(struct.pack(">hhih", api_key, version, 1, 5) + b"bench")
    if cls.__flexible__:
        out.write(b"\x00")
    entity_writer(cls)(out, body)
    return out.getvalue()


def produce(version: int) -> bytes:
    mod = sys.modules[request_type(0, version).__module__]
    batch = make_batch([b"x" * 1024])
    body = mod.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(seconds=10),
        topic_data=(
            mod.TopicProduceData(
                name="sensors",
                partition_data=(mod.PartitionProduceData(index=0, records=batch),),
            ),
        ),
    )
    return frame(0, version, body)


def fetch(version: int, partitions: int) -> bytes:
    mod = sys.modules[request_type(1, version).__module__]
    extra: dict[str, Any] = {"rack_id": ""} if version >= 11 else {}
    epoch: dict[str, Any] = {"last_fetched_epoch": -1} if version >= 12 else {}
    body = mod.FetchRequest(
        max_wait=datetime.timedelta(milliseconds=500),
        min_bytes=1,
        max_bytes=50 << 20,
        isolation_level=0,
        session_id=0,
        session_epoch=-1,
        topics=(
            mod.FetchTopic(
                topic="sensors",
                partitions=tuple(
                    mod.FetchPartition(
                        partition=p,
                        fetch_offset=1000 + p,
                        partition_max_bytes=1 << 20,
                        current_leader_epoch=-1,
                        log_start_offset=-1,
                        **epoch,
                    )
                    for p in range(partitions)
                ),
            ),
        ),
        forgotten_topics_data=(),
        **extra,
    )
    return frame(1, version, body)


def per_call_us(fn: Any) -> float:
    """Best of many short runs: on a shared machine the minimum is the run that
    was not preempted."""
    timer = timeit.Timer(fn)
    per_call = timer.timeit(10) / 10
    number = max(1, int(0.002 / max(per_call, 1e-9)))  # about 2 ms per run
    return min(timer.repeat(repeat=300, number=number)) / number * 1e6


def main() -> None:
    cases = [
        ("Produce v9, 1 topic x 1 partition, 1 KiB batch", 0, 9, produce(9)),
        ("Produce v3, 1 topic x 1 partition, 1 KiB batch", 0, 3, produce(3)),
        ("Fetch v12, 1 topic x 1,000 partitions", 1, 12, fetch(12, 1000)),
        ("Fetch v11, 1 topic x 1,000 partitions", 1, 11, fetch(11, 1000)),
    ]
    print(f"python {platform.python_version()}, {platform.machine()}")
    print()
    print("| request | frame bytes | guard µs | kio decode µs | guard / decode |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, key, version, data in cases:
        cls = request_type(key, version)
        pos = body_offset(data, peek_header(data), bool(cls.__flexible__))
        check_body(data, pos, cls)  # compile the walk outside the timing
        guard = per_call_us(lambda d=data, p=pos, c=cls: check_body(d, p, c))
        total = per_call_us(lambda d=data: decode_request(d))
        decode = total - guard
        print(f"| {label} | {len(data):,} | {guard:.2f} | {decode:.1f} | {guard / decode:.0%} |")


if __name__ == "__main__":
    main()
