"""A transactional id's state and Kafka's rules for changing it, sans-IO.

The coordinator (shoal.txn.coordinator) persists a TxnMeta after each change
these functions make and before answering; they only decide. Errors are
TxnError with the Kafka code a client expects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum

from shoal.meta.transactions import TxnRow
from shoal.protocol.errors import ErrorCode

#: Kafka's producer epochs are int16; the coordinator moves to a new producer
#: id rather than let one overflow.
MAX_EPOCH = 32767

#: Kafka's `transaction.version` feature: 2 is KIP-890 part 2 (the epoch bumps
#: at every commit or abort, partitions join a transaction by being written)
TV2 = 2

TopicPartition = tuple[str, int]


class TxnState(StrEnum):
    EMPTY = "Empty"
    ONGOING = "Ongoing"
    PREPARE_COMMIT = "PrepareCommit"
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"

    @property
    def preparing(self) -> bool:
        return self in (TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT)


class TxnError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class PendingOffset:
    """A TxnOffsetCommit waiting for its transaction's outcome."""

    offset: int
    leader_epoch: int
    metadata: str


@dataclass(slots=True)
class TxnMeta:
    transactional_id: str
    producer_id: int
    producer_epoch: int
    timeout_ms: int
    state: TxnState = TxnState.EMPTY
    partitions: set[TopicPartition] = field(default_factory=set)
    #: group -> partition -> offset, applied to the group at commit
    offsets: dict[str, dict[TopicPartition, PendingOffset]] = field(default_factory=dict)
    start_ms: int = -1
    update_ms: int = 0
    version: int = 0  # of the saved row (0: never saved)
    #: transaction protocol version of the last end (TV2: that end bumped the
    #: epoch, so a retry of it carries the epoch before the bump)
    txn_version: int = 0
    #: the producer id an epoch overflow replaced (a TV2 retry may still name it)
    prev_producer_id: int = -1

    def to_row(self) -> TxnRow:
        return TxnRow(
            self.transactional_id,
            self.producer_id,
            self.producer_epoch,
            self.timeout_ms,
            self.state.value,
            json.dumps(sorted(self.partitions)),
            json.dumps(
                {
                    g: [[t, p, o.offset, o.leader_epoch, o.metadata] for (t, p), o in parts.items()]
                    for g, parts in self.offsets.items()
                }
            ),
            self.start_ms,
            self.update_ms,
            self.version,
            self.txn_version,
            self.prev_producer_id,
        )

    @classmethod
    def from_row(cls, row: TxnRow) -> TxnMeta:
        return cls(
            row.transactional_id,
            row.producer_id,
            row.producer_epoch,
            row.timeout_ms,
            TxnState(row.state),
            {(t, int(p)) for t, p in json.loads(row.partitions)},
            {
                g: {(t, int(p)): PendingOffset(int(o), int(e), m) for t, p, o, e, m in parts}
                for g, parts in json.loads(row.offsets).items()
            },
            row.start_ms,
            row.update_ms,
            row.version,
            row.txn_version,
            row.prev_producer_id,
        )

    def expired(self, now_ms: int) -> bool:
        """An open transaction past transaction.timeout.ms: abort it."""
        return self.state == TxnState.ONGOING and now_ms - self.start_ms > self.timeout_ms


def check_timeout(timeout_ms: int, max_timeout_ms: int) -> None:
    if not 0 < timeout_ms <= max_timeout_ms:
        raise TxnError(
            ErrorCode.invalid_transaction_timeout,
            f"transaction.timeout.ms {timeout_ms} is not in (0, {max_timeout_ms}] "
            "(transaction.max.timeout.ms)",
        )


def check_producer(meta: TxnMeta, producer_id: int, epoch: int, fenced: ErrorCode) -> None:
    """The request's producer must be the id's current incarnation. `fenced`
    is PRODUCER_FENCED for request versions that know it, else
    INVALID_PRODUCER_EPOCH."""
    if producer_id != meta.producer_id:
        raise TxnError(
            ErrorCode.invalid_producer_id_mapping,
            f"transactional id {meta.transactional_id!r} has producer id {meta.producer_id}, "
            f"not {producer_id}",
        )
    if epoch != meta.producer_epoch:
        raise TxnError(
            fenced,
            f"transactional id {meta.transactional_id!r}: producer epoch {epoch} "
            f"is not the current {meta.producer_epoch}",
        )


