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
