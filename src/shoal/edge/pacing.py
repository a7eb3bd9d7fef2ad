"""Pacing: reconnect backoff with full jitter, token buckets, and the shared
bandwidth cap handed to lanes by priority.

Full jitter (a uniform delay between zero and the capped exponential) is what
keeps a thousand gateways that lost the same uplink from reconnecting in the
same second; the cap keeps a long outage from pushing retries out for hours.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections.abc import Callable


class Backoff:
    """Exponential backoff with full jitter and a cap."""

    def __init__(
        self,
        initial_ms: float,
        max_ms: float,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial_ms = initial_ms
        self.max_ms = max_ms
        self.attempt = 0
        self._rng = rng

    def ceiling_ms(self) -> float:
        """The upper bound of the next delay (before jitter)."""
        return float(min(self.max_ms, self.initial_ms * (2 ** min(self.attempt, 62))))

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; each call counts an attempt."""
        delay = self._rng() * self.ceiling_ms()
        self.attempt += 1
        return delay / 1000

    def reset(self) -> None:
        self.attempt = 0


class TokenBucket:
    """`rate` bytes per second, at most `burst` saved up. A request larger than
    the burst is allowed to overdraw, so any size goes through at the rate."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = float(rate)
        self.burst = float(max(burst, 1))
        self._clock = clock
        self.tokens = self.burst
        self._last = clock()

    def refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now

    def try_take(self, n: float) -> bool:
        self.refill()
        if self.tokens >= min(n, self.burst):
            self.tokens -= n
            return True
        return False

    def wait_time(self, n: float) -> float:
        """Seconds until `try_take(n)` can succeed."""
        self.refill()
        need = min(n, self.burst) - self.tokens
        return max(0.0, need / self.rate) if self.rate > 0 else 0.0

    async def take(self, n: float) -> None:
        if not self.try_take(n):
            await asyncio.sleep(max(self.wait_time(n), 0.001))
            self.tokens -= n  # the wait paid for it


class PriorityScheduler:
    """One token bucket shared by every lane. While bytes are scarce, waiting
    requests are granted strictly by priority (0 first), first come first
    served within a priority; a lower priority gets bandwidth only while no
    higher one is waiting. rate <= 0 means no cap: grants are immediate."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.bucket = TokenBucket(rate, burst, clock) if rate > 0 else None
        self._heap: list[tuple[int, int, float, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    async def acquire(self, priority: int, n: float) -> None:
        if self.bucket is None:
            return
        if not self._heap and self.bucket.try_take(n):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (priority, next(self._seq), n, fut))
        self._pump()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # granted and then cancelled: give the bytes back
                self.bucket.tokens += n
            self._heap = [x for x in self._heap if x[3] is not fut]
            heapq.heapify(self._heap)
            raise

    def _pump(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        bucket = self.bucket
        assert bucket is not None
        while self._heap:
            _prio, _seq, n, fut = self._heap[0]
            if fut.done():
                heapq.heappop(self._heap)
                continue
            if not bucket.try_take(n):
                break
            heapq.heappop(self._heap)
            fut.set_result(None)
        if self._heap:
            delay = bucket.wait_time(self._heap[0][2])
            self._timer = asyncio.get_running_loop().call_later(max(delay, 0.0005), self._pump)
