"""storage.rangeindex: a stream's ranges as columns. A swap is spliced by
bisection in the usual case and is always what the plain filter-and-sort
gives; a trim drops what ends at or below the new start; neither changes the
index a reader may hold; and nothing in it is a container per range."""

from __future__ import annotations

import gc

from hypothesis import given
from hypothesis import strategies as st

from shoal.meta.store import RangeRecord
from shoal.storage.rangeindex import RangeIndex


def _range(start: int, key: str = "wal", end: int | None = None) -> RangeRecord:
    return RangeRecord(1, start, start + 1 if end is None else end, key, start * 10, 10, start)


def _reference(
    ranges: list[RangeRecord], old_starts: list[int], new: list[RangeRecord]
) -> tuple[list[RangeRecord], list[tuple[str, int]]]:
    gone = set(old_starts)
    merged = sorted(
        [r for r in ranges if r.start_offset not in gone] + new, key=lambda r: r.start_offset
    )
    return merged, [(r.object_key, r.position) for r in ranges if r.start_offset in gone]


@st.composite
def _swaps(draw: st.DrawFn) -> tuple[list[RangeRecord], list[int], list[RangeRecord]]:
    starts = sorted(draw(st.sets(st.integers(0, 200), max_size=30)))
    ranges = [_range(s) for s in starts]
    if draw(st.booleans()) and starts:
        # compaction's usual swap: neighbours, replaced by ranges in their span
        lo = draw(st.integers(0, len(starts) - 1))
        hi = draw(st.integers(lo + 1, len(starts)))
        old = starts[lo:hi]
        ceiling = starts[hi] if hi < len(starts) else 300
        # (now and then reaching past the span: the fallback then)
        new_starts = draw(
            st.sets(st.integers(max(0, old[0] - 3), ceiling + 2), min_size=1, max_size=5)
        )
    else:
        old = draw(st.lists(st.sampled_from(starts) if starts else st.just(0), max_size=8))
        new_starts = draw(st.sets(st.integers(0, 300), max_size=5))
    new = [_range(s, "compacted") for s in draw(st.permutations(sorted(new_starts)))]
    return ranges, draw(st.permutations(old)), new


@given(_swaps())
def test_the_swap_is_the_plain_filter_and_sort(
    case: tuple[list[RangeRecord], list[int], list[RangeRecord]],
) -> None:
    ranges, old, new = case
    index = RangeIndex.of(ranges)
    got, gone = index.swapped(old, new)
    assert (got.records(1), gone) == _reference(ranges, old, new)
    assert index.records(1) == ranges  # a new index: a reader may hold the old one


def test_neighbours_are_spliced() -> None:
    index = RangeIndex.of(_range(s) for s in (0, 1, 2, 3, 4))
    got, gone = index.swapped([2, 1], [_range(1, "c", end=3)])
    assert list(got.starts) == [0, 1, 3, 4]
    assert got.keys == ["wal", "c", "wal", "wal"]
    assert gone == [("wal", 10), ("wal", 20)]
    assert [got.find(o) for o in (0, 1, 2, 3, 4, 5)] == [0, 1, 1, 2, 3, -1]


@given(st.sets(st.integers(0, 100), max_size=20), st.integers(0, 110))
def test_a_trim_drops_what_ends_at_or_below_the_start(starts: set[int], start: int) -> None:
    ranges = [_range(s) for s in sorted(starts)]
    index = RangeIndex.of(ranges)
    got, gone = index.from_offset(start)
    assert got.records(1) == [r for r in ranges if r.end_offset > start]
    assert gone == [(r.object_key, r.position) for r in ranges if r.end_offset <= start]
    assert index.records(1) == ranges
    assert (got is index) == (not gone)


def test_find_holes_and_ends() -> None:
    index = RangeIndex.of([_range(0, end=5), _range(7, end=9)])
    assert [index.find(o) for o in (-1, 0, 4, 5, 6, 7, 8, 9)] == [-1, 0, 0, -1, -1, 1, 1, -1]
    assert index.end == 9
    assert RangeIndex().end is None


def test_ranges_leave_the_collector_nothing_to_traverse() -> None:
    # A stream holds a range per WAL commit until compaction: as tuples, each
    # young collection visited tens of thousands of them, and their ints.
    index = RangeIndex()
    gc.collect()
    before = len(gc.get_objects(generation=0))
    for i in range(1000):
        index.append(i, i + 1, "wal", i * 10, 10, i)
    assert len(gc.get_objects(generation=0)) - before < 10  # no object per range
    # a column's only reference is its type: no offsets, positions or
    # timestamps as int objects for the collector to visit
    for column in (index.starts, index.ends, index.positions, index.sizes, index.max_timestamps):
        assert gc.get_referents(column) == [type(column)]
    assert set(map(id, gc.get_referents(index.keys))) == {id("wal")}
    assert index.record(1, 999) == RangeRecord(1, 999, 1000, "wal", 9990, 10, 999)


def test_empty_indexes_share_nothing_they_append_to() -> None:
    # Empty indexes share their (empty) columns, so an idle stream holds no
    # arrays; the first append must give the index columns of its own.
    a, b = RangeIndex(), RangeIndex()
    a.append(0, 1, "wal", 0, 10, 0)
    assert len(a) == 1 and len(b) == 0 and b.end is None and b.keys == []
    trimmed, _gone = a.from_offset(5)
    trimmed.append(7, 8, "next", 0, 10, 0)
    assert a.records(1) == [RangeRecord(1, 0, 1, "wal", 0, 10, 0)]
    assert len(RangeIndex()) == 0 and list(RangeIndex().starts) == []
