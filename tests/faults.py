"""A fault-injecting wrapper around the object store: errors, delays, outages."""

from __future__ import annotations

import asyncio

from shoal.storage.errors import ObjectStoreUnavailable
from shoal.storage.objectstore import ObjectStore, Payload


class FaultyStore(ObjectStore):
    def __init__(self, url: str = "memory:///") -> None:
        super().__init__(url)
        self.fail_puts = 0  # fail this many PUTs, then succeed
        self.put_delays: list[float] = []  # delay of each next PUT, in order
        self.down = False  # every call fails while set
        self.puts = 0
        self.failed_puts = 0

    async def put(self, key: str, data: Payload, *, create: bool = True) -> None:
        if self.put_delays:
            await asyncio.sleep(self.put_delays.pop(0))
        if self.down or self.fail_puts > 0:
            self.fail_puts = max(0, self.fail_puts - 1)
            self.failed_puts += 1
            raise ObjectStoreUnavailable(f"injected failure on {key}")
        self.puts += 1
        await super().put(key, data, create=create)

    async def get_range(self, key: str, start: int, end: int) -> memoryview:
        if self.down:
            raise ObjectStoreUnavailable(f"injected failure on {key}")
        return await super().get_range(key, start, end)
