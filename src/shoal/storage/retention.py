"""Where retention moves a stream's start offset. Pure functions over ranges.

Like Kafka, which deletes whole segments, Shoal trims whole ranges (blocks):
a range goes when its newest record is older than retention.ms, or when the
stream without it still holds at least retention.bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from shoal.meta.store import RangeRecord


def retention_point(
    ranges: Sequence[RangeRecord],
    start_offset: int,
    now_ms: int,
    retention_ms: int,
    retention_bytes: int,
) -> int:
    """The new start offset (>= start_offset) that retention allows."""
    live = [r for r in ranges if r.end_offset > start_offset]
    new_start = start_offset
    if retention_ms >= 0:
        cutoff = now_ms - retention_ms
        for r in live:
            if r.max_timestamp >= cutoff:
                break
            new_start = r.end_offset
    if retention_bytes >= 0:
        total = sum(r.size for r in live)
        for r in live:
            if total - r.size < retention_bytes:
                break
            total -= r.size
            new_start = max(new_start, r.end_offset)
    return new_start
