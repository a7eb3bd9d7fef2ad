"""Keep a broker's copy of shared security state (ACLs, client quotas) in step
with the metadata store: every change bumps a version counter there, each
broker polls it and reloads when it moved, so a change made through one broker
takes effect on all of them within about one interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("shoal.security.sync")


class VersionPoller:
    def __init__(
        self,
        what: str,
        local_version: Callable[[], int],
        stored_version: Callable[[], Awaitable[int]],
        reload: Callable[[], Awaitable[str]],
        interval_s: float = 0.5,
    ) -> None:
        self.what = what
        self._local = local_version
        self._stored = stored_version
        self._reload = reload
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        """Reload if the stored version moved; True when it did."""
        if await self._stored() == self._local():
            return False
        summary = await self._reload()
        log.info("%s reloaded: %s", self.what, summary)
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"{self.what}-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # the store may be briefly unreachable
                log.warning("reloading %s failed: %s", self.what, exc)
