"""A compaction round's ranges, read for compaction's child process to parse.

A fleet's round reads hundreds of thousands of one-record ranges. As Python
objects on the broker's event loop they stalled every client for a second,
so the store hands them over as one text built by the database, which the
child parses (storage/rewrite.py):

- SQLite: a JSON array of rows, built by `json_group_array`;
- PostgreSQL: the rows as `COPY ... TO STDOUT` writes them, every column an
  integer (the object's id, not its key; the few keys come beside them).
  Its `json_agg` of the same rows took the server 0.45-0.58 s of a core
  for 300,000 ranges, in the seconds compaction already oversubscribes the
  machine with; COPY takes 0.10-0.12 s and is a third of the bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

#: a range: stream, start, end, object key, position, size, max timestamp
Row = tuple[int, int, int, str, int, int, int]

_COLUMNS = 7


@dataclass(frozen=True, slots=True)
class RangeRows:
    #: JSON rows with their key (SQLite), or COPY's text format (PostgreSQL)
    data: str | bytes
    #: the objects' keys by id, for COPY's rows; None for JSON rows
    keys: dict[int, str] | None
    #: the streams the ranges belong to, once each, as a JSON array
    streams: str

    @classmethod
    def empty(cls) -> RangeRows:
        return cls("[]", None, "[]")

    def rows(self) -> list[Row]:
        """The rows, in no order. COPY's text is parsed column by column,
        not row by row: its tabs and newlines made commas, it is one JSON
        array of integers (json's parser takes half the time of a
        `map(int)` over its words), sliced into columns."""
        if self.keys is None:
            return [tuple(x) for x in json.loads(self.data)]
        text = self.data.encode() if isinstance(self.data, str) else self.data
        flat = text.rstrip(b"\n").replace(b"\t", b",").replace(b"\n", b",")
        values: list[int] = json.loads(b"[" + flat + b"]")
        if len(values) % _COLUMNS:
            raise ValueError(f"range rows: {len(values)} values is not a whole number of rows")
        keys = self.keys
        return list(
            zip(
                values[0::_COLUMNS],
                values[1::_COLUMNS],
                values[2::_COLUMNS],
                [keys[i] for i in values[3::_COLUMNS]],
                values[4::_COLUMNS],
                values[5::_COLUMNS],
                values[6::_COLUMNS],
                strict=True,
            )
        )
