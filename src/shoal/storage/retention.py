"""Where retention moves a stream's start offset. Pure functions over ranges.

Like Kafka, which deletes whole segments, Shoal trims whole ranges (blocks):
a range goes when its newest record is older than retention.ms, or when the
stream without it still holds at least retention.bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from shoal.meta.store import R_END, R_MAX_TIMESTAMP, R_SIZE, Range


def retention_point(
    ranges: Sequence[Range],
    start_offset: int,
    now_ms: int,
    retention_ms: int,
    retention_bytes: int,
) -> int:
    """The new start offset (>= start_offset) that retention allows."""
    live = [r for r in ranges if r[R_END] > start_offset]
    new_start = start_offset
    if retention_ms >= 0:
        cutoff = now_ms - retention_ms
        for r in live:
            if r[R_MAX_TIMESTAMP] >= cutoff:
                break
            new_start = r[R_END]
    if retention_bytes >= 0:
        total = sum(r[R_SIZE] for r in live)
        for r in live:
            if total - r[R_SIZE] < retention_bytes:
                break
            total -= r[R_SIZE]
            new_start = max(new_start, r[R_END])
    return new_start
