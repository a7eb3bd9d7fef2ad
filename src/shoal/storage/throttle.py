"""A token bucket for catch-up reads.

A broker is one event loop: a consumer reading a backlog from objects as fast
as it can takes the CPU that tail producers and consumers need. Bounding the
bytes per second served from objects (never the LogCache tail) keeps their
latency while the backlog still drains at a known rate.
"""

from __future__ import annotations

import asyncio
import time


class ByteRate:
    def __init__(self, bytes_per_s: float, burst_s: float = 0.1) -> None:
        self.rate = float(bytes_per_s)
        self.capacity = max(self.rate * burst_s, 1.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.waited_s = 0.0
        self.taken_bytes = 0

    async def take(self, n: int, pace: bool = True) -> None:
        """Wait until `n` bytes may go; a read larger than the burst goes in
        debt rather than waiting forever. A rate of 0 means unlimited; with
        `pace` off the bytes are only counted."""
        self.taken_bytes += n
        if self.rate <= 0 or not pace:
            return
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:
            delay = -self.tokens / self.rate
            self.waited_s += delay
            await asyncio.sleep(delay)
