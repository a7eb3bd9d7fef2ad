"""Idempotent-producer state per stream: Kafka's sequence rules, sans-IO.

For each producer id the stream remembers its epoch and its last five batches
(first and last sequence, base and last offset), like Kafka's
ProducerStateManager. A retried batch that matches one of them is a duplicate
and is answered with its original offset; anything else must follow the last
sequence by exactly one. The state is persisted with each WAL commit, so it
survives restarts and moves of the stream with the data it describes.

A transactional producer's entry also knows where its open transaction
starts in this stream (`txn_first`): the oldest of those is the partition's
last stable offset. A marker (commit or abort) closes it.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field

from shoal.storage.errors import StorageError

MAX_CACHED_BATCHES = 5
INT32_MAX = 0x7FFFFFFF


class SequenceError(StorageError):
    """A batch the producer's state rejects; `code` names the Kafka error."""

    code = "out_of_order_sequence_number"


class OutOfOrderSequence(SequenceError):
    code = "out_of_order_sequence_number"


class InvalidProducerEpoch(SequenceError):
    code = "invalid_producer_epoch"


@dataclass(slots=True)
class BatchMeta:
    first_seq: int
    last_seq: int
    base_offset: int
    last_offset: int
    # Resolves when the batch is committed; None once loaded from metadata.
    committed: asyncio.Future[int] | None = None

    def to_json(self) -> list[int]:
        return [self.first_seq, self.last_seq, self.base_offset, self.last_offset]


@dataclass(slots=True)
class ProducerEntry:
    epoch: int
    batches: deque[BatchMeta] = field(default_factory=lambda: deque(maxlen=MAX_CACHED_BATCHES))
    last_timestamp_ms: int = 0
    #: first offset of the producer's open transaction here, -1 when none
    txn_first: int = -1
    #: the last transaction closed here: (first offset, marker offset)
    prev_txn: tuple[int, int] | None = None

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq if self.batches else -1

    def encode_batches(self) -> str:
        return json.dumps([b.to_json() for b in self.batches])

    def durable_txn_first(self, end_offset: int) -> int:
        """The open transaction's first offset as of a commit up to
        `end_offset` (exclusive): a marker or a new transaction past it is not
        durable yet, so the row written with that commit must not show it."""
        if 0 <= self.txn_first < end_offset:
            return self.txn_first
        if self.prev_txn is not None:
            first, marker = self.prev_txn
            if marker >= end_offset and first < end_offset:
                return first
        return -1

    @classmethod
    def decode(
        cls, epoch: int, batches: str, last_timestamp_ms: int, txn_first: int = -1
    ) -> ProducerEntry:
        entry = cls(epoch, last_timestamp_ms=last_timestamp_ms, txn_first=txn_first)
        for first, last, base, last_off in json.loads(batches):
            entry.batches.append(BatchMeta(first, last, base, last_off))
        return entry


def next_seq(seq: int, count: int) -> int:
    """Sequences wrap at Int32.MAX, as Kafka's do."""
    return (seq + count) % (INT32_MAX + 1)


def check(
    producers: dict[int, ProducerEntry], producer_id: int, epoch: int, first_seq: int, count: int
) -> BatchMeta | None:
    """Apply Kafka's rules to one batch.

    Returns the cached BatchMeta when the batch is a duplicate, None when it may
    be appended. Raises InvalidProducerEpoch or OutOfOrderSequence otherwise.
    """
    entry = producers.get(producer_id)
    if entry is None:
        # Unknown producer (new, or its state expired): accept any sequence.
        return None
    if epoch < entry.epoch:
        raise InvalidProducerEpoch(
            f"producer {producer_id} epoch {epoch} is older than {entry.epoch}"
        )
    last_seq = next_seq(first_seq, count - 1)
    if epoch > entry.epoch:
        if first_seq != 0:
            raise OutOfOrderSequence(
                f"producer {producer_id} new epoch {epoch} must start at sequence 0, "
                f"not {first_seq}"
            )
        return None
    for b in entry.batches:
        if b.first_seq == first_seq and b.last_seq == last_seq:
            return b
    expected = next_seq(entry.last_seq, 1)
    if first_seq != expected:
        raise OutOfOrderSequence(
            f"producer {producer_id} epoch {epoch}: sequence {first_seq}, expected {expected}"
        )
    return None


def record(
    producers: dict[int, ProducerEntry],
    producer_id: int,
    epoch: int,
    meta: BatchMeta,
    timestamp_ms: int,
) -> None:
    entry = producers.get(producer_id)
    if entry is None or epoch != entry.epoch:
        entry = producers[producer_id] = ProducerEntry(epoch)
    entry.batches.append(meta)
    entry.last_timestamp_ms = timestamp_ms


def begin_txn(producers: dict[int, ProducerEntry], producer_id: int, offset: int) -> bool:
    """A transactional batch at `offset` was appended (after `record`): it
    opens the producer's transaction here unless one is open. True if it did."""
    entry = producers[producer_id]
    if entry.txn_first >= 0:
        return False
    entry.txn_first = offset
    return True


def end_txn(
    producers: dict[int, ProducerEntry],
    producer_id: int,
    epoch: int,
    marker_offset: int,
    timestamp_ms: int,
) -> int:
    """A marker for the producer at `marker_offset`: closes its open
    transaction and returns where it began (-1 if none was open here, as when
    a transaction touched the partition but wrote nothing to it).

    A marker from a newer epoch (the coordinator fenced the producer) moves
    the entry to that epoch with no sequences: the new incarnation starts at
    sequence 0, and the old one's writes are refused as stale."""
    entry = producers.get(producer_id)
    if entry is None:
        entry = producers[producer_id] = ProducerEntry(epoch)
    if epoch < entry.epoch:
        raise InvalidProducerEpoch(
            f"marker for producer {producer_id} epoch {epoch} is older than {entry.epoch}"
        )
    if epoch > entry.epoch:
        entry.epoch = epoch
        entry.batches.clear()
    first = entry.txn_first
    entry.txn_first = -1
    entry.prev_txn = (first, marker_offset) if first >= 0 else None
    entry.last_timestamp_ms = timestamp_ms
    return first
