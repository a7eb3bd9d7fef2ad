"""Committed offsets: an in-memory view, written through the metadata store.

Reads (OffsetFetch, lag, expiry) are served from memory; the coordinator is the
only writer of its groups, as the topic catalog is of topics. Every change goes
through one writer task: whatever queued while the previous transaction ran is
written in the next one, so N concurrent commits cost one transaction, and
changes reach the store in the order they were made. The in-memory view changes
only after the transaction, so an OffsetFetch never sees an offset that a crash
could take back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from shoal.meta.group_state import ClearConsumerState, SaveConsumerState
from shoal.meta.groups import (
    DeleteGroup,
    DeleteOffsets,
    DeleteTopicOffsets,
    GroupRepository,
    GroupRow,
    OffsetRow,
    Op,
    SaveGroup,
    UpsertOffsets,
)

log = logging.getLogger("shoal.offsets")

TopicPartition = tuple[str, int]
MAX_BATCH = 10_000  # changes per transaction: bounds one commit's latency


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class CommittedOffset:
    offset: int
    leader_epoch: int
    metadata: str
    commit_ms: int


class OffsetWriteError(Exception):
    """The metadata store refused a batch; nothing in it was applied."""


class OffsetStore:
    def __init__(self, repo: GroupRepository) -> None:
        self.repo = repo
        self._offsets: dict[str, dict[TopicPartition, CommittedOffset]] = {}
        self._queue: list[tuple[Op, asyncio.Future[None] | None]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._last: dict[str, asyncio.Future[None]] = {}  # newest unwritten change per group
        self._closing = False
        #: transactions written and changes in them, for benches and logs
        self.transactions = 0
        self.changes = 0

    async def load(self) -> list[GroupRow]:
        groups, offsets = await self.repo.load()
        for r in offsets:
            self._offsets.setdefault(r.group_id, {})[(r.topic, r.partition)] = CommittedOffset(
                r.offset, r.leader_epoch, r.metadata, r.commit_ms
            )
        return groups

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="offset-writer")

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer

    # reads -----------------------------------------------------------------

    def committed(self, group_id: str) -> Mapping[TopicPartition, CommittedOffset]:
        return self._offsets.get(group_id, {})

    def group_ids(self) -> set[str]:
        return set(self._offsets)

    def replace(self, group_id: str, rows: list[OffsetRow]) -> None:
        """Cluster mode: the group's offsets as loaded from the store (or none)."""
        self._offsets.pop(group_id, None)
        for r in rows:
            self._offsets.setdefault(group_id, {})[(r.topic, r.partition)] = CommittedOffset(
                r.offset, r.leader_epoch, r.metadata, r.commit_ms
            )

    def barrier(self, group_id: str) -> asyncio.Future[None] | None:
        """Done when every change to the group queued so far is written: an
        OffsetFetch pipelined behind a commit on one connection waits for it,
        as it would on a broker that serves a connection's requests one by one."""
        return self._last.get(group_id)

    # writes ----------------------------------------------------------------

    def commit(
        self, group_id: str, entries: Mapping[TopicPartition, CommittedOffset]
    ) -> asyncio.Future[None]:
        rows = [
            OffsetRow(group_id, t, p, c.offset, c.leader_epoch, c.metadata, c.commit_ms)
            for (t, p), c in entries.items()
        ]
        return self._track(group_id, self._submit(UpsertOffsets(rows)))

    def delete(self, group_id: str, keys: list[TopicPartition]) -> asyncio.Future[None]:
        return self._track(group_id, self._submit(DeleteOffsets(group_id, keys)))

    def delete_group(self, group_id: str) -> asyncio.Future[None]:
        return self._track(group_id, self._submit(DeleteGroup(group_id)))

    def delete_topic(self, topic: str) -> asyncio.Future[None]:
        return self._submit(DeleteTopicOffsets(topic))

    def save_group(self, row: GroupRow) -> None:
        """Fire and forget: a lost group row costs only its generation counter."""
        self._submit(SaveGroup(row), wait=False)

    def save_consumer_state(self, op: SaveConsumerState | ClearConsumerState) -> None:
        """Fire and forget, in order with the group's other writes: a
        consumer-protocol group's members and epochs for the next coordinator."""
        self._submit(op, wait=False)

    def _track(self, group_id: str, fut: asyncio.Future[None]) -> asyncio.Future[None]:
        self._last[group_id] = fut

        def untrack(f: asyncio.Future[None]) -> None:
            if self._last.get(group_id) is f:
                del self._last[group_id]

        fut.add_done_callback(untrack)
        return fut

    def _submit(self, op: Op, wait: bool = True) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closing and self._writer is not None and self._writer.done():
            fut.set_exception(OffsetWriteError("the offset store is closed"))
            return fut
        self._queue.append((op, fut if wait else None))
        self._wake.set()
        if not wait:
            fut.set_result(None)
        return fut

    async def _write_loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            ops = [op for op, _ in batch]
            try:
                await self.repo.apply(ops)
            except Exception as exc:
                log.error("cannot write %d group/offset changes: %s", len(ops), exc)
                for _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_exception(OffsetWriteError(str(exc)))
                continue
            self.transactions += 1
            self.changes += len(ops)
            for op in ops:
                self._apply(op)
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def _apply(self, op: Op) -> None:
        if isinstance(op, UpsertOffsets):
            for r in op.rows:
                self._offsets.setdefault(r.group_id, {})[(r.topic, r.partition)] = CommittedOffset(
                    r.offset, r.leader_epoch, r.metadata, r.commit_ms
                )
        elif isinstance(op, DeleteOffsets):
            group = self._offsets.get(op.group_id)
            if group is not None:
                for key in op.keys:
                    group.pop(key, None)
                if not group:
                    del self._offsets[op.group_id]
        elif isinstance(op, DeleteGroup):
            self._offsets.pop(op.group_id, None)
        elif isinstance(op, DeleteTopicOffsets):
            for gid in list(self._offsets):
                group = self._offsets[gid]
                for key in [k for k in group if k[0] == op.topic]:
                    del group[key]
                if not group:
                    del self._offsets[gid]
