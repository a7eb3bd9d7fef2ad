"""The console's transactions page: every transactional id with its state,
producer id and epoch, timeout, how long its transaction has been open and
the partitions in it, as DescribeTransactions reports them.

Read from the transaction coordinator's saved rows (meta/transactions.py),
which hold every id of the cluster: ListTransactions on one broker lists
only the ids that broker coordinates, the console shows all of them, each
with its coordinator. Sans-IO apart from the one read, so the filters and
the "hanging" rule are tested without a broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shoal.broker.broker import Broker
from shoal.txn.state import TxnMeta, TxnState

STATES = tuple(s.value for s in TxnState)
OPEN = (TxnState.ONGOING, TxnState.PREPARE_COMMIT, TxnState.PREPARE_ABORT)


def txn_row(meta: TxnMeta, now_ms: int, older_ms: int, coordinator: int) -> dict[str, Any]:
    """One id for the page and /api. `hanging`: open longer than its own
    timeout (the coordinator should have aborted it) or than `older_ms`."""
    is_open = meta.state in OPEN and meta.start_ms >= 0
    age_ms = now_ms - meta.start_ms if is_open else None
    return {
        "transactional_id": meta.transactional_id,
        "state": meta.state.value,
        "open": is_open,
        "producer_id": meta.producer_id,
        "producer_epoch": meta.producer_epoch,
        "timeout_ms": meta.timeout_ms,
        "start_ms": meta.start_ms if meta.start_ms >= 0 else None,
        "age_s": None if age_ms is None else age_ms / 1000,
        "hanging": age_ms is not None and (age_ms > meta.timeout_ms or age_ms > older_ms),
        "partitions": [f"{t}-{p}" for t, p in sorted(meta.partitions)],
        "groups": sorted(meta.offsets),
        "coordinator": coordinator,
        "updated_ms": meta.update_ms,
    }


def select(
    rows: Iterable[dict[str, Any]], state: str | None, prefix: str | None
) -> list[dict[str, Any]]:
    """`state`: one of STATES, or "open" (any state of an unfinished
    transaction); `prefix`: of the transactional id."""
    out = []
    for r in rows:
        if state == "open" and not r["open"]:
            continue
        if state not in (None, "open") and r["state"] != state:
            continue
        if prefix and not r["transactional_id"].startswith(prefix):
            continue
        out.append(r)
    return sorted(out, key=lambda r: r["transactional_id"])


async def transactions_view(
    broker: Broker, now_ms: int, older_ms: int, state: str | None, prefix: str | None
) -> list[dict[str, Any]]:
    metas = [TxnMeta.from_row(r) for r in await broker.txn.repo.load()]
    rows = (
        txn_row(m, now_ms, older_ms, broker.coordinator_node(m.transactional_id).node_id)
        for m in metas
    )
    return select(rows, state, prefix)
