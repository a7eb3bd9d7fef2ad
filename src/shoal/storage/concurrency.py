"""Many object-store calls at once, a bounded number in flight.

Compaction reads up to `compaction.max.objects` WAL objects per round and the
cleaner deletes every object whose grace is over; one after the other, each
waits a full round trip, and at S3 latencies a round falls behind a broker
that writes WAL objects steadily (the soak bench saw the object count climb
for minutes). A few in flight keep the order of results and bound memory and
connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Requests in flight per call: enough to hide a round trip, few enough not
#: to flood the store's connection pool.
MAX_IN_FLIGHT = 16


async def gather_bounded(
    calls: list[Callable[[], Awaitable[T]]], limit: int = MAX_IN_FLIGHT
) -> list[T]:
    """Results of `calls` in their order, at most `limit` running at once;
    the first failure propagates (the others are cancelled)."""
    sem = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await call()

    tasks = [asyncio.ensure_future(one(c)) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
