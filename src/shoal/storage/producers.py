"""Idempotent-producer state per stream: Kafka's sequence rules, sans-IO.

For each producer id the stream remembers its epoch and its last five batches
(first and last sequence, base and last offset), like Kafka's
ProducerStateManager. A retried batch that matches one of them is a duplicate
and is answered with its original offset; anything else must follow the last
sequence by exactly one. The state is persisted with each WAL commit, so it
survives restarts and moves of the stream with the data it describes.
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

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq if self.batches else -1

    def encode_batches(self) -> str:
        return json.dumps([b.to_json() for b in self.batches])

    @classmethod
    def decode(cls, epoch: int, batches: str, last_timestamp_ms: int) -> ProducerEntry:
        entry = cls(epoch, last_timestamp_ms=last_timestamp_ms)
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
