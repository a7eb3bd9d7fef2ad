"""This broker as a cluster member: lease, controller candidacy, ownership.

Two loops. The lease loop renews this broker's lease every heartbeat, runs a
controller round when it holds the controller lease, and keeps the list of
live brokers (for Metadata, FindCoordinator and preferred read replicas). The
watch loop reloads topics and owners from the metadata store and reconciles:
partitions assigned here are opened (taking the stream, epoch bump) at once,
so the old owner is fenced and the first produce finds the stream ready;
partitions moved away are forgotten.

A broker whose lease lapsed by its own clock (paused, cut off from the
database) stops accepting writes at once, drops everything it owned and
registers again as a fresh incarnation.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from shoal.broker.topics import Topic, TopicCatalog
from shoal.cluster.controller import BalanceConfig, Controller
from shoal.cluster.traffic import TrafficMeter
from shoal.config import BrokerConfig
from shoal.group.coordinator import GroupCoordinator
from shoal.meta.cluster import BrokerRow, ClusterStore, Move
from shoal.meta.groups import GroupRepository
from shoal.meta.store import MetaStore, PartitionRecord, now_ms
from shoal.protocol.errors import ErrorCode
from shoal.storage.errors import StorageError
from shoal.storage.inventory import reconcile
from shoal.storage.streams import StreamEngine

log = logging.getLogger("shoal.cluster")


class ClusterMember:
    def __init__(
        self,
        config: BrokerConfig,
        meta: MetaStore,
        engine: StreamEngine,
        catalog: TopicCatalog,
        groups: GroupCoordinator,
        node_id: int,
        host: str,
        port: int,
        rack: str | None,
    ) -> None:
        self.config = config
        self.store = ClusterStore(meta)
        self.engine = engine
        self.catalog = catalog
        self.groups = groups
        self.node_id, self.host, self.port, self.rack = node_id, host, port, rack
        self.session_ms = int(config["broker.session.timeout.ms"])
        self.heartbeat_ms = int(config["broker.heartbeat.interval.ms"])
        self.refresh_ms = int(config["cluster.refresh.interval.ms"])
        self.controller = Controller(
            self.store,
            BalanceConfig(
                enable=bool(config["balancer.enable"]),
                band=int(config["balancer.band.percent"]) / 100,
                cooldown_ms=int(config["balancer.cooldown.ms"]),
                max_moves=int(config["balancer.max.moves"]),
                interval_ms=int(config["balancer.interval.ms"]),
            ),
            # renewed within the last two heartbeats
            fresh_lease_ms=max(0, self.session_ms - 2 * self.heartbeat_ms),
        )
        self.incarnation: int | None = None
        self._deadline = 0.0  # monotonic: our lease is safe until then
        self.live: list[BrokerRow] = []
        self.controller_id = -1
        self.is_controller = False
        self._opened: dict[int, int] = {}  # stream id -> leader epoch opened under
        # (catalog version, incarnation) of the last reconcile that opened
        # everything it found ours: until either moves, another finds nothing
        self._settled: tuple[int, int | None] | None = None
        #: ((catalog version, live broker ids), partitions per broker): _owner_counts
        self._counts: tuple[tuple[int, tuple[int, ...]], dict[int, int]] | None = None
        self._adopted: set[str] = set()
        self._adopting = False
        self._live_ids: tuple[int, ...] = ()
        self.traffic = TrafficMeter(self.controller.balance.interval_ms / 1000)
        self._tasks: list[asyncio.Task[None]] = []
        self._wake_watch = asyncio.Event()
        engine.owner = node_id
        groups.gate = self._gate
        groups.release_all()

    # lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """The lease is renewed from the first heartbeat on, while the first
        reconcile opens what is ours: on PostgreSQL opening 10,000 partitions
        took longer than the lease has before it must be renewed, and a
        broker that renewed only after it lost its lease, and its
        partitions, straight after starting."""
        await self._join()
        await self._heartbeat_once()
        self._tasks = [asyncio.create_task(self._lease_loop(), name="cluster-lease")]
        try:
            await self._watch_once()
        except BaseException:
            self._tasks[0].cancel()
            raise
        self._tasks.append(asyncio.create_task(self._watch_loop(), name="cluster-watch"))

    async def stop(self) -> None:
        """Graceful: commit what we wrote, then give our lease back so the
        controller hands our partitions on without waiting for expiry."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.engine.wal.close()
        if self.incarnation is not None:
            try:
                await self.store.deregister(self.node_id, self.incarnation)
            except Exception as exc:  # the lease then expires on its own
                log.warning("could not deregister: %s", exc)

    async def _join(self) -> None:
        """Register; on a cold start (no broker runs) first adopt objects
        past the metadata's end, as a single node does: nobody writes, so
        they are a crash's uploads or newer than a restored backup.

        Live-looking leases are watched (outside the lock, so brokers
        starting together wait side by side): one renewed, or a new
        registration, means a broker runs and nothing is adopted; leases
        that lapse unrenewed (rows of a just-restored backup) are waited
        out. The look at an empty cluster, the adoption and the
        registration happen under one lock, so exactly one broker of those
        starting together finds the cluster empty."""
        seen: dict[int, int] | None = None
        while True:
            async with self.store.startup_lock():
                live = {b.node_id: b.lease_expiry_ms for b in await self.store.live_brokers()}
                if not live:
                    adopted = await reconcile(self.engine.store, self.engine.meta, self.node_id)
                    if adopted:
                        log.warning(
                            "node %d: adopted %d offsets past the metadata's end at a cold start",
                            self.node_id,
                            adopted,
                        )
                    await self._register()
                    return
            if seen is not None and any(seen.get(n) != e for n, e in live.items()):
                break  # renewed, or newly registered: a broker runs
            seen = live
            await asyncio.sleep(min(self.heartbeat_ms, 1000) / 4000)
        await self._register()

    @property
    def active(self) -> bool:
        """True while our lease is certainly valid: only then do we write."""
        return self.incarnation is not None and time.monotonic() < self._deadline

    def owns(self, part: PartitionRecord) -> bool:
        return part.owner == self.node_id and self.active

    # lease -----------------------------------------------------------------

    async def _register(self) -> None:
        sent = time.monotonic()
        self.incarnation = await self.store.register(
            self.node_id, self.host, self.port, self.rack, self.session_ms
        )
        self._deadline = sent + self.session_ms * 0.75 / 1000
        log.info("registered as node %d (incarnation %d)", self.node_id, self.incarnation)

    def _step_down(self, why: str) -> None:
        """Lost our lease: stop writing, forget what we owned."""
        log.warning("node %d lost its lease (%s): dropping its partitions", self.node_id, why)
        self.incarnation = None
        self.is_controller = False
        for sid in list(self._opened):
            self.engine.forget(sid)
        self._opened.clear()
        for gid in list(self._adopted):
            self.groups.release(gid)
        self._adopted.clear()

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self._next_beat())
            try:
                await self._heartbeat_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    def _next_beat(self) -> float:
        """Seconds to the next heartbeat: the interval, or, on the
        controller, just past the moment another broker's lease runs out if
        that comes first, so a dead broker's partitions move as soon as its
        lease lapses rather than up to an interval later."""
        wait = self.heartbeat_ms / 1000
        if self.is_controller:
            others = [b.lease_expiry_ms for b in self.live if b.node_id != self.node_id]
            if others:
                due = (min(others) - now_ms()) / 1000 + 0.02
                wait = min(wait, max(due, 0.02))
        return wait

    async def _heartbeat_once(self) -> None:
        if self.incarnation is not None and time.monotonic() >= self._deadline:
            self._step_down("lease lapsed before renewal")
        if self.incarnation is None:
            await self._register()
            self._wake_watch.set()
        assert self.incarnation is not None
        sent = time.monotonic()
        bytes_in, bytes_out, window = self.traffic.rates()
        load = await asyncio.to_thread(window.to_json) if window is not None else None
        if not await self.store.renew(
            self.node_id, self.incarnation, self.session_ms, bytes_in, bytes_out, load
        ):
            self._step_down("lease expired or taken over")
            return
        self._deadline = sent + self.session_ms * 0.75 / 1000
        self.is_controller = await self.store.take_controller(
            self.node_id, self.incarnation, self.session_ms
        )
        if self.is_controller:
            moves = await self.controller.round()
            if moves:
                self._wake_watch.set()
        now = now_ms()
        self.live = await self.store.live_brokers(now)
        row = await self.store.controller()
        self.controller_id = row.node_id if row is not None and row.lease_expiry_ms >= now else -1
        ids = tuple(b.node_id for b in self.live)
        if ids != self._live_ids:
            self._live_ids = ids
            await self._regroup()

    def record(self, topic_id: int, partition: int, bytes_in: int, bytes_out: int) -> None:
        """Traffic of a partition on this broker, reported with the lease."""
        self.traffic.record(topic_id, partition, bytes_in, bytes_out)

    # ownership -------------------------------------------------------------

    async def _watch_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake_watch.wait(), self.refresh_ms / 1000)
            except TimeoutError:
                pass
            self._wake_watch.clear()
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("refreshing topics and owners failed: %s", exc)

    async def _watch_once(self) -> None:
        gone = await self.catalog.refresh()
        for topic in gone:
            for p in topic.partitions:
                self.engine.forget(p.stream_id)
                self._opened.pop(p.stream_id, None)
        if self._settled != (self.catalog.version, self.incarnation):
            # 4 times a second, and with a fleet's 10,000 partitions a pass
            # over them held the event loop ~7 ms to find nothing to do.
            await self.reconcile()

    async def reconcile(self) -> None:
        """Open what is ours, forget what is not."""
        if not self.active:
            return
        seen = (self.catalog.version, self.incarnation)
        mine: dict[int, tuple[Topic, PartitionRecord]] = {}
        for topic in self.catalog.all():
            for p in topic.partitions:
                if p.owner == self.node_id:
                    mine[p.stream_id] = (topic, p)
        for sid, epoch in list(self._opened.items()):
            entry = mine.get(sid)
            if entry is None or entry[1].leader_epoch != epoch:
                self.engine.forget(sid)
                del self._opened[sid]
                if entry is None:
                    log.info("stream %d moved away from node %d", sid, self.node_id)
        todo = [(sid, t, p) for sid, (t, p) in mine.items() if sid not in self._opened]
        await self._open(todo, seen)

    async def _open(
        self, todo: list[tuple[int, Topic, PartitionRecord]], seen: tuple[int, int | None] | None
    ) -> None:
        """Open these partitions assigned here; with `seen`, the catalog
        view they were all found in, which counts as settled if every one
        opened."""
        if not todo:
            if seen is not None:
                self._settled = seen
            return
        incarnation = self.incarnation
        results = await asyncio.gather(
            *(self.engine.open(sid) for sid, _t, _p in todo), return_exceptions=True
        )
        if self.incarnation != incarnation:
            # Our lease lapsed while these were opening: _step_down has
            # already run, so do not count them as ours (the next reconcile,
            # under the new incarnation, opens what is still assigned here).
            for sid, _t, _p in todo:
                self.engine.forget(sid)
            return
        done: list[tuple[int, int]] = []
        settled = True
        for (sid, topic, p), res in zip(todo, results, strict=True):
            if isinstance(res, StorageError):
                # Our view is stale (the owner changed again): next refresh.
                log.info("could not take %s-%d: %s", topic.name, p.partition, res)
                settled = False
                continue
            if isinstance(res, BaseException):
                log.warning("opening %s-%d failed: %s", topic.name, p.partition, res)
                settled = False
                continue
            if self._opened.get(sid) == p.leader_epoch:
                continue  # a concurrent reconcile (assign_new's, the watch's) took it too
            self._opened[sid] = p.leader_epoch
            done.append((topic.id, p.partition))
            log.info(
                "node %d now owns %s-%d (leader epoch %d)",
                self.node_id,
                topic.name,
                p.partition,
                p.leader_epoch,
            )
        await self.store.finish_moves(self.node_id, done)
        if settled and seen is not None:
            self._settled = seen

    async def assign_new(self, topics: list[Topic]) -> None:
        """Give new partitions (of a CreateTopics' or CreatePartitions'
        topics) owners at once (the controller would on its next round),
        so the first produce does not wait for it: one transaction and one
        batch of opens for all of them."""
        self.live = await self.store.live_brokers()
        live = [b for b in self.live if not b.draining]
        if not live:
            return
        counts = self._owner_counts(live)
        moves = []
        for topic in topics:
            for p in topic.partitions:
                if p.owner is None:
                    target = min(counts, key=lambda n: (counts[n], n))
                    counts[target] += 1
                    moves.append(Move(topic.id, p.partition, p.stream_id, None, target))
        done = {(m.topic_id, m.partition): m.new_owner for m in await self.store.apply_moves(moves)}
        todo: list[tuple[int, Topic, PartitionRecord]] = []
        for topic in topics:
            views = [topic]
            current = self.catalog.get(topic.name)  # a refresh may have replaced it meanwhile
            if current is not None and current is not topic and current.id == topic.id:
                views.append(current)
            for view in views:
                view.partitions = [
                    PartitionRecord(
                        p.partition, p.stream_id, p.leader_epoch + 1, done[(topic.id, p.partition)]
                    )
                    if (topic.id, p.partition) in done and p.owner is None
                    else p
                    for p in view.partitions
                ]
            self.catalog.touch(topic.name)
            # Only these topics' partitions: a whole reconcile (every
            # partition of the catalog) for each topic created made creating
            # 2,000 topics of 5 partitions take ~1 minute of the broker's loop.
            view = views[-1]
            todo.extend(
                (p.stream_id, view, p)
                for p in view.partitions
                if p.owner == self.node_id and p.stream_id not in self._opened
            )
        await self._open(todo, None)

    def _owner_counts(self, live: list[BrokerRow]) -> dict[int, int]:
        """Partitions per live broker, for placing a new topic's: counted
        over the catalog once per catalog version (and set of live brokers),
        then kept up to date by the placements made here, which change
        the catalog without a new version. Counting every partition for
        each topic created was the other half of creation's quadratic cost."""
        key = (self.catalog.version, tuple(b.node_id for b in live))
        if self._counts is None or self._counts[0] != key:
            counts = {b.node_id: 0 for b in live}
            for t in self.catalog.all():
                for p in t.partitions:
                    if p.owner in counts:
                        counts[p.owner] += 1
            self._counts = (key, counts)
        return self._counts[1]

    # brokers and groups --------------------------------------------------------

    def broker(self, node_id: int | None) -> BrokerRow | None:
        for b in self.live:
            if b.node_id == node_id:
                return b
        return None

    def coordinator_for(self, group_id: str) -> int:
        """Rendezvous hashing over live brokers: a broker joining or leaving
        moves only the groups it wins or held."""
        if not self.live:
            return self.node_id
        return max(self.live, key=lambda b: _weight(group_id, b.node_id)).node_id

    def _gate(self, group_id: str) -> ErrorCode | None:
        if not self.active:
            return ErrorCode.not_coordinator
        if self.coordinator_for(group_id) != self.node_id:
            return ErrorCode.not_coordinator
        if self._adopting and group_id not in self._adopted:
            return ErrorCode.coordinator_load_in_progress
        self._adopted.add(group_id)
        return None

    async def _regroup(self) -> None:
        """Live brokers changed: load groups that hash here now, drop others."""
        self._adopting = True
        try:
            for gid in list(self._adopted):
                if self.coordinator_for(gid) != self.node_id:
                    self.groups.release(gid)
                    self._adopted.discard(gid)
            repo: GroupRepository = self.groups.offsets.repo
            for gid in await repo.group_ids():
                if self.coordinator_for(gid) == self.node_id and gid not in self._adopted:
                    await self.groups.adopt(gid)
                    self._adopted.add(gid)
        finally:
            self._adopting = False

    def read_replica(self, owner: int | None, client_rack: str | None, key: str) -> int:
        """A live broker in the client's rack to fetch from, or -1 (stay)."""
        if not client_rack:
            return -1
        here = self.broker(owner)
        if here is not None and here.rack == client_rack:
            return -1
        same = [b for b in self.live if b.rack == client_rack]
        if not same:
            return -1
        return max(same, key=lambda b: _weight(key, b.node_id)).node_id


def _weight(key: str, node_id: int) -> int:
    digest = hashlib.blake2b(f"{key}\0{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
