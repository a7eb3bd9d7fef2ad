"""The transaction coordinator's writes on this broker: markers into the
partitions of a transaction, and its offsets into their groups."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from shoal.group.offsets import CommittedOffset
from shoal.storage.errors import StorageError
from shoal.txn.state import PendingOffset, TopicPartition

if TYPE_CHECKING:
    from shoal.broker.broker import Broker


class MarkerError(StorageError):
    """A marker could not be written here (the coordinator retries later)."""


class BrokerTxnIO:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def write_markers(
        self, producer_id: int, epoch: int, commit: bool, partitions: set[TopicPartition]
    ) -> None:
        futures: list[asyncio.Future[int]] = []
        for topic_name, index in sorted(partitions):
            topic = self.broker.topics.get(topic_name)
            if topic is None or index >= len(topic.partitions):
                continue  # deleted since: nothing left to mark
            part = topic.partitions[index]
            if not self.broker.owns(part):
                # Cluster mode: the partition's owner must write it; markers
                # through other brokers are not built yet (docs/TRANSACTIONS.md).
                raise MarkerError(
                    f"{topic_name}-{index} is owned by node {part.owner}: cannot write "
                    f"the marker for producer {producer_id} from here"
                )
            futures.append(
                await self.broker.engine.write_marker(
                    part.stream_id, producer_id, epoch, commit, 0, part.leader_epoch
                )
            )
        if futures:
            await asyncio.gather(*futures)

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
