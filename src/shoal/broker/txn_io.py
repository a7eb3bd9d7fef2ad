"""The transaction coordinator's writes on this broker: markers into the
partitions of a transaction, and its offsets into their groups.

A partition this broker owns gets its marker directly. In cluster mode one
owned by another broker gets it through the metadata store: the coordinator
adds a txn_markers row, the owner's MarkerPoller writes the marker and
deletes the row in the WAL commit that makes it durable, and the coordinator
waits for its rows to be gone. A partition that moves meanwhile is marked by
its next owner; nothing is asked of a broker over the network.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import TYPE_CHECKING

from shoal.group.offsets import CommittedOffset
from shoal.meta.transactions import TxnRepository
from shoal.storage.errors import StorageError
from shoal.storage.producers import SequenceError
from shoal.txn.state import PendingOffset, TopicPartition

if TYPE_CHECKING:
    from shoal.broker.broker import Broker

log = logging.getLogger("shoal.txn_io")

#: how long the coordinator waits for other brokers' markers before the
#: EndTxn fails retriably (the decision stays saved; the sweep finishes it)
REMOTE_MARKER_WAIT_S = 30.0


class MarkerError(StorageError):
    """Markers could not all be written yet (the coordinator retries later)."""


class BrokerTxnIO:
    def __init__(self, broker: Broker, repo: TxnRepository) -> None:
        self.broker = broker
        self.repo = repo

    def _poll_s(self) -> float:
        return max(int(self.broker.config["cluster.refresh.interval.ms"]), 10) / 1000

    async def write_markers(
        self,
        tid: str,
        producer_id: int,
        epoch: int,
        commit: bool,
        partitions: set[TopicPartition],
    ) -> None:
        futures: list[asyncio.Future[int]] = []
        remote: list[int] = []
        for topic_name, index in sorted(partitions):
            topic = self.broker.topics.get(topic_name)
            if topic is None or index >= len(topic.partitions):
                continue  # deleted since: nothing left to mark
            part = topic.partitions[index]
            if not self.broker.owns(part):
                remote.append(part.stream_id)
                continue
            futures.append(
                await self.broker.engine.write_marker(
                    part.stream_id, producer_id, epoch, commit, 0, part.leader_epoch
                )
            )
        if remote:
            await self.repo.ask_markers(tid, producer_id, epoch, commit, remote)
        if futures:
            await asyncio.gather(*futures)
        if remote:
            deadline = time.monotonic() + REMOTE_MARKER_WAIT_S
            while (left := await self.repo.markers_left(tid)) > 0:
                if time.monotonic() > deadline:
                    raise MarkerError(f"{left} marker(s) for {tid!r} not written by their owners")
                await asyncio.sleep(self._poll_s())

    async def apply_offsets(self, offsets: dict[str, dict[TopicPartition, PendingOffset]]) -> None:
        stamp = int(time.time() * 1000)
        writes = [
            self.broker.groups.commit(
                group,
                {
                    tp: CommittedOffset(o.offset, o.leader_epoch, o.metadata, stamp)
                    for tp, o in parts.items()
                },
            )
            for group, parts in offsets.items()
            if parts
        ]
        if writes:
            await asyncio.gather(*writes)


class MarkerPoller:
    """Cluster mode: write the markers other brokers' coordinators asked of
    the partitions this broker owns (see the module docstring)."""

    def __init__(self, broker: Broker, repo: TxnRepository) -> None:
        self.broker = broker
        self.repo = repo
        self._inflight: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="txn-markers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        interval = max(int(self.broker.config["cluster.refresh.interval.ms"]), 10) / 1000
        while True:
            try:
                await self.poll_once()
            except Exception as exc:
                log.warning("transaction markers: poll failed: %s", exc)
            await asyncio.sleep(interval)

    async def poll_once(self) -> None:
        """Every pending marker is read (there are few: each goes once
        written) and those of partitions this broker owns written; the
        owned partitions are not listed first, which cost a fleet's broker
        a pass over 10,000 partitions 4 times a second, mostly with no
        marker pending."""
        for row in await self.repo.pending_markers():
            if row.id in self._inflight:
                continue
            found = self.broker.topics.by_stream(row.stream_id)
            if found is None or not self.broker.owns(found[1]):
                continue
            part = found[1]
            self._inflight.add(row.id)
            try:
                fut = await self.broker.engine.write_marker(
                    row.stream_id,
                    row.producer_id,
                    row.producer_epoch,
                    row.commit,
                    0,
                    part.leader_epoch,
                    marker_row=row.id,
                )
            except SequenceError as exc:
                # a newer epoch's marker is there already: this one is moot
                log.warning("marker for %r dropped: %s", row.transactional_id, exc)
                await self.repo.drop_marker(row.id)
                self._inflight.discard(row.id)
                continue
            except StorageError as exc:
                self._inflight.discard(row.id)
                log.warning(
                    "marker for %r on stream %d: %s", row.transactional_id, row.stream_id, exc
                )
                continue
            fut.add_done_callback(functools.partial(self._done, row.id))

    def _done(self, row_id: int, fut: asyncio.Future[int]) -> None:
        # On success the row is gone with the commit; on failure it is asked again.
        self._inflight.discard(row_id)
        if not fut.cancelled():
            fut.exception()


async def settle_group_offsets(broker: Broker, group_ids: list[str]) -> None:
    """Cluster mode, before OffsetFetch answers: offsets that a transaction
    coordinated by another broker has committed since are loaded from the
    metadata store into this group coordinator's cache (see
    TransactionCoordinator.settle_groups)."""
    for group in await broker.txn.settle_groups(group_ids):
        pending = broker.groups.pending_writes([group])
        if pending:
            await asyncio.gather(*(asyncio.shield(f) for f in pending), return_exceptions=True)
        _row, rows = await broker.groups.offsets.repo.load_group(group)
        broker.groups.offsets.replace(group, rows)
        log.info("group %s: offsets reloaded after a transaction ended on another broker", group)
