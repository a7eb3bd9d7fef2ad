"""Many rows as one JSON parameter that SQLite unpacks (`json_each`).

The sqlite3 module gives up the GIL around every step of a statement: an
executemany of N rows, or fetching N rows, takes it back N times, and with
the event loop busy each take can wait as long as the loop stays busy
(broker/switching.py). A statement that reads its rows from one JSON text
runs whole inside SQLite in one step. Row by row stays quicker for a few
rows on an idle broker (`json_extract` costs more than binding). The
parameter is `json.dumps` of a list of row tuples.
"""

from __future__ import annotations

from collections.abc import Sequence


def columns(count: int, names: Sequence[str] = ()) -> str:
    """SELECT expressions for the first `count` fields of each `json_each`
    row (`value`), in order, each named after `names` if given."""
    alias = [f" AS {n}" for n in names] or [""] * count
    return ", ".join(f"json_extract(value, '$[{i}]'){alias[i]}" for i in range(count))
