"""Runs the links inside a broker: follows the link tables (polling one
version counter), creates and updates mirror topics, runs one LinkRunner per
active link, syncs group offsets, completes promotions and publishes each
partition's progress for `shoal link status`.

In a cluster every broker runs a manager: each mirrors the partitions it
owns (so a partition's mirroring moves with it); topic creation and
promotion completion are the controller's, so only one broker does them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from shoal.broker.broker import Broker
from shoal.config import TOPIC_KEYS
from shoal.link.groups import GroupSync, sync_groups
from shoal.link.mirror import LinkRunner
from shoal.link.reverse import ReverseRunner
from shoal.link.source import SourceCluster, SourceError
from shoal.link.spec import matches, mirror_name, parse_settings, patterns
from shoal.meta.links import (
    COPYING,
    MIRRORING,
    PROMOTED,
    PROMOTING,
    STOPPING,
    LinkRow,
    LinkStore,
    MirrorRow,
    ReverseRow,
)
from shoal.protocol.errors import KafkaError

log = logging.getLogger("shoal.link")

POLL_S = 0.5
TOPIC_SYNC_S = 5.0
GROUP_SYNC_S = 2.0
PROGRESS_S = 1.0


class LinkManager:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.store = LinkStore(broker.meta)
        self.version = -1
        self.links: dict[str, LinkRow] = {}
        self.mirrors: dict[str, MirrorRow] = {}
        self.runners: dict[str, LinkRunner] = {}
        self.reverse: dict[str, ReverseRow] = {}
        self.reverse_runners: dict[str, ReverseRunner] = {}
        self.groups: dict[str, dict[str, GroupSync]] = {}
        self.group_rounds: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._last: dict[str, float] = {}

    @classmethod
    async def start(cls, broker: Broker) -> LinkManager:
        mgr = cls(broker)
        broker.collectors.append(mgr.collect)
        await mgr.reload()  # mirror topics are read-only from the first request
        mgr._task = asyncio.create_task(mgr._loop(), name="links")
        return mgr

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for r in self.runners.values():
            await r.stop()
        for rr in self.reverse_runners.values():
            await rr.stop()
        await self._save_progress()

    def collect(self) -> Iterator[Any]:
        """Prometheus metrics of the mirror partitions this broker works on."""
        lag = GaugeMetricFamily(
            "shoal_link_lag_records",
            "records the source has that the mirror does not yet",
            labels=["link", "topic", "partition"],
        )
        copied = CounterMetricFamily(
            "shoal_link_copied_bytes",
            "bytes copied from the source since this broker took the partition",
            labels=["link", "topic", "partition"],
        )
        failing = GaugeMetricFamily(
            "shoal_link_partition_error",
            "1 while the partition's last round failed (see shoal link status)",
            labels=["link", "topic", "partition"],
        )
        lag_s = GaugeMetricFamily(
            "shoal_link_lag_seconds",
            "seconds since the mirror last held the source's end (0 while it does)",
            labels=["link", "topic", "partition"],
        )
        now = int(time.time() * 1000)
        for name, runner in self.runners.items():
            for p in list(runner.parts.values()):
                labels = [name, p.mirror, str(p.partition)]
                lag.add_metric(labels, p.progress.lag)
                seconds = p.progress.lag_seconds(now)
                if seconds is not None:
                    lag_s.add_metric(labels, seconds)
                copied.add_metric(labels, p.progress.bytes)
                failing.add_metric(labels, 1 if p.progress.error else 0)
        synced = GaugeMetricFamily(
            "shoal_link_group_partitions",
            "partitions of a synced group, by whether the mirror holds the source's offset",
            labels=["link", "group", "state"],
        )
        for name, groups in self.groups.items():
            for group, g in groups.items():
                synced.add_metric([name, group, "synced"], g.synced)
                synced.add_metric([name, group, "behind"], g.behind)
        rounds = CounterMetricFamily(
            "shoal_link_group_sync_rounds", "group offset sync rounds completed", labels=["link"]
        )
        for name, count in self.group_rounds.items():
            rounds.add_metric([name], count)
        yield from (lag, lag_s, copied, failing, synced, rounds)
        yield from self._collect_reverse()

    def _collect_reverse(self) -> Iterator[Any]:
        """The reverse link's partitions this broker copies back: its lag is
        the rollback point's distance, what an operator alerts on."""
        labels = ["link", "topic", "partition"]
        lag = GaugeMetricFamily(
            "shoal_link_reverse_lag_records",
            "offsets written here after promotion not yet copied back to the source",
            labels=labels,
        )
        copied = CounterMetricFamily(
            "shoal_link_reverse_copied_bytes",
            "bytes copied back to the source since this broker took the partition",
            labels=labels,
        )
        failing = GaugeMetricFamily(
            "shoal_link_reverse_partition_error",
            "1 while the partition's last copy back failed (see shoal link status)",
            labels=labels,
        )
        for name, runner in self.reverse_runners.items():
            for (mirror, index), p in list(runner.parts.items()):
                key = [name, mirror, str(index)]
                lag.add_metric(key, max(0, p.progress.shoal_end - p.next_offset))
                copied.add_metric(key, p.progress.bytes)
                failing.add_metric(key, 1 if p.progress.error else 0)
        yield from (lag, copied, failing)

    def _leader(self) -> bool:
        """Does this broker do the cluster-wide work (topics, promotion)?"""
        c = self.broker.cluster
        return c is None or c.controller_id == self.broker.node.node_id

    async def reload(self) -> None:
        version = await self.store.version()
        if version == self.version:
            return
        self._last.pop("_sync_topics", None)  # a new link's topics appear at once
        self.version, links, mirrors = await self.store.load()
        self.links = {link.name: link for link in links}
        self.mirrors = {m.mirror: m for m in mirrors}
        self.reverse = {r.mirror: r for r in await self.store.reverse()}
        # Read-only here: mirrors not yet promoted, and reversed topics being
        # (or already) rolled back to the source.
        self.broker.mirrors = {
            m.mirror: m.link
            for m in mirrors
            if m.state != PROMOTED
            or (m.mirror in self.reverse and self.reverse[m.mirror].state != COPYING)
        }
        await self._reload_reverse()
        forwarders: dict[str, Callable[[str, int, bytes], Awaitable[int]]] = {}
        for name in list(self.runners):
            link = self.links.get(name)
            if link is None or link.paused:
                await self.runners.pop(name).stop()
                log.info("link %s: stopped (%s)", name, "paused" if link else "deleted")
        for link in self.links.values():
            if link.paused:
                continue
            runner = self.runners.get(link.name)
            if runner is None:
                source = SourceCluster(link.source, parse_settings(link.settings))
                runner = self.runners[link.name] = LinkRunner(self.broker, link.name, source)
                runner.start()
                log.info("link %s: started (source %s)", link.name, link.source)
            runner.mirrors = {m.mirror: m for m in mirrors if m.link == link.name}
            if link.write_through:
                for m in runner.mirrors.values():
                    if m.state in (MIRRORING, PROMOTING):
                        forwarders[m.mirror] = runner.forward
        self.broker.forwarders = forwarders

    async def _reload_reverse(self) -> None:
        """One ReverseRunner per active link with topics still copied back."""
        active: dict[str, dict[str, tuple[ReverseRow, MirrorRow]]] = {}
        for r in self.reverse.values():
            link = self.links.get(r.link)
            m = self.mirrors.get(r.mirror)
            if link is None or link.paused or m is None or r.state not in (COPYING, STOPPING):
                continue
            active.setdefault(r.link, {})[r.mirror] = (r, m)
        for name in list(self.reverse_runners):
            if name not in active:
                await self.reverse_runners.pop(name).stop()
                log.info("link %s: reverse copy stopped", name)
        if not active:
            return
        ends = {(p.mirror, p.partition): p.mirror_end for p in await self.store.progress()}
        for name, topics in active.items():
            runner = self.reverse_runners.get(name)
            if runner is None:
                link = self.links[name]
                source = SourceCluster(link.source, parse_settings(link.settings))
                runner = ReverseRunner(self.broker, name, source, self.store)
                self.reverse_runners[name] = runner
                runner.start()
                log.info("link %s: reverse copy to %s started", name, link.source)
            runner.topics = topics
            runner.promotion_ends = {k: v for k, v in ends.items() if k[0] in topics}

    async def _wake(self) -> None:
        """Sleep POLL_S, or less when a runner's partition reached the
        source's end during promotion: then progress is saved and the
        promotion completed in this round, not a second later."""
        waits = [asyncio.ensure_future(r.reached_end.wait()) for r in self.runners.values()]
        try:
            if waits:
                await asyncio.wait(waits, timeout=POLL_S)
            else:
                await asyncio.sleep(POLL_S)
        finally:
            for w in waits:
                w.cancel()
        if any(r.reached_end.is_set() for r in self.runners.values()):
            for r in self.runners.values():
                r.reached_end.clear()
            self._last.pop("_save_progress", None)

    async def _loop(self) -> None:
        while True:
            await self._wake()
            for job, every in (
                (self.reload, 0.0),
                (self._save_progress, PROGRESS_S),
                (self._complete_promotions, 0.0),
                (self._producer_id_floor, PROGRESS_S),
                (self._sync_topics, TOPIC_SYNC_S),
                (self._sync_groups, GROUP_SYNC_S),
            ):
                name = job.__name__
                if time.monotonic() - self._last.get(name, 0.0) < every:
                    continue
                self._last[name] = time.monotonic()
                try:
                    await job()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("links: %s failed, retrying: %s", name.strip("_"), exc)

    async def _save_progress(self) -> None:
        rows = [p.progress for r in self.runners.values() for p in r.parts.values()]
        for row in rows:
            row.updated_ms = int(time.time() * 1000)
        await self.store.save_progress(rows)

    async def _sync_topics(self) -> None:
        """Create mirror topics for new matching source topics; keep partition
        counts and topic configs in line with the source."""
        if not self._leader():
            return
        for link in self.links.values():
            runner = self.runners.get(link.name)
            if runner is None:
                continue
            try:
                meta = await runner.source.metadata()
                wanted = [t for t in meta.partitions if matches(patterns(link.topics), t)]
                configs = await runner.source.topic_configs(wanted)
            except SourceError as exc:
                runner.error = str(exc)
                continue
            for src in wanted:
                await self._sync_topic(link, src, len(meta.partitions[src]), configs.get(src, {}))

    async def _sync_topic(self, link: LinkRow, src: str, count: int, raw: dict[str, str]) -> None:
        name = mirror_name(link.prefix, src)
        configs: dict[str, str | None] = {k: v for k, v in raw.items() if k in TOPIC_KEYS}
        m = self.mirrors.get(name)
        topics = self.broker.topics
        topic = topics.get(name)
        try:
            if m is None:
                if topic is not None:
                    log.warning(
                        "link %s: not mirroring %s: topic %s exists and is not a mirror",
                        link.name,
                        src,
                        name,
                    )
                    return
                # Recorded first: the topic is read-only from the moment it exists.
                await self.store.add_mirror(name, link.name, src)
                await self.reload()
                m = self.mirrors[name]
            if m.link != link.name or m.state == PROMOTED:
                return
            if topic is None:
                await topics.create(name, count, configs)
                log.info("link %s: mirror topic %s created (%d partitions)", link.name, name, count)
                return
            if count > len(topic.partitions):
                await topics.add_partitions(name, count)
            if {k: v for k, v in topic.overrides.items()} != configs:
                await topics.alter_configs(name, configs, [], replace=True)
        except KafkaError as exc:
            log.warning("link %s: mirror topic %s: %s", link.name, name, exc)

    async def _sync_groups(self) -> None:
        for link in self.links.values():
            runner = self.runners.get(link.name)
            if runner is None or not link.groups:
                continue
            try:
                self.groups[link.name] = await sync_groups(
                    self.broker, runner.source, link.groups, runner.mirrors
                )
                self.group_rounds[link.name] = self.group_rounds.get(link.name, 0) + 1
            except SourceError as exc:
                log.info("link %s: group sync: %s", link.name, exc)

    async def _producer_id_floor(self) -> None:
        """Cluster mode: producer ids another broker's mirrors brought in are
        not handed out here either."""
        if self.links and self.broker.cluster is not None:
            self.broker.producer_ids.skip_past(await self.store.producer_id_floor() - 1)

    async def _complete_promotions(self) -> None:
        """A promoting topic whose partitions all reached the source's end
        becomes a normal topic."""
        promoting = [m for m in self.mirrors.values() if m.state == PROMOTING]
        if not promoting or not self._leader():
            return
        done: dict[str, set[int]] = {}
        for p in await self.store.progress():
            if p.promoted:
                done.setdefault(p.mirror, set()).add(p.partition)
        finished = []
        for m in promoting:
            topic = self.broker.topics.get(m.mirror)
            if topic is not None and done.get(m.mirror, set()) >= set(range(len(topic.partitions))):
                finished.append(m.mirror)
        if finished and await self.store.set_state(finished, PROMOTED, only_from=PROMOTING):
            log.info("links: promoted %s: now written here", ", ".join(finished))
            await self.reload()
