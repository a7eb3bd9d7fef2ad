"""Keep a broker's copy of shared security state (ACLs, client quotas, SCRAM
credentials) in step with the metadata store: every change bumps a version
counter there, each broker polls it and reloads when it moved, so a change
made through one broker takes effect on all of them within about one
interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sized
from typing import Generic, Protocol, TypeVar

log = logging.getLogger("shoal.security.sync")

T = TypeVar("T", bound=Sized)
T_contra = TypeVar("T_contra", contravariant=True)


class Holder(Protocol[T_contra]):
    """What a poller keeps in step: the version it holds, and a way to take
    on new data (the Authorizer, Quotas, the CredentialCache)."""

    version: int

    def replace(self, data: T_contra, version: int, /) -> None: ...


class VersionPoller(Generic[T]):
    def __init__(
        self,
        what: str,
        holder: Holder[T],
        stored_version: Callable[[], Awaitable[int]],
        load: Callable[[], Awaitable[tuple[int, T]]],
        interval_s: float = 0.5,
    ) -> None:
        self.what = what
        self.holder = holder
        self._stored = stored_version
        self._load = load
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        """Reload if the stored version moved; True when it did."""
        if await self._stored() == self.holder.version:
            return False
        version, data = await self._load()
        self.holder.replace(data, version)
        log.info("%s reloaded: %d at version %d", self.what, len(data), version)
        return True

    async def applied(self, version: int) -> None:
        """After this broker changed the store (now at `version`): take the
        change on at once rather than at the next poll."""
        if version != self.holder.version:
            await self.refresh()

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
