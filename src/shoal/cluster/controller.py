"""The controller: one broker at a time (the holder of the controller lease)
expires dead brokers and decides who owns which partition.

Each round it: deletes expired broker rows; carries out requested moves
(reassignments) whose target is alive; gives partitions of dead, draining or
no brokers to the live broker with the fewest; and, when enabled, evens out
partition counts and bytes in/out between brokers within a band, with a
cool-down per partition and a cap on moves per round. Every change is a
conditional owner update that also bumps the stream epoch (fencing).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from shoal.meta.cluster import BrokerRow, ClusterStore, Move, OwnerRow
from shoal.meta.store import now_ms

log = logging.getLogger("shoal.controller")


@dataclass(frozen=True, slots=True)
class BalanceConfig:
    enable: bool = True
    band: float = 0.2  # keep each broker within mean * (1 +- band)
    cooldown_ms: int = 60_000  # a partition moved by balancing stays put this long
    max_moves: int = 2  # balancing moves per round
    interval_ms: int = 10_000


def orphan_target(counts: dict[int, int], live: list[BrokerRow], now: int, fresh_ms: int) -> int:
    """Where a partition without a live owner goes: the broker with the
    fewest partitions among those that renewed lately (at least `fresh_ms`
    of lease left), else among all live ones. When a zone dies its brokers'
    leases lapse one by one; a partition of the first must not be handed to
    another that is dead but not yet expired (it would wait for that lease
    too, then move again)."""
    fresh = [b.node_id for b in live if b.node_id in counts and b.lease_expiry_ms - now >= fresh_ms]
    pool = fresh or list(counts)
    return min(pool, key=lambda n: (counts[n], n))


class Controller:
    def __init__(
        self, store: ClusterStore, balance: BalanceConfig, fresh_lease_ms: int = 0
    ) -> None:
        self.store = store
        self.balance = balance
        #: lease left that marks a broker as renewing on time (see orphan_target)
        self.fresh_lease_ms = fresh_lease_ms
        self._moved_at: dict[tuple[int, int], float] = {}
        self._last_balance = -math.inf  # monotonic; the first round may balance
        self.rounds = 0
        self._expired: set[int] = set()  # warned about once each

    async def round(self) -> list[Move]:
        """One pass; returns the moves made.

        A round runs every heartbeat. It reads the partition counts per
        broker and the partitions no live broker owns; every partition only
        when a reassignment waits or balancing is due: with a fleet's
        10,000 partitions, reading them all each second held the event
        loop for tens of milliseconds at a time."""
        self.rounds += 1
        now = now_ms()
        expired = set(await self.store.expire(now))
        for node in sorted(expired - self._expired):
            log.warning("broker %d lease expired: handing its partitions on", node)
        self._expired = expired
        live = await self.store.live_brokers(now)
        live_ids = {b.node_id for b in live}
        targets = [b for b in live if not b.draining]
        counts = {b.node_id: 0 for b in targets}
        for owner, n in (await self.store.owner_counts()).items():
            if owner in counts:
                counts[owner] = n
        pending = [
            r
            for r in await self.store.reassignments()
            if r.moved_ms is None and r.target_node in live_ids
        ]
        balance_due = self._balance_due(counts)
        if pending or balance_due:
            owners = await self.store.owners()
        elif targets:
            owners = await self.store.owners(not_owned_by=counts)
        else:
            owners = []
        by_key = {(o.topic_id, o.partition): o for o in owners} if pending else {}
        moves: list[Move] = []
        planned: set[tuple[int, int]] = set()
        requested: set[tuple[int, int]] = set()

        def plan(o: OwnerRow, target: int) -> None:
            moves.append(Move(o.topic_id, o.partition, o.stream_id, o.owner, target))
            planned.add((o.topic_id, o.partition))
            if o.owner in counts:
                counts[o.owner] -= 1
            if target in counts:
                counts[target] += 1

        for r in pending:
            row = by_key.get((r.topic_id, r.partition))
            if row is None:
                continue
            if row.owner == r.target_node:
                # Already there (asked for its own owner, or moved by other
                # means): the owner will not open it again to finish it.
                await self.store.finish_moves(r.target_node, [(r.topic_id, r.partition)])
                continue
            plan(row, r.target_node)
            requested.add((r.topic_id, r.partition))
        if targets:
            for o in owners:
                if (o.topic_id, o.partition) in planned:
                    continue
                if o.owner is None or o.owner not in counts:
                    plan(o, orphan_target(counts, targets, now, self.fresh_lease_ms))
        if balance_due and not moves:
            moves.extend(self._balance(live, owners, counts))
        done = await self.store.apply_moves(moves, requested)
        for m in done:
            log.info(
                "partition %d/%d: owner %s -> %d", m.topic_id, m.partition, m.old_owner, m.new_owner
            )
        return done

    def _balance_due(self, counts: dict[int, int]) -> bool:
        return (
            self.balance.enable
            and len(counts) >= 2
            and time.monotonic() - self._last_balance >= self.balance.interval_ms / 1000
        )

    def _balance(
        self, live: list[BrokerRow], owners: list[OwnerRow], counts: dict[int, int]
    ) -> list[Move]:
        """Even out load: bytes in+out when brokers report traffic, else
        partition counts. Moves from the most to the least loaded broker,
        only partitions past their cool-down, at most max_moves a round."""
        if not self._balance_due(counts):
            return []
        mono = self._last_balance = time.monotonic()
        load: dict[int, float] = {n: 0.0 for n in counts}
        part_load: dict[tuple[int, int], float] = {}
        for b in live:
            for name, (bin_, bout) in b.load.items():
                tid, _, p = name.partition(":")
                part_load[(int(tid), int(p))] = float(bin_ + bout)
        traffic = sum(part_load.values()) > 0
        mine: dict[int, list[OwnerRow]] = {n: [] for n in counts}
        for o in owners:
            if o.owner in mine:
                mine[o.owner].append(o)
                load[o.owner] += part_load.get((o.topic_id, o.partition), 0.0) if traffic else 1.0
        mean = sum(load.values()) / len(load)
        moves: list[Move] = []
        cool = self.balance.cooldown_ms / 1000
        for _ in range(self.balance.max_moves):
            hi = max(load, key=lambda n: (load[n], -n))
            lo = min(load, key=lambda n: (load[n], n))
            if load[hi] <= mean * (1 + self.balance.band) and load[lo] >= mean * (
                1 - self.balance.band
            ):
                break
            gap = load[hi] - load[lo]
            best: OwnerRow | None = None
            best_w = 0.0
            for o in mine[hi]:
                tp = (o.topic_id, o.partition)
                if mono - self._moved_at.get(tp, -1e18) < cool:
                    continue
                w = part_load.get(tp, 0.0) if traffic else 1.0
                # Only moves that shrink the gap (never overshoot it).
                if 0 < w < gap and w > best_w:
                    best, best_w = o, w
            if best is None:
                break
            moves.append(Move(best.topic_id, best.partition, best.stream_id, best.owner, lo))
            self._moved_at[(best.topic_id, best.partition)] = mono
            mine[hi].remove(best)
            mine[lo].append(best)
            load[hi] -= best_w
            load[lo] += best_w
        if moves:
            log.info(
                "balancing: %d moves (load per broker %s, band %.0f%%)",
                len(moves),
                {n: round(v) for n, v in load.items()},
                self.balance.band * 100,
            )
        return moves
