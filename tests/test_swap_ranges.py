"""streams.swap_ranges: compaction's swap of a stream's ranges, spliced by
bisection in the usual case, always what the plain filter-and-sort gives."""

from __future__ import annotations

import gc

from hypothesis import given
from hypothesis import strategies as st

from shoal.meta.store import R_KEY, R_START, RangeRecord
from shoal.storage.streams import swap_ranges


def _range(start: int, key: str = "wal") -> RangeRecord:
    return RangeRecord(1, start, start + 1, key, 0, 10, 0)


def _reference(
    ranges: list[RangeRecord], old_starts: list[int], new: list[RangeRecord]
) -> tuple[list[RangeRecord], list[int], list[RangeRecord]]:
    gone = set(old_starts)
    merged = sorted(
        [r for r in ranges if r.start_offset not in gone] + new, key=lambda r: r.start_offset
    )
    return merged, [r.start_offset for r in merged], [r for r in ranges if r.start_offset in gone]


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
    starts = [r.start_offset for r in ranges]
    before = (list(ranges), list(starts))
    assert swap_ranges(ranges, starts, old, new) == _reference(ranges, old, new)
    assert (ranges, starts) == before  # new lists: a reader may hold the old ones


def test_neighbours_are_spliced() -> None:
    ranges = [_range(s) for s in (0, 1, 2, 3, 4)]
    got, starts, gone = swap_ranges(ranges, [0, 1, 2, 3, 4], [2, 1], [_range(1, "c")])
    assert starts == [0, 1, 3, 4]
    assert [r[R_KEY] for r in got] == ["wal", "c", "wal", "wal"]
    assert [r[R_START] for r in gone] == [1, 2]


def test_swapped_in_ranges_are_plain_tuples_the_collector_lets_go() -> None:
    # A stream holds a range per WAL commit until compaction: as records (a
    # NamedTuple, a class instance) every older collection traversed them.
    got, _starts, _gone = swap_ranges([_range(0)], [0], [0], [_range(0, "c"), _range(1, "c")])
    gc.collect()
    assert [type(r) for r in got] == [tuple, tuple]
    assert not any(gc.is_tracked(r) for r in got)
