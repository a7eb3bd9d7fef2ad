#!/usr/bin/env python3
"""What the topic-side produce rules cost per batch (issue 14): the CreateTime
window (message.timestamp.*.max.ms) on its fast path (header only: the default,
no lower bound) and with a lower bound (every record's timestamp read), and
recompression to another codec (compression.type other than producer).

One 1,000-record batch of ~110-byte IoT-like values per source codec, in this
process; times are per batch, best of three rounds. Run:

    .venv/bin/python bench/recompress_bench.py
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from shoal.protocol.batches import GZIP, LZ4, NONE, SNAPPY, ZSTD, build_batch
from shoal.protocol.recompress import recompress, timestamp_violations
from shoal.protocol.records import validate_produce

CODECS = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}
LONG_MAX = 2**63 - 1
HOUR = 3_600_000


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def main() -> None:
    now = int(time.time() * 1000)
    recs = [
        (
            now + i,
            f"sensor-{i % 50}".encode(),
            (f'{{"t": {20 + i % 7}, "id": {i}}}' * 4).encode(),
            [],
        )
        for i in range(1000)
    ]
    print(
        "codec   batch B  window, header only  window, every record  "
        "recompress to zstd / gzip / lz4"
    )
    for codec, name in CODECS.items():
        raw = build_batch(recs, compression=codec)
        b = validate_produce(raw, 1 << 30, api_version=9)
        fast = per_call_us(lambda b=b: timestamp_violations(b, now, LONG_MAX, HOUR), 20_000)
        walk = per_call_us(lambda b=b: timestamp_violations(b, now, 24 * HOUR, HOUR), 30)
        targets = []
        for target in (ZSTD, GZIP, LZ4):
            if target == codec:
                targets.append("   kept")
            else:
                us = per_call_us(lambda b=b, t=target: recompress(b, t, None), 10)
                targets.append(f"{us / 1000:5.2f} ms")
        print(
            f"{name:7s} {len(raw):7d}  {fast:15.2f} us  {walk / 1000:17.2f} ms  "
            + " / ".join(targets)
        )


if __name__ == "__main__":
    main()
