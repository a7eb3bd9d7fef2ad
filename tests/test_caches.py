"""The read caches hold what their bound says, and let go of what no one can
read (the soak's broker memory, issue 17)."""

from __future__ import annotations

import tracemalloc

from shoal.storage.caches import ENTRY_OVERHEAD, BlockCache, LogCache


def test_log_cache_of_small_batches_holds_about_its_bound() -> None:
    """A batch of a few small records is mostly per-entry overhead; a bound
    counting only the bytes let such a cache hold many times its size."""
    bound = 200_000
    cache = LogCache(bound)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            cache.put(1, 1000 + i, 1001 + i, bytes(10), 1_700_000_000_000 + i)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.size <= bound
    assert cache.stats.evictions > 0
    assert held < 2 * bound, f"{held} bytes held for a {bound}-byte cache"


def test_trim_drops_the_batches_below_the_log_start() -> None:
    cache = LogCache(1 << 20)
    for i in range(100):
        cache.put(7, i, i + 1, b"r%d" % i, i)
    cache.trim(7, 60)
    assert cache.first_offset(7) == 60
    assert len(cache) == 40
    assert cache.size == sum(len(b"r%d" % i) + ENTRY_OVERHEAD for i in range(60, 100))
    assert cache.read(7, 59, 1 << 20) is None
    assert cache.read(7, 60, 1 << 20) == [b"r%d" % i for i in range(60, 100)]
    cache.trim(7, 100)  # everything: the stream's entry goes too
    assert cache.first_offset(7) is None and len(cache) == 0 and cache.size == 0


def test_a_short_retention_keeps_the_cache_small() -> None:
    """A topic whose retention trims every few batches, as `rolling` in the
    soak: entries and their slots in the eviction order stay bounded by what
    is live, however long it runs and however far below its bound."""
    cache = LogCache(1 << 30)
    for i in range(50_000):
        cache.put(1, i, i + 1, b"x" * 20, i)
        cache.put(2, i, i + 1, b"y" * 20, i)  # kept: evicted only by size
        if i % 10 == 0:
            cache.trim(1, i - 100)
    assert len(cache) <= 50_000 + 111
    assert len(cache._order) <= 2 * len(cache) + 1024


def test_eviction_after_a_dropped_stream_still_takes_the_oldest_first() -> None:
    """The ids a dropped stream leaves in the eviction order must not evict
    the entries it caches again afterwards."""
    cache = LogCache(1 << 30)
    for i in range(3000):
        cache.put(1, i, i + 1, b"a", i)
    for i in range(500):
        cache.put(2, i, i + 1, b"b", i)
    cache.drop_stream(1)  # e.g. key compaction rewrote it
    for i in range(5000, 5010):
        cache.put(1, i, i + 1, b"a", i)
    cache.max_bytes = cache.size - 1
    cache.put(2, 500, 501, b"b", 0)  # over the bound by one entry: two go
    assert cache.first_offset(2) == 2
    assert cache.first_offset(1) == 5000


class Clock:
    """A clock the test moves by hand: the age bound without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_older_than_the_age_bound_go_and_a_trickle_stays_flat() -> None:
    """A kept topic at a fleet's trickle never reaches the byte bound; the
    age bound is what keeps its tail from growing for a day (the soak)."""
    clock = Clock()
    cache = LogCache(1 << 30, max_age_s=60, clock=clock)
    sizes = []
    for second in range(600):
        clock.now += 1
        for stream in (1, 2, 3):
            cache.put(stream, second, second + 1, b"z" * 100, second)
        if second % 60 == 59:
            sizes.append(cache.size)
    # After the first minute the cache holds one minute of batches, plus at
    # most one expiry check's worth.
    per_entry = 100 + ENTRY_OVERHEAD
    assert all(s <= 3 * (60 + 2) * per_entry for s in sizes), sizes
    assert sizes[-1] == sizes[1], sizes
    assert cache.stats.expired == 3 * 600 - len(cache)
    assert cache.stats.evictions == 0
    # What is left is each stream's newest minute, dense and readable.
    for stream in (1, 2, 3):
        first = cache.first_offset(stream)
        assert first is not None and 538 <= first <= 541
        assert cache.read(stream, first, 1 << 20) == [b"z" * 100] * (600 - first)


def test_the_age_bound_skips_ids_a_trim_left_and_spares_newer_entries() -> None:
    """Ids left in the order by a trim are older than the entries their
    stream holds now: expiring them must not take those entries."""
    clock = Clock()
    cache = LogCache(1 << 30, max_age_s=10, clock=clock)
    for i in range(5):
        cache.put(1, i, i + 1, b"old", i)
    cache.trim(1, 5)  # all five go; their ids stay in the order
    clock.now += 9
    cache.put(1, 5, 6, b"new", 5)
    cache.put(2, 0, 1, b"other", 0)
    clock.now += 2  # the old ids are 11 s old, the new entries 2 s
    cache.expire()
    assert cache.read(1, 5, 1 << 20) == [b"new"]
    assert cache.read(2, 0, 1 << 20) == [b"other"]
    assert cache.stats.expired == 0
    clock.now += 10
    cache.expire()  # an idle cache lets go too: nobody puts
    assert len(cache) == 0 and cache.size == 0
    assert cache.stats.expired == 2


def test_no_age_bound_keeps_entries_however_old() -> None:
    clock = Clock()
    cache = LogCache(1 << 30, clock=clock)  # max_age_s=0: the bytes bound only
    cache.put(1, 0, 1, b"kept", 0)
    clock.now += 86_400
    cache.put(1, 1, 2, b"next", 1)
    assert cache.read(1, 0, 1 << 20) == [b"kept", b"next"]


def block_accounting(cache: BlockCache) -> tuple[int, set[str]]:
    """(bytes, object keys) of the blocks really held, to hold the cache's own
    count and index to."""
    blocks = cache._blocks  # the ground truth of the accounting
    return sum(len(b) for b in blocks.values()), {k for k, _pos in blocks}


def test_block_cache_evicts_an_objects_blocks_and_keeps_its_count() -> None:
    cache = BlockCache(8_000)
    for obj in ("a", "b", "c"):
        for pos in range(0, 3000, 1000):
            cache.put(obj, pos, memoryview(bytes(900)))
    # Full: LRU eviction took a's first blocks; the index followed.
    assert cache.stats.evictions == 1 and cache.get("a", 0, count=False) is None
    assert block_accounting(cache) == (cache.size, cache.object_keys())
    cache.evict_object("b")
    assert all(cache.get("b", pos, count=False) is None for pos in range(0, 3000, 1000))
    assert "b" not in cache.object_keys()
    cache.evict("c", 1000)
    cache.evict("c", 1000)  # twice, or a block never cached: nothing happens
    cache.evict_object("never")
    assert cache.get("c", 1000, count=False) is None and cache.get("c", 0, count=False) is not None
    assert (
        block_accounting(cache) == (cache.size, cache.object_keys()) == (4 * 900, {"a", "c"})
    )  # a: 2, c: 2
    for pos in range(12):  # LRU eviction of everything else keeps the index in step
        cache.put("d", pos, memoryview(bytes(900)))
    assert block_accounting(cache) == (cache.size, cache.object_keys()) == (8 * 900, {"d"})
