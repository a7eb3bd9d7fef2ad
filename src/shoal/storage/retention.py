"""Where retention moves a stream's start offset. Pure functions over ranges.

Like Kafka, which deletes whole segments, Shoal trims whole ranges (blocks):
a range goes when its newest record is older than retention.ms, or when the
stream without it still holds at least retention.bytes.
"""

from __future__ import annotations

from collections.abc import Sequence


def retention_point(
    ends: Sequence[int],
    sizes: Sequence[int],
    max_timestamps: Sequence[int],
    start_offset: int,
    now_ms: int,
    retention_ms: int,
    retention_bytes: int,
) -> int:
    """The new start offset (>= start_offset) that retention allows, given
    a stream's ranges in offset order as columns (see rangeindex.py)."""
    live = [i for i, end in enumerate(ends) if end > start_offset]
    new_start = start_offset
    if retention_ms >= 0:
        cutoff = now_ms - retention_ms
        for i in live:
            if max_timestamps[i] >= cutoff:
                break
            new_start = ends[i]
    if retention_bytes >= 0:
        total = sum(sizes[i] for i in live)
        for i in live:
            if total - sizes[i] < retention_bytes:
                break
            total -= sizes[i]
            new_start = max(new_start, ends[i])
    return new_start
