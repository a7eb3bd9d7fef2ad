"""The transaction coordinator: Kafka's TransactionCoordinator over the
metadata store.

Each transactional id has one TxnMeta (shoal.txn.state decides the changes);
every change is saved before it is answered. Ending a transaction is two
durable steps: the decision (PrepareCommit/PrepareAbort, with the partitions
and pending offsets), then, once every marker and offset is written, the
completion. A coordinator that finds a decision without its completion (after
a restart, a kill -9, or in cluster mode a move of the id) writes the markers
again and completes it; a marker written twice is harmless (the second closes
nothing). Open transactions past their timeout are aborted with a bumped
epoch, which fences the producer that let them time out.

The writes themselves (markers into partitions, offsets into groups) are the
broker's: they come in as a TxnIO so that this package stays below broker/.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.meta.transactions import TxnConflict, TxnRepository
from shoal.protocol.errors import ErrorCode
from shoal.txn import state as st
from shoal.txn.state import PendingOffset, TopicPartition, TxnError, TxnMeta, TxnState

log = logging.getLogger("shoal.txn")


@dataclass(frozen=True, slots=True)
class AbortedByOperator:
    """The incarnation an operator's abort fenced, and the id's new one."""

    producer_id: int
    producer_epoch: int
    partitions: list[TopicPartition]
    new_producer_id: int
    new_epoch: int


class TxnIO(Protocol):
    async def write_markers(
        self,
        tid: str,
        producer_id: int,
        epoch: int,
        commit: bool,
        partitions: set[TopicPartition],
    ) -> None:
        """Write a marker into each partition; return once all are durable."""

    async def apply_offsets(self, offsets: dict[str, dict[TopicPartition, PendingOffset]]) -> None:
        """Commit a transaction's offsets to their groups; return once durable."""


@dataclass(frozen=True, slots=True)
class TxnConfig:
    max_timeout_ms: int = 900_000
    cleanup_interval_ms: int = 10_000
    id_expiration_ms: int = 604_800_000
    #: the finalized `transaction.version` feature: 2 offers KIP-890 to the
    #: clients that ask (EndTxn v5, Produce v12+, TxnOffsetCommit v5), 1 keeps
    #: every client on the version 1 protocol
    version: int = st.TV2

    @classmethod
    def from_config(cls, config: Any) -> TxnConfig:
        return cls(
            int(config["transaction.max.timeout.ms"]),
            int(config["transaction.abort.timed.out.transaction.cleanup.interval.ms"]),
            int(config["transactional.id.expiration.ms"]),
            int(config["transaction.version"]),
        )


def now_ms() -> int:
    return int(time.time() * 1000)


