"""Giving space back: delete objects no range refers to any more (after their
grace period), and objects that were uploaded but never committed (a crash
between PUT and commit)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from shoal.meta.store import MetaStore
from shoal.storage.caches import BlockCache
from shoal.storage.objectstore import ObjectStore
from shoal.storage.spares import is_spare

log = logging.getLogger("shoal.cleaner")

PREFIXES = ("wal/", "compacted/")


@dataclass(slots=True)
class CleanResult:
    deleted: int = 0
    orphans: int = 0


class Cleaner:
    def __init__(
        self,
        store: ObjectStore,
        meta: MetaStore,
        orphan_grace_ms: int,
        uploading: set[str] | None = None,
        cache: BlockCache | None = None,
    ) -> None:
        self.store = store
        self.meta = meta
        self.orphan_grace_ms = orphan_grace_ms
        # Keys this process has uploaded (or is uploading) but not committed
        # yet: never orphans, however slow their commit (a metadata outage).
        self.uploading = uploading if uploading is not None else set()
        self.totals = CleanResult()
        # This broker's blocks of deleted objects are dropped here.
        self.cache = cache

    async def run_once(self, *, orphans: bool = True, nodes: set[int] | None = None) -> CleanResult:
        """Delete due objects; with `orphans`, also uncommitted uploads of the
        given broker ids (None: every broker, for a single node). In a cluster
        a broker only sweeps its own uploads and, as controller, those of
        brokers that are gone: a live broker's slow commit is not an orphan."""
        result = CleanResult()
        now = int(time.time() * 1000)
        # Taken before the keys below: every object cached here had its row
        # then, so one missing from them was deleted (maybe by another broker).
        cached = self.cache.object_keys() if self.cache is not None else set()
        due = await self.meta.objects_due(now)
        await self.store.delete_many(due)
        await self.meta.forget_objects(due)
        result.deleted = len(due)
        known = await self.meta.object_keys() if orphans or cached else set()
        if self.cache is not None:
            for key in cached - known | set(due):
                self.cache.evict_object(key)
        if orphans:
            result.orphans = await self._orphans(now, nodes, known)
        if result.deleted or result.orphans:
            log.info(
                "deleted %d replaced objects and %d uncommitted uploads",
                result.deleted,
                result.orphans,
            )
        self.totals.deleted += result.deleted
        self.totals.orphans += result.orphans
        return result

    async def _orphans(self, now: int, nodes: set[int] | None, known: set[str]) -> int:
        """Objects in the store without a metadata row, older than the grace
        period (longer than any upload-to-commit window)."""
        candidates = [
            info
            for prefix in PREFIXES
            for info in await self.store.list(prefix)
            if info.key not in known
            and now - info.last_modified_ms >= self.orphan_grace_ms
            and (nodes is None or node_of(info.key) in nodes)
        ]
        count = await self._staged(now, nodes)
        if not candidates:
            return count
        # Re-check: an object may have been committed since the first look.
        known = await self.meta.object_keys()
        for info in candidates:
            if info.key in known or self._uploading(info.key):
                continue
            log.warning("deleting uncommitted object %s (%d bytes)", info.key, info.size)
            await self.store.delete(info.key)
            count += 1
        return count

    def _uploading(self, key: str) -> bool:
        """Uploaded by this process and not committed yet: the key itself, or
        (a compaction round's objects, named by its child process) the
        prefix up to its last dash."""
        return key in self.uploading or key[: key.rfind("-") + 1] in self.uploading

    async def _staged(self, now: int, nodes: set[int] | None) -> int:
        """A file store's staging files of uploads a crash cut short (KEY#N):
        never renamed into place, so never an object; past the grace period no
        upload of this process can still be writing one."""
        count = 0
        for info in await self.store.staged_leftovers(now - self.orphan_grace_ms):
            if is_spare(info.key):
                # unused that long (storage/spares.py), or a killed
                # process's: no broker's upload, whatever `nodes` sweeps
                log.debug("deleting spare file %s", info.key)
                await self.store.delete_staged(info.key)
                continue
            if nodes is not None and node_of(info.key) not in nodes:
                continue
            log.warning("deleting a cut-short upload's file %s (%d bytes)", info.key, info.size)
            await self.store.delete_staged(info.key)
            count += 1
        return count


def node_of(key: str) -> int | None:
    """The broker id in "wal/<node>/..." or "compacted/<node>/..."."""
    parts = key.split("/", 2)
    try:
        return int(parts[1]) if len(parts) > 2 else None
    except ValueError:
        return None
