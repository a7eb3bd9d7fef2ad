"""IN lists padded to a few lengths, so a statement has a few SQL texts.

SQLAlchemy renders `column IN (list)` with one placeholder per value, so
every list length is a statement text of its own, and every text a new
entry in each pooled connection's statement cache: asyncpg's prepared
statements (SQLAlchemy keeps 100-150 per connection) and sqlite3's compiled
statements (128 per connection), both mostly native memory outside Python's
view. The cleaner's and compaction's lists change length every round, so
those caches filled with statements used once, a few KiB to tens of KiB
each: the brokers' RSS rose for as long as they ran (docs/RELIABILITY.md,
Soak). A list padded to the next power of two with copies of its last value
means the same rows (IN ignores duplicates) and at most a dozen texts per
statement up to 2,000 values.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def padded(values: Iterable[T]) -> list[T]:
    """`values` as a list whose length is a power of two, the last value
    repeated (an empty list stays empty)."""
    out = list(values)
    if out:
        out.extend([out[-1]] * ((1 << (len(out) - 1).bit_length()) - len(out)))
    return out


def in_(column: Any, values: Iterable[Any]) -> Any:
    """`column IN (values)` with the list padded (see the module's doc)."""
    return column.in_(padded(values))
