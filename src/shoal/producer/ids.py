"""Producer id allocation: blocks reserved from the metadata store, so that
InitProducerId costs a transaction only once per block."""

from __future__ import annotations

import asyncio

from shoal.meta.store import MetaStore

BLOCK = 1000


class ProducerIdAllocator:
    def __init__(self, meta: MetaStore, block: int = BLOCK) -> None:
        self.meta = meta
        self.block = block
        self._next = 0
        self._end = 0
        self._lock = asyncio.Lock()

    async def allocate(self) -> int:
        async with self._lock:
            if self._next >= self._end:
                self._next = await self.meta.allocate_counter("producer_id", self.block)
                self._end = self._next + self.block
            pid = self._next
            self._next += 1
            return pid

    def skip_past(self, pid: int) -> None:
        """Never hand out `pid` or below from the block in hand: a migration
        link mirrored batches of that producer id from its source, so a new
        producer with it would collide with their sequences. (The store's
        counter was raised past it; the next block comes from there.)"""
        if self._next <= pid:
            self._next = self._end = 0
