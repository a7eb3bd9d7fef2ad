"""The two read caches: LogCache (tail reads) and BlockCache (catch-up reads).

Both are bounded in bytes and count hits and misses, so that memory use
follows configuration and the hit rate is observable.
"""

from __future__ import annotations

import bisect
import sys
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

#: What a LogCache entry costs beside its bytes: the bytes object's header,
#: its base, end and max timestamp (ints), their four list slots, its slot
#: in the eviction order and its put time (a float in the order, 8 bytes in
#: the stream's array). For a batch of a few small records that is a third
#: or more of what it costs, so counting only the bytes overran the bound.
ENTRY_OVERHEAD = sys.getsizeof(b"") + 3 * sys.getsizeof(2**40) + sys.getsizeof(0.0) + 8 * 8

#: How often, at most, LogCache looks for entries past their age.
EXPIRE_CHECK_S = 1.0


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expired: int = 0  # LogCache entries dropped by age

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


@dataclass(slots=True)
class _StreamTail:
    bases: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    data: list[bytes] = field(default_factory=list)
    max_ts: list[int] = field(default_factory=list)
    put_at: array[float] = field(default_factory=lambda: array("d"))
    first: int = 0  # index of the first live entry; lists are compacted lazily

    def live(self) -> int:
        return len(self.bases) - self.first

    def drop_first(self) -> int:
        size = len(self.data[self.first])
        self.data[self.first] = b""
        self.first += 1
        if self.first > 64 and self.first * 2 > len(self.bases):
            del self.bases[: self.first], self.ends[: self.first]
            del self.data[: self.first], self.max_ts[: self.first]
            del self.put_at[: self.first]
            self.first = 0
        return size


