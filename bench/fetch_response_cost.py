#!/usr/bin/env python3
"""What a 10,000-partition Fetch answer costs the event loop (issue 13).

librdkafka names every assigned partition in every Fetch (no KIP-227
sessions), so a fleet consumer's answer lists all of them, nearly all empty.
This builds and encodes such an answer in process, from the handler's own
per-partition state (`_Part`), two ways, alternated round by round:

  kio   the handler as it was: `Schema(1, v)` PartitionData /
        FetchableTopicResponse / FetchResponse entities, framed by kio's
        writer through `encode_response`;
  new   the handler's `_response` (FetchAnswer, protocol/fetch_response.py)
        framed by `encode_response`.

Shapes: 1 topic x 10,000 partitions and 2,000 topics x 5, all empty or with
1% of partitions holding one 300-byte batch. Both ways must give the same
bytes (checked once per shape). Prints one JSON line per shape and version
with the median build and encode time in microseconds per partition.

    PYTHONPATH=src .venv/bin/python bench/fetch_response_cost.py [--rounds 7] [--versions 11,16]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from shoal.broker.handlers.fetch import _Part, _response
from shoal.protocol.apis import encode_response
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader

ZERO = datetime.timedelta(0)
BATCH = bytes(300)  # stands for one record batch: the encoders treat it as opaque


def kio_response(header: RequestHeader, parts: list[_Part], session_id: int) -> Any:
    """fetch._response before protocol/fetch_response.py (read_uncommitted)."""
    s = Schema(1, header.api_version)
    by_topic: dict[str | uuid.UUID, list[Any]] = {}
    for p in parts:
        by_topic.setdefault(p.key[0], []).append(
            s.PartitionData(
                partition_index=p.index,
                error_code=p.error,
                high_watermark=p.high_watermark,
                last_stable_offset=p.last_stable if p.last_stable >= 0 else p.high_watermark,
                log_start_offset=p.log_start,
                aborted_transactions=None,
                preferred_read_replica=p.preferred,
                records=p.records,
            )
        )
    return s.FetchResponse(
        throttle_time=ZERO,
        error_code=ErrorCode.none,
        session_id=session_id,
        responses=tuple(
            s.FetchableTopicResponse(
                topic=ref if isinstance(ref, str) else "",
                topic_id=ref if isinstance(ref, uuid.UUID) else None,
                partitions=tuple(ps),
            )
            for ref, ps in by_topic.items()
        ),
    )


def parts_of(topics: int, per_topic: int, busy_every: int, by_id: bool) -> list[_Part]:
    """The handler's state for every partition: caught up (offset at the high
    watermark), one batch on every `busy_every`-th partition (0: none)."""
    out = []
    n = 0
    for t in range(topics):
        ref: str | uuid.UUID = uuid.UUID(int=t + 1) if by_id else f"site-{t:05d}.telemetry"
        for i in range(per_topic):
            p = _Part(key=(ref, i), offset=1000, max_bytes=1 << 20, current_leader_epoch=-1)
            p.high_watermark, p.log_start = 1000, 0
            if busy_every and n % busy_every == 0:
                p.records = BATCH
                p.high_watermark = 1001
            out.append(p)
            n += 1
    return out


Build = Callable[[RequestHeader, list[_Part], int], Any]


def one(build: Build, header: RequestHeader, parts: list[_Part]) -> tuple[float, float, bytes]:
    gc.collect()
    t0 = time.perf_counter()
    answer = build(header, parts, 0)
    t1 = time.perf_counter()
    data = encode_response(header, answer)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--versions", default="11,16", help="Fetch versions, comma-separated")
    args = ap.parse_args()
    ways: dict[str, Build] = {"kio": kio_response, "new": _response}
    shapes = [(1, 10_000, 0), (2_000, 5, 0), (1, 10_000, 100), (2_000, 5, 100)]
    for version in (int(v) for v in args.versions.split(",")):
        header = RequestHeader(1, version, 7, "bench", 0)
        for topics, per_topic, busy_every in shapes:
            parts = parts_of(topics, per_topic, busy_every, by_id=version >= 13)
            frames = {name: one(build, header, parts)[2] for name, build in ways.items()}
            if frames["kio"] != frames["new"]:
                raise SystemExit(f"v{version} {topics}x{per_topic}: the two answers differ")
            times: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
            for _ in range(args.rounds):  # A/B alternated in the same minutes
                for name, build in ways.items():
                    b, e, _data = one(build, header, parts)
                    times[name].append((b, e))
            n = len(parts)
            row: dict[str, Any] = {
                "version": version,
                "shape": f"{topics}x{per_topic}",
                "busy": f"{100 // busy_every}%" if busy_every else "0%",
                "bytes": len(frames["new"]),
            }
            for name, ts in times.items():
                build_us = statistics.median(b for b, _ in ts) / n * 1e6
                encode_us = statistics.median(e for _, e in ts) / n * 1e6
                total_us = statistics.median(b + e for b, e in ts) / n * 1e6
                row[name] = {
                    "build_us": round(build_us, 3),
                    "encode_us": round(encode_us, 3),
                    "total_us": round(total_us, 3),
                }
            row["speedup"] = round(row["kio"]["total_us"] / row["new"]["total_us"], 1)
            row["load"] = os.getloadavg()[0]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
