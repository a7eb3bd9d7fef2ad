"""RangeRows: the two texts compaction's child parses into rows."""

from __future__ import annotations

import json

import pytest

from shoal.meta.range_rows import RangeRows


def test_copy_text_becomes_rows_with_their_object_keys() -> None:
    data = b"7\t0\t1\t42\t0\t100\t1700\n7\t1\t3\t43\t96\t250\t1800\n9\t5\t6\t42\t100\t80\t1750\n"
    found = RangeRows(data, {42: "wal/a.wal", 43: "wal/b.wal"}, "[7,9]")
    assert found.rows() == [
        (7, 0, 1, "wal/a.wal", 0, 100, 1700),
        (7, 1, 3, "wal/b.wal", 96, 250, 1800),
        (9, 5, 6, "wal/a.wal", 100, 80, 1750),
    ]


def test_json_rows_keep_their_keys() -> None:
    rows = [[7, 0, 1, "wal/a.wal", 0, 100, 1700]]
    assert RangeRows(json.dumps(rows), None, "[7]").rows() == [(7, 0, 1, "wal/a.wal", 0, 100, 1700)]
    assert RangeRows.empty().rows() == []


def test_a_copy_text_cut_short_is_an_error_not_shifted_rows() -> None:
    with pytest.raises(ValueError, match="not a whole number of rows"):
        RangeRows(b"7\t0\t1\t42\t0\t100\n", {42: "wal/a.wal"}, "[7]").rows()