def begin_or_continue(meta: TxnMeta, now_ms: int) -> None:
    """AddPartitionsToTxn / AddOffsetsToTxn: the transaction is (or becomes) open."""
    if meta.state.preparing:
        raise TxnError(
            ErrorCode.concurrent_transactions,
            f"transactional id {meta.transactional_id!r} is completing its transaction",
        )
    if meta.state != TxnState.ONGOING:
        meta.state = TxnState.ONGOING
        meta.start_ms = now_ms
        meta.partitions = set()
        meta.offsets = {}
    meta.update_ms = now_ms


def decide_end(
    meta: TxnMeta,
    producer_id: int,
    epoch: int,
    commit: bool,
    now_ms: int,
    version: int,
    fenced: ErrorCode,
) -> bool:
    """EndTxn of protocol `version` (TV2 from EndTxn v5): True when a decision
    is taken (save it, write its markers), False for a retry of the end
    already done (answer it again); a decision still being written is
    CONCURRENT_TRANSACTIONS (the coordinator finishes it first).

    Under TV2 the decision bumps the epoch (the markers carry the new one),
    so a retry names the epoch before the bump, or after an overflow the
    previous producer id at the last epoch; the current epoch names the next
    transaction. An abort with no transaction open still bumps the epoch
    (the client may have written nothing that reached us), as Kafka 4 does."""
    if meta.state.preparing:
        raise TxnError(
            ErrorCode.concurrent_transactions,
            f"transactional id {meta.transactional_id!r} is completing its transaction",
        )
    v2_meta = meta.txn_version >= TV2
    overflow_retry = (
        v2_meta
        and meta.prev_producer_id == producer_id
        and epoch == MAX_EPOCH - 1
        and meta.producer_epoch == 0
    )
    retry = overflow_retry or (
        v2_meta and producer_id == meta.producer_id and meta.producer_epoch == epoch + 1
    )
    done = TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT
    completed = meta.state in (TxnState.COMPLETE_COMMIT, TxnState.COMPLETE_ABORT)
    if not (retry and completed):
        check_producer(meta, producer_id, epoch, fenced)  # another id, or epoch
    elif meta.state == done:
        return False
    else:
        raise _cannot_end(meta, commit)
    if meta.state == TxnState.ONGOING:
        pass
    elif not v2_meta and meta.state == done:
        return False  # TV1: a retry names the current epoch
    elif version >= TV2 and not commit:
        meta.partitions, meta.offsets = set(), {}  # an abort with nothing to mark
    else:
        raise _cannot_end(meta, commit)
    meta.state = TxnState.PREPARE_COMMIT if commit else TxnState.PREPARE_ABORT
    meta.txn_version = version
    if version >= TV2:
        # always room: an epoch at MAX_EPOCH - 1 or above gets a new producer
        # id when the end completes
        meta.producer_epoch = min(meta.producer_epoch + 1, MAX_EPOCH)
    meta.update_ms = now_ms
    return True


def _cannot_end(meta: TxnMeta, commit: bool) -> TxnError:
    return TxnError(
        ErrorCode.invalid_txn_state,
        f"transactional id {meta.transactional_id!r} cannot "
        f"{'commit' if commit else 'abort'} in state {meta.state.value}",
    )


def new_producer_after_overflow(meta: TxnMeta, producer_id: int) -> None:
    """The epoch reached MAX_EPOCH (a TV2 end, or a fence out of epochs): the
    id continues as a new producer id at epoch 0, remembering the old one."""
    meta.prev_producer_id = meta.producer_id
    meta.producer_id, meta.producer_epoch = producer_id, 0


def complete(meta: TxnMeta, now_ms: int) -> None:
    """Every marker (and offset) of the prepared outcome is durable."""
    commit = meta.state == TxnState.PREPARE_COMMIT
    meta.state = TxnState.COMPLETE_COMMIT if commit else TxnState.COMPLETE_ABORT
    meta.partitions = set()
    meta.offsets = {}
    meta.update_ms = now_ms  # start_ms stays: Kafka describes the last one


def bump_epoch(meta: TxnMeta) -> bool:
    """Fence the current incarnation. False when the epoch is exhausted (the
    caller then gives the id a new producer id at epoch 0)."""
    if meta.producer_epoch >= MAX_EPOCH - 1:
        return False
    meta.producer_epoch += 1
    return True
