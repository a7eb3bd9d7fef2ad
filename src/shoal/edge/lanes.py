"""Lanes at run time: which topics belong where, how much local disk each one
uses against its budget, what it dropped and why.

Disk use is logical: the bytes of the lane's committed ranges in the local
log (what a budget can promise). The physical size of the log directory is
reported beside it; it trails the logical size by the compaction interval,
since space comes back when compaction rewrites the objects holding trimmed
data.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from sqlalchemy import func, select

from shoal.broker.broker import Broker
from shoal.edge.config import EdgeConfig, LaneConfig
from shoal.meta import schema as s


@dataclass(slots=True)
class Lane:
    cfg: LaneConfig
    used_bytes: int = 0  # committed, as of the last refresh
    appended_bytes: int = 0  # appended since the last refresh (counted conservatively)
    drops: dict[str, list[int]] = field(default_factory=dict)  # reason -> [records, bytes]
    waiters: int = 0  # ingest calls waiting for room
    blocked_total_s: float = 0.0
    # While the data directory is low on space: the lane's usage when it
    # became low, which it may not grow past (its when_full policy applies).
    disk_cap: int | None = None
    _room: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def budget(self) -> int:
        return self.cfg.disk_budget_bytes

    @property
    def limit(self) -> int:
        """The bytes the lane may hold now: its budget, or less while the
        data directory is low on space (0: unbounded)."""
        if self.disk_cap is None:
            return self.budget
        return min(self.budget, self.disk_cap) if self.budget > 0 else self.disk_cap

    @property
    def usage(self) -> int:
        return self.used_bytes + self.appended_bytes

    def count_drop(self, reason: str, records: int, nbytes: int) -> None:
        if records <= 0 and nbytes <= 0:
            return
        d = self.drops.setdefault(reason, [0, 0])
        d[0] += records
        d[1] += nbytes

    def has_room(self, nbytes: int) -> bool:
        if self.cfg.when_full != "block":
            return True
        if self.disk_cap is not None:
            return False  # low on disk: hold everything until space is back
        if self.budget <= 0:
            return True
        # one append larger than the whole budget still goes in alone
        return self.usage + nbytes <= self.budget or self.usage == 0

    async def wait_room(self, nbytes: int, timeout: float | None = None) -> bool:
        """Block policy: hold the caller (and so the MQTT ack or the produce
        response) until the lane has room. False if `timeout` passed first."""
        if self.has_room(nbytes):
            return True
        t0 = time.monotonic()
        deadline = None if timeout is None else t0 + timeout
        self.waiters += 1
        try:
            while not self.has_room(nbytes):
                self._room.clear()
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return False
                try:
                    await asyncio.wait_for(self._room.wait(), timeout=wait)
                except TimeoutError:
                    return False
            return True
        finally:
            self.waiters -= 1
            self.blocked_total_s += time.monotonic() - t0

    @property
    def blocked(self) -> bool:
        return self.waiters > 0

    def wake(self) -> None:
        self._room.set()


class Lanes:
    def __init__(self, config: EdgeConfig, broker: Broker) -> None:
        self.config = config
        self.broker = broker
        self.by_name = {lc.name: Lane(lc) for lc in config.lanes}
        self.default = self.by_name[config.default_lane]
        self.stream_bytes: dict[int, int] = {}

    def lane_of(self, topic: str) -> Lane:
        return self.by_name[self.config.lane_of(topic).name]

    def streams_of(self, lane: Lane) -> list[tuple[str, int, int]]:
        """(topic, partition, stream id) of every local partition in the lane."""
        out: list[tuple[str, int, int]] = []
        for topic in self.broker.topics.all():
            if self.lane_of(topic.name) is lane:
                out.extend((topic.name, p.partition, p.stream_id) for p in topic.partitions)
        return out

    def add_appended(self, topic: str, nbytes: int) -> None:
        self.lane_of(topic).appended_bytes += nbytes

    async def refresh(self) -> None:
        """Re-read committed bytes per stream and wake lanes that have room."""
        appended = {name: lane.appended_bytes for name, lane in self.by_name.items()}
        r, st = s.stream_ranges, s.streams
        rows = await self.broker.meta.execute_read(
            select(r.c.stream_id, func.sum(r.c.size)).group_by(r.c.stream_id)
        )
        stream_bytes = {int(sid): int(total or 0) for sid, total in rows}
        # A range the log start falls inside counts only above the start.
        straddling = await self.broker.meta.execute_read(
            select(r.c.stream_id, r.c.start_offset, r.c.end_offset, r.c.size, st.c.start_offset)
            .join(st, st.c.id == r.c.stream_id)
            .where(r.c.start_offset < st.c.start_offset)
        )
        for sid, rs, re_, size, start in straddling:
            gone = min(int(start), int(re_)) - int(rs)
            stream_bytes[int(sid)] -= int(size) * gone // max(int(re_) - int(rs), 1)
        self.stream_bytes = stream_bytes
        used = dict.fromkeys(self.by_name, 0)
        for topic in self.broker.topics.all():
            lane = self.lane_of(topic.name)
            for p in topic.partitions:
                used[lane.name] += self.stream_bytes.get(p.stream_id, 0)
        for name, lane in self.by_name.items():
            lane.used_bytes = used[name]
            # what was appended while we read is in the sum, or will be next time
            lane.appended_bytes = max(0, lane.appended_bytes - appended[name])
            lane.wake()

    def drop_totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        return {
            (lane.name, reason): (v[0], v[1])
            for lane in self.by_name.values()
            for reason, v in lane.drops.items()
        }

    def load_drops(self, totals: dict[tuple[str, str], tuple[int, int]]) -> None:
        for (lane_name, reason), (records, nbytes) in totals.items():
            lane = self.by_name.get(lane_name)
            if lane is not None:
                lane.drops[reason] = [records, nbytes]
