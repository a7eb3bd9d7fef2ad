"""read_committed for Fetch and ListOffsets: the isolation level of a
request, and the aborted-transactions list of a Fetch answer. Kept apart from
the handlers so that the transaction rules read in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shoal.meta.store import AbortedTxn

READ_UNCOMMITTED = 0
READ_COMMITTED = 1


def read_committed(body: Any) -> bool:
    """Fetch v4+ and ListOffsets v2+ carry isolation_level."""
    return int(getattr(body, "isolation_level", READ_UNCOMMITTED)) == READ_COMMITTED


def aborted_transactions(
    committed: bool, aborted: Sequence[AbortedTxn]
) -> tuple[tuple[int, int], ...] | None:
    """The FetchResponse field: null for read_uncommitted (Kafka's answer),
    else (producer id, first offset) of each aborted transaction the data
    overlaps, which the client drops when it meets their records."""
    if not committed:
        return None
    if not aborted:  # nearly every partition of a read_committed fetch
        return ()
    return tuple((a.producer_id, a.first_offset) for a in aborted)
