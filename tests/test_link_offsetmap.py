"""The reverse link's offset map, without sockets: ranges merge while the two
logs keep step, and group offsets translate like MirrorMaker 2's checkpoints."""

from __future__ import annotations

import pytest

from shoal.link.offsetmap import MapError, OffsetMap, Range


def test_contiguous_batches_make_one_range_and_translate_identically() -> None:
    m = OffsetMap.starting_at(100)
    for base in range(100, 200, 10):
        m.add(base, base, 10)
    assert m.ranges == [Range(100, 100, 100)]
    assert m.take_dirty() == [Range(100, 100, 100)] and m.take_dirty() == []
    assert [m.translate(o) for o in (0, 99, 100, 150, 200)] == [0, 99, 100, 150, 200]
    assert (m.shoal_end, m.source_end, m.copied) == (200, 200, 100)


def test_a_marker_here_shifts_the_source_and_offsets_in_it_move_on() -> None:
    m = OffsetMap.starting_at(50)
    m.add(50, 50, 5)  # 50..54
    m.add(56, 55, 4)  # a marker at 55 was not copied: 56..59 -> 55..58
    assert m.ranges == [Range(50, 50, 5), Range(56, 55, 4)]
    assert [m.translate(o) for o in (40, 52, 55, 56, 58, 60)] == [40, 52, 55, 55, 57, 59]
    # Past the map (only markers follow): the source's end.
    assert m.translate(70) == 59


def test_a_range_that_does_not_follow_is_refused() -> None:
    m = OffsetMap.starting_at(10)
    m.add(10, 20, 5)
    with pytest.raises(MapError, match="does not follow"):
        m.add(12, 30, 1)
    with pytest.raises(MapError, match="does not follow"):
        m.add(20, 21, 1)
    with pytest.raises(MapError, match="does not follow"):
        m.add(20, 30, 0)