class TransactionCoordinator:
    def __init__(
        self,
        repo: TxnRepository,
        allocate_pid: Callable[[], Awaitable[int]],
        io: TxnIO,
        config: TxnConfig,
        shared: bool = False,
    ) -> None:
        self.repo = repo
        self.allocate_pid = allocate_pid
        self.io = io
        self.config = config
        #: cluster mode: another broker may have coordinated an id since we
        #: last saw it, so its row is read again under the id's lock
        self.shared = shared
        self._txns: dict[str, TxnMeta] = {}
        #: one lock per id in use, with how many hold or wait for it: an id
        #: nobody is using has none (every id a client ever named, kept,
        #: grew the broker's memory for good)
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._task: asyncio.Task[None] | None = None
        #: may this broker coordinate the id (cluster mode: it hashes here)
        self.owns: Callable[[str], bool] = lambda _tid: True
        #: cluster mode, as a group's coordinator: group -> transactional ids
        #: coordinated elsewhere whose offsets for the group are not settled
        self._remote: dict[str, set[str]] = {}

    async def start(self) -> None:
        """Load every id, finish decisions a previous run left half done,
        then start the timeout sweep."""
        if not self.shared:
            for row in await self.repo.load():
                self._txns[row.transactional_id] = TxnMeta.from_row(row)
        await self.sweep()
        self._task = asyncio.create_task(self._sweeper())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # lookups (the produce and offset paths; no IO) ---------------------------

    def check_write(self, tid: str, producer_id: int, epoch: int, tp: TopicPartition) -> ErrorCode:
        """May this producer write transactionally to the partition? It must
        be the id's current incarnation with the partition added to its open
        transaction (Kafka 4 verifies this; older Kafka trusted the client).
        An id this broker does not hold (cluster mode) is not checked here."""
        if self.shared and not self.owns(tid):
            return ErrorCode.none
        meta = self._txns.get(tid)
        if meta is None:
            return ErrorCode.invalid_producer_id_mapping
        if producer_id != meta.producer_id:
            return ErrorCode.invalid_producer_id_mapping
        if epoch < meta.producer_epoch:
            return ErrorCode.invalid_producer_epoch
        if meta.state != TxnState.ONGOING or tp not in meta.partitions:
            return ErrorCode.invalid_txn_state
        return ErrorCode.none

    async def add_on_produce(
        self, tid: str, producer_id: int, epoch: int, partitions: set[TopicPartition]
    ) -> ErrorCode:
        """A TV2 producer's write (Produce v12+) adds its partitions to the
        transaction, opening one if none is, as Kafka 4's broker does with an
        AddPartitionsToTxn v5 to the coordinator. Answers in the produce
        path's codes: another epoch is INVALID_PRODUCER_EPOCH (Kafka turns the
        coordinator's PRODUCER_FENCED into it for producers). In cluster mode
        the id's row is changed in the metadata store by compare-and-set,
        whichever broker coordinates it."""
        meta = None if self.shared else self._txns.get(tid)
        if (
            meta is not None
            and meta.producer_id == producer_id
            and meta.producer_epoch == epoch
            and meta.state == TxnState.ONGOING
            and partitions <= meta.partitions
        ):
            # alone, the cache is the truth (cluster mode reads the row: a
            # version 1 end on the coordinator would not have bumped the epoch)
            return ErrorCode.none
        for _attempt in range(3):
            try:
                await self._add_implicitly(tid, producer_id, epoch, partitions)
            except TxnError as exc:
                if exc.code == ErrorCode.concurrent_transactions and self.shared:
                    continue  # another broker wrote the row: read it again
                return (
                    ErrorCode.invalid_producer_epoch
                    if exc.code == ErrorCode.producer_fenced
                    else exc.code
                )
            return ErrorCode.none
        return ErrorCode.concurrent_transactions

    async def _add_implicitly(
        self, tid: str, producer_id: int, epoch: int, partitions: set[TopicPartition]
    ) -> None:
        async with self._lock(tid):
            meta = await self._known(tid)
            if meta.state.preparing:
                st.check_producer(meta, producer_id, epoch, ErrorCode.producer_fenced)
                if self.shared and not self.owns(tid):
                    # the coordinator is ending it now (or will, at its sweep)
                    raise TxnError(
                        ErrorCode.concurrent_transactions,
                        f"transactional id {tid!r} is completing its transaction",
                    )
                await self._finish(meta)  # a decision a crash interrupted
            # (again after a finish: an epoch overflow there changed the producer id)
            st.check_producer(meta, producer_id, epoch, ErrorCode.producer_fenced)
            if meta.state == TxnState.ONGOING and partitions <= meta.partitions:
                return
            st.begin_or_continue(meta, now_ms())
            meta.partitions |= partitions
            await self._save(meta)
            log.info(
                "transactional id %r: %s added by a write (producer %d epoch %d)",
                tid,
                ", ".join(f"{t}-{p}" for t, p in sorted(partitions)),
                producer_id,
                epoch,
            )

    async def verify(
        self, tid: str, producer_id: int, epoch: int, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, ErrorCode]:
        """AddPartitionsToTxn v4+ with VerifyOnly: is each partition in the
        open transaction? Kafka's answers: the id's errors for all, else
        TRANSACTION_ABORTABLE for a partition not in it."""
        parts = list(partitions)
        async with self._lock(tid):
            meta = await self._get(tid)
        code = ErrorCode.none
        if meta is None or meta.producer_id != producer_id:
            code = ErrorCode.invalid_producer_id_mapping
        elif meta.producer_epoch != epoch:
            code = ErrorCode.producer_fenced
        elif meta.state.preparing:
            code = ErrorCode.concurrent_transactions
        if code != ErrorCode.none or meta is None:
            return dict.fromkeys(parts, code)
        ongoing = meta.state == TxnState.ONGOING
        return {
            tp: ErrorCode.none
            if ongoing and tp in meta.partitions
            else ErrorCode.transaction_abortable
            for tp in parts
        }

    def pending_offset(self, group_id: str, tp: TopicPartition) -> bool:
        """Is a transaction's offset for this group partition not yet decided
        (OffsetFetch require_stable answers UNSTABLE_OFFSET_COMMIT)?"""
        return any(
            tp in m.offsets.get(group_id, {})
            for m in self._txns.values()
            if m.state in (TxnState.ONGOING, TxnState.PREPARE_COMMIT)
        )

    def unsettled(self, group_ids: Iterable[str]) -> bool:
        return any(g in self._remote for g in group_ids)

    async def settle_groups(self, group_ids: Iterable[str]) -> list[str]:
        """Cluster mode: re-read the transactions holding offsets of these
        groups that another broker coordinates; returns the groups whose
        offsets one of them has since committed or dropped (the caller reloads
        them from the store, where that coordinator wrote them)."""
        settled = []
        for group in group_ids:
            tids = self._remote.get(group)
            if not tids:
                continue
            for tid in list(tids):
                rows = await self.repo.load(tid)
                meta = TxnMeta.from_row(rows[0]) if rows else None
                if meta is not None:
                    self._txns[tid] = meta
                else:
                    self._txns.pop(tid, None)
                if meta is None or not (
                    meta.state in (TxnState.ONGOING, TxnState.PREPARE_COMMIT)
                    and group in meta.offsets
                ):
                    tids.discard(tid)
                    if group not in settled:
                        settled.append(group)
            if not tids:
                del self._remote[group]
        return settled

    async def coordinated(self) -> list[TxnMeta]:
        """The ids this broker coordinates (ListTransactions), as saved."""
        if self.shared:
            metas = [TxnMeta.from_row(r) for r in await self.repo.load()]
        else:
            metas = list(self._txns.values())
        return [m for m in metas if self.owns(m.transactional_id)]

    async def describe(self, tid: str) -> TxnMeta | None:
        async with self._lock(tid):
            return await self._get(tid)

    # requests ---------------------------------------------------------------

    async def init_producer_id(
        self, tid: str, timeout_ms: int, producer_id: int, epoch: int, fenced: ErrorCode
    ) -> tuple[int, int]:
        st.check_timeout(timeout_ms, self.config.max_timeout_ms)
        async with self._lock(tid):
            meta = await self._get(tid)
            if meta is None:
                meta = TxnMeta(tid, await self.allocate_pid(), 0, timeout_ms, update_ms=now_ms())
                await self._save(meta)
                self._txns[tid] = meta
                log.info("transactional id %r: producer id %d epoch 0", tid, meta.producer_id)
                return meta.producer_id, 0
            if producer_id >= 0 and (
                producer_id != meta.producer_id or epoch != meta.producer_epoch
            ):
                # KIP-360: a producer recovering its own epoch must still be current
                raise TxnError(
                    fenced,
                    f"transactional id {tid!r} is producer {meta.producer_id} epoch "
                    f"{meta.producer_epoch}, not {producer_id}/{epoch}",
                )
            if meta.state.preparing:
                await self._finish(meta)
            await self._new_incarnation(meta, timeout_ms)
            return meta.producer_id, meta.producer_epoch

    async def abort_open(self, tid: str) -> AbortedByOperator:
        """An operator's abort of a hanging transaction: what a restarted
        producer's InitProducerId does, but only while the transaction is
        Ongoing, checked under the id's lock (a commit in between is left
        alone)."""
        async with self._lock(tid):
            meta = await self._get(tid)
            if meta is None:
                raise TxnError(ErrorCode.transactional_id_not_found, f"no transactional id {tid!r}")
            if meta.state != TxnState.ONGOING:
                raise TxnError(
                    ErrorCode.invalid_txn_state,
                    f"{tid!r} has no open transaction to abort (state {meta.state})",
                )
            pid, epoch, parts = meta.producer_id, meta.producer_epoch, sorted(meta.partitions)
            await self._new_incarnation(meta, meta.timeout_ms)
            return AbortedByOperator(pid, epoch, parts, meta.producer_id, meta.producer_epoch)

    async def _new_incarnation(self, meta: TxnMeta, timeout_ms: int) -> None:
        """Fence the id's current producer (aborting what it left open) and
        make the id ready for the next one; held under the id's lock."""
        if meta.state == TxnState.ONGOING:
            await self._fence_and_abort(meta, "a new producer with the same transactional id")
        elif not st.bump_epoch(meta):
            meta.producer_id, meta.producer_epoch = await self.allocate_pid(), 0
        meta.state = TxnState.EMPTY
        meta.timeout_ms = timeout_ms
        meta.update_ms = now_ms()
        await self._save(meta)
        log.info(
            "transactional id %r: producer id %d epoch %d",
            meta.transactional_id,
            meta.producer_id,
            meta.producer_epoch,
        )

    async def add_partitions(
        self,
        tid: str,
        producer_id: int,
        epoch: int,
        partitions: Iterable[TopicPartition],
        fenced: ErrorCode,
    ) -> None:
        async with self._lock(tid):
            meta = await self._current(tid, producer_id, epoch, fenced)
            new = set(partitions) - meta.partitions if meta.state == TxnState.ONGOING else None
            if new is not None and not new:
                return  # already there: nothing to save
            st.begin_or_continue(meta, now_ms())
            meta.partitions |= set(partitions)
            await self._save(meta)

    async def add_offsets(
        self, tid: str, producer_id: int, epoch: int, group_id: str, fenced: ErrorCode
    ) -> None:
        async with self._lock(tid):
            meta = await self._current(tid, producer_id, epoch, fenced)
            if meta.state == TxnState.ONGOING and group_id in meta.offsets:
                return
            st.begin_or_continue(meta, now_ms())
            meta.offsets.setdefault(group_id, {})
            await self._save(meta)

    async def txn_offset_commit(
        self,
        tid: str,
        producer_id: int,
        epoch: int,
        group_id: str,
        offsets: dict[TopicPartition, PendingOffset],
        fenced: ErrorCode,
        implicit: bool = False,
    ) -> None:
        """`implicit`: TxnOffsetCommit v5 from a TV2 producer, which sends no
        AddOffsetsToTxn: the group joins (or opens) the transaction here."""
        async with self._lock(tid):
            meta = await self._current(tid, producer_id, epoch, fenced)
            if implicit and not (meta.state == TxnState.ONGOING and group_id in meta.offsets):
                st.begin_or_continue(meta, now_ms())
                meta.offsets.setdefault(group_id, {})
            if meta.state != TxnState.ONGOING or group_id not in meta.offsets:
                raise TxnError(
                    ErrorCode.invalid_txn_state,
                    f"transactional id {tid!r} has not added group {group_id!r} "
                    "(AddOffsetsToTxn) to an open transaction",
                )
            meta.offsets[group_id].update(offsets)
            meta.update_ms = now_ms()
            await self._save(meta)
            if self.shared and not self.owns(tid):
                self._remote.setdefault(group_id, set()).add(tid)

    async def end_txn(
        self,
        tid: str,
        producer_id: int,
        epoch: int,
        commit: bool,
        fenced: ErrorCode,
        version: int = 0,
    ) -> tuple[int, int]:
        """Commit or abort; returns the producer id and epoch the producer
        goes on with (EndTxn v5: under TV2 the end bumped the epoch, or gave a
        new producer id when the epoch was exhausted)."""
        version = min(version, self.config.version)
        async with self._lock(tid):
            meta = await self._known(tid)
            if meta.state.preparing:
                # a decision a crash interrupted: finish it; a retry of it is
                # then answered as one of a completed end
                await self._finish(meta)
            if st.decide_end(meta, producer_id, epoch, commit, now_ms(), version, fenced):
                await self._save(meta)  # the decision is durable from here on
                await self._finish(meta)
            return meta.producer_id, meta.producer_epoch

    # internals --------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lock(self, tid: str) -> AsyncIterator[None]:
        """Hold the id's lock; the last one out removes it."""
        entry = self._locks.get(tid)
        if entry is None:
            entry = self._locks[tid] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[tid]

    async def _get(self, tid: str) -> TxnMeta | None:
        if self.shared or tid not in self._txns:
            rows = await self.repo.load(tid)
            if not rows:
                self._txns.pop(tid, None)
                return None
            self._txns[tid] = TxnMeta.from_row(rows[0])
        return self._txns[tid]

    async def _known(self, tid: str) -> TxnMeta:
        meta = await self._get(tid)
        if meta is None:
            raise TxnError(
                ErrorCode.invalid_producer_id_mapping,
                f"unknown transactional id {tid!r} (InitProducerId first)",
            )
        return meta

    async def _current(self, tid: str, producer_id: int, epoch: int, fenced: ErrorCode) -> TxnMeta:
        meta = await self._known(tid)
        st.check_producer(meta, producer_id, epoch, fenced)
        if meta.state.preparing:
            # a decision a crash interrupted: finish it before anything else
            await self._finish(meta)
        return meta

    async def _save(self, meta: TxnMeta) -> None:
        try:
            meta.version = await self.repo.save(meta.to_row())
        except TxnConflict as exc:
            # another broker wrote the id meanwhile: forget ours, the client retries
            self._txns.pop(meta.transactional_id, None)
            raise TxnError(ErrorCode.concurrent_transactions, str(exc)) from None

    async def _finish(self, meta: TxnMeta) -> None:
        """Write the markers and offsets of a saved decision, then complete."""
        commit = meta.state == TxnState.PREPARE_COMMIT
        started = time.monotonic()
        await self.io.write_markers(
            meta.transactional_id,
            meta.producer_id,
            meta.producer_epoch,
            commit,
            set(meta.partitions),
        )
        if commit and meta.offsets:
            await self.io.apply_offsets(meta.offsets)
        parts, groups = len(meta.partitions), len(meta.offsets)
        st.complete(meta, now_ms())
        if meta.producer_epoch >= st.MAX_EPOCH:
            st.new_producer_after_overflow(meta, await self.allocate_pid())
        await self._save(meta)
        log.info(
            "transactional id %r: %s (producer %d epoch %d, %d partition(s), %d group(s), %.1f ms)",
            meta.transactional_id,
            "committed" if commit else "aborted",
            meta.producer_id,
            meta.producer_epoch,
            parts,
            groups,
            (time.monotonic() - started) * 1000,
        )

    async def _fence_and_abort(self, meta: TxnMeta, reason: str) -> None:
        """Abort an open transaction with a bumped epoch: the markers carry it,
        so the fenced incarnation's late writes are refused by the partitions."""
        if not st.bump_epoch(meta):
            # out of epochs: the markers still need one the partitions accept
            meta.producer_epoch = st.MAX_EPOCH
        log.info(
            "transactional id %r: aborting the open transaction (%s), epoch now %d",
            meta.transactional_id,
            reason,
            meta.producer_epoch,
        )
        meta.state = TxnState.PREPARE_ABORT
        meta.update_ms = now_ms()
        # judged as TV1 from here: the fenced producer's end with its old
        # epoch is PRODUCER_FENCED, not taken for a retry of a TV2 end
        meta.txn_version = 0
        await self._save(meta)
        await self._finish(meta)
        if meta.producer_epoch >= st.MAX_EPOCH - 1:
            meta.producer_id, meta.producer_epoch = await self.allocate_pid(), 0
            await self._save(meta)

    async def sweep(self) -> None:
        """Finish interrupted decisions, abort timed-out transactions, forget
        ids idle past transactional.id.expiration.ms."""
        now = now_ms()
        metas = (
            [TxnMeta.from_row(r) for r in await self.repo.load()]
            if self.shared
            else list(self._txns.values())
        )
        expired: list[str] = []
        for seen in metas:
            tid = seen.transactional_id
            if not self.owns(tid):
                continue
            if not (seen.state.preparing or seen.expired(now)):
                idle = now - seen.update_ms >= self.config.id_expiration_ms
                if seen.state != TxnState.ONGOING and idle:
                    expired.append(tid)
                continue
            try:
                async with self._lock(tid):
                    meta = await self._get(tid)
                    if meta is None:
                        continue
                    if meta.state.preparing:
                        await self._finish(meta)
                    elif meta.expired(now_ms()):
                        await self._fence_and_abort(
                            meta, f"open longer than its timeout of {meta.timeout_ms} ms"
                        )
            except Exception as exc:  # retried at the next sweep
                log.warning("transactional id %r: could not complete: %s", tid, exc)
        if expired:
            await self.repo.delete(expired)
            for tid in expired:
                self._txns.pop(tid, None)
            log.info("forgot %d idle transactional id(s)", len(expired))

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.config.cleanup_interval_ms / 1000)
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("transaction sweep failed: %s", exc)