class LogCache:
    """Recently committed batches per stream, oldest evicted first, globally.

    Appended in commit order, so each stream's entries are sorted and dense:
    a tail read is a bisect and a slice. `size` counts each entry's bytes and
    its ENTRY_OVERHEAD, so max_bytes bounds the memory it holds.

    Entries older than max_age_s go too (0: no age bound). The cache is for
    consumers at the tail; one minutes behind reads blocks through the
    BlockCache instead. Without the age bound a fleet's trickle fills the
    cache towards max_bytes for a day or more, and memory that keeps rising
    for a day cannot be told from a leak.
    """

    def __init__(
        self,
        max_bytes: int,
        max_age_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.size = 0
        self.stats = CacheStats()
        self._clock = clock
        self._streams: dict[int, _StreamTail] = {}
        # Stream id of each entry and its put time, oldest first. Entries
        # dropped otherwise than by eviction (trim, drop_stream) leave their
        # ids behind until _compact_order takes them out.
        self._order: deque[int] = deque()
        self._times: deque[float] = deque()
        self._live = 0  # entries held, over all streams
        self._checked = clock()

    def __len__(self) -> int:
        return self._live

    def put(self, stream_id: int, base: int, end: int, data: bytes, max_ts: int) -> None:
        if len(data) + ENTRY_OVERHEAD > self.max_bytes:
            return
        tail = self._streams.get(stream_id)
        if tail is not None and tail.live() and tail.ends[-1] != base:
            self.drop_stream(stream_id)  # a gap: never serve a non-dense tail
            tail = None
        if tail is None:
            tail = self._streams[stream_id] = _StreamTail()
        tail.bases.append(base)
        tail.ends.append(end)
        tail.data.append(data)
        now = self._clock()
        tail.max_ts.append(max_ts)
        tail.put_at.append(now)
        self._order.append(stream_id)
        self._times.append(now)
        self.size += len(data) + ENTRY_OVERHEAD
        self._live += 1
        self._expire(now)
        while self.size > self.max_bytes and self._order:
            victim = self._order.popleft()
            self._times.popleft()
            vt = self._streams.get(victim)
            if vt is None or not vt.live():
                continue
            self._drop_first(vt)
            self.stats.evictions += 1

    def _drop_first(self, tail: _StreamTail) -> None:
        self.size -= tail.drop_first() + ENTRY_OVERHEAD
        self._live -= 1

    def _expire(self, now: float) -> None:
        """Drop the entries put more than max_age_s ago, at most once every
        EXPIRE_CHECK_S. The order's front is its oldest id; if that id's
        stream holds an entry as old, it is the stream's first live one
        (ids and entries leave each stream oldest first) and goes; if not,
        the id was left behind by a trim and goes alone."""
        if self.max_age_s <= 0 or now - self._checked < EXPIRE_CHECK_S:
            return
        self._checked = now
        cutoff = now - self.max_age_s
        while self._times and self._times[0] < cutoff:
            self._times.popleft()
            tail = self._streams.get(self._order.popleft())
            if tail is not None and tail.live() and tail.put_at[tail.first] < cutoff:
                self._drop_first(tail)
                self.stats.expired += 1

    def expire(self) -> None:
        """The age bound, for callers that do not put (an idle broker's reads)."""
        self._expire(self._clock())

    def first_offset(self, stream_id: int) -> int | None:
        tail = self._streams.get(stream_id)
        if tail is None or not tail.live():
            return None
        return tail.bases[tail.first]

    def read(
        self, stream_id: int, offset: int, max_bytes: int, at_least_one: bool = True
    ) -> list[bytes] | None:
        """Whole batches from the one containing `offset`, at least one (unless
        `at_least_one` is off and it does not fit), then as many as fit in
        max_bytes. None when the cache does not cover offset."""
        self._expire(self._clock())
        tail = self._streams.get(stream_id)
        if tail is None or not tail.live() or offset < tail.bases[tail.first]:
            self.stats.misses += 1
            return None
        i = bisect.bisect_right(tail.ends, offset, lo=tail.first)
        if i >= len(tail.bases):
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        if not at_least_one and len(tail.data[i]) > max_bytes:
            return []
        out = [tail.data[i]]
        total = len(tail.data[i])
        i += 1
        while i < len(tail.data) and total + len(tail.data[i]) <= max_bytes:
            out.append(tail.data[i])
            total += len(tail.data[i])
            i += 1
        return out

    def entries(self, stream_id: int) -> list[tuple[int, int, int]]:
        """(base, end, max_ts) of the cached batches, for timestamp lookups."""
        tail = self._streams.get(stream_id)
        if tail is None:
            return []
        return list(
            zip(
                tail.bases[tail.first :],
                tail.ends[tail.first :],
                tail.max_ts[tail.first :],
                strict=True,
            )
        )

    def trim(self, stream_id: int, start: int) -> None:
        """Drop the batches wholly below a new log start offset (retention,
        DeleteRecords): nobody can read them any more, and under a short
        retention they would otherwise stay until the whole cache filled."""
        tail = self._streams.get(stream_id)
        if tail is None:
            return
        while tail.live() and tail.ends[tail.first] <= start:
            self._drop_first(tail)
        if not tail.live():
            del self._streams[stream_id]
        self._compact_order()

    def drop_stream(self, stream_id: int) -> None:
        tail = self._streams.pop(stream_id, None)
        if tail is not None:
            self.size -= sum(len(d) for d in tail.data[tail.first :])
            self.size -= tail.live() * ENTRY_OVERHEAD
            self._live -= tail.live()
            self._compact_order()

    def _compact_order(self) -> None:
        """Take the ids of dropped entries out of the eviction order once they
        outnumber the live ones: each stream keeps its newest `live` ids (its
        oldest entries go first). Amortised: at least as many drops as there
        are live entries happen between two rebuilds."""
        if len(self._order) <= 2 * self._live + 1024:
            return
        need = {sid: t.live() for sid, t in self._streams.items()}
        kept: list[int] = []
        times: list[float] = []
        for sid, at in zip(reversed(self._order), reversed(self._times), strict=True):
            if need.get(sid, 0) > 0:
                need[sid] -= 1
                kept.append(sid)
                times.append(at)
        kept.reverse()
        times.reverse()
        self._order = deque(kept)
        self._times = deque(times)


class BlockCache:
    """Blocks read from objects, LRU by bytes.

    Indexed by object too: when an object is swapped out (compaction, merge)
    or deleted, its blocks can never be read again, and left to the LRU they
    would push live blocks out first. evict_object drops them in O(blocks of
    that object).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.stats = CacheStats()
        self._blocks: OrderedDict[tuple[str, int], memoryview] = OrderedDict()
        self._by_object: dict[str, set[int]] = {}  # object key -> cached positions

    def __len__(self) -> int:
        return len(self._blocks)

    def get(self, key: str, position: int, *, count: bool = True) -> memoryview | None:
        block = self._blocks.get((key, position))
        if block is None:
            if count:
                self.stats.misses += 1
            return None
        if count:
            self._blocks.move_to_end((key, position))
            self.stats.hits += 1
        return block

    def put(self, key: str, position: int, block: memoryview) -> None:
        if len(block) > self.max_bytes or (key, position) in self._blocks:
            return
        self._blocks[(key, position)] = block
        self._by_object.setdefault(key, set()).add(position)
        self.size += len(block)
        while self.size > self.max_bytes:
            (old_key, old_pos), old = self._blocks.popitem(last=False)
            self._unindex(old_key, old_pos)
            self.size -= len(old)
            self.stats.evictions += 1

    def object_keys(self) -> set[str]:
        """Keys of the objects with a block here (one entry per object)."""
        return set(self._by_object)

    def evict(self, key: str, position: int) -> None:
        """Drop one block (its range was swapped out of its stream)."""
        block = self._blocks.pop((key, position), None)
        if block is not None:
            self._unindex(key, position)
            self.size -= len(block)

    def evict_object(self, key: str) -> None:
        """Drop every block of an object that is gone or swapped out."""
        for position in self._by_object.pop(key, ()):
            self.size -= len(self._blocks.pop((key, position)))

    def _unindex(self, key: str, position: int) -> None:
        positions = self._by_object[key]
        positions.discard(position)
        if not positions:
            del self._by_object[key]
