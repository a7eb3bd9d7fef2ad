"""Background upkeep of the log: retention, compaction, object cleanup,
producer-state expiry. Each runs on its own interval; a failure is logged and
retried next round, never fatal."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from shoal.broker.broker import Broker
from shoal.storage.diskspace import is_disk_full
from shoal.storage.keycompaction import KeyCompactionPolicy

log = logging.getLogger("shoal.maintenance")


class Maintenance:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        cfg = self.broker.config
        self._tasks = [
            asyncio.create_task(
                self._every(
                    cfg["log.retention.check.interval.ms"], self.retention_once, "retention"
                )
            ),
            asyncio.create_task(
                self._every(cfg["compaction.interval.ms"], self.compaction_once, "compaction")
            ),
            asyncio.create_task(
                self._every(cfg["log.cleaner.backoff.ms"], self.key_compaction_once, "cleaner")
            ),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _every(
        self, interval_ms: int, job: Callable[[], Awaitable[object]], name: str
    ) -> None:
        disk_full = False
        while True:
            await asyncio.sleep(interval_ms / 1000)
            try:
                await job()
                disk_full = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_disk_full(exc):
                    log.exception("%s round failed; retrying next round", name)
                elif not disk_full:  # one line per full-disk episode, not per round
                    disk_full = True
                    log.warning("%s rounds skipped while the disk is full: %s", name, exc)

    async def retention_once(self) -> int:
        """Apply retention.ms / retention.bytes to every partition whose
        cleanup.policy includes delete; returns the partitions trimmed."""
        topics = self.broker.topics
        now = int(time.time() * 1000)
        trimmed = 0
        for topic in topics.all():
            if "delete" not in str(topics.effective(topic, "cleanup.policy")):
                continue
            ms = int(topics.effective(topic, "retention.ms"))
            size = int(topics.effective(topic, "retention.bytes"))
            if ms < 0 and size < 0:
                continue
            for p in list(topic.partitions):
                if not self.broker.owns(p):
                    continue
                moved = await self.broker.engine.apply_retention(p.stream_id, now, ms, size)
                if moved is not None:
                    trimmed += 1
                    log.info(
                        "retention moved log start of %s-%d from %d to %d "
                        "(retention.ms=%d retention.bytes=%d)",
                        topic.name,
                        p.partition,
                        moved[0],
                        moved[1],
                        ms,
                        size,
                    )
        cutoff = now - int(self.broker.config["producer.id.expiration.ms"])
        self.broker.engine.expire_producers(cutoff)
        expired = await self.broker.meta.expire_producers(cutoff)
        if expired:
            log.info("forgot %d idle producers", expired)
        return trimmed

    async def key_compaction_once(self) -> int:
        """Clean every partition of topics with cleanup.policy=compact."""
        topics = self.broker.topics
        cleaned = 0
        for topic in topics.all():
            if "compact" not in str(topics.effective(topic, "cleanup.policy")):
                continue
            policy = KeyCompactionPolicy(
                now_ms=int(time.time() * 1000),
                min_lag_ms=int(topics.effective(topic, "min.compaction.lag.ms")),
                delete_retention_ms=int(topics.effective(topic, "delete.retention.ms")),
                min_dirty_ratio=float(topics.effective(topic, "min.cleanable.dirty.ratio")),
                block_bytes=int(self.broker.config["compaction.block.bytes"]),
            )
            for p in list(topic.partitions):
                if not self.broker.owns(p):
                    continue
                if await self.broker.engine.compact_keys(p.stream_id, policy):
                    cleaned += 1
        return cleaned

    async def compaction_once(self) -> None:
        engine = self.broker.engine
        # At most an interval's worth of rounds: the rest waits for the next.
        until = time.monotonic() + self.broker.config["compaction.interval.ms"] / 1000
        await engine.compactor.catch_up(until)
        await engine.compactor.merge_once()
        cluster = self.broker.cluster
        sweep: set[int] | None = None  # single node: every upload is ours
        if cluster is not None:
            sweep = {self.broker.node.node_id}
            if cluster.is_controller:
                # Brokers that died (or left) leave WAL and compacted objects
                # behind: the controller rewrites and merges them so that their
                # streams stay compact, and collects their uncommitted uploads.
                live = {b.node_id for b in cluster.live}
                gone = await self.broker.meta.wal_nodes() - live
                for node in gone:
                    await engine.compactor.catch_up(until, node)
                for node in await self.broker.meta.object_nodes() - live:
                    await engine.compactor.merge_once(node)
                sweep |= {n for n in range(0, 1 + max(live | gone | {0}))} - live
        await engine.cleaner.run_once(nodes=sweep)
