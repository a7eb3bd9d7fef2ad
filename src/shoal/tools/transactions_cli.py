"""`shoal transactions list|describe`: transactions over the Kafka protocol,
as `kafka-transactions.sh list|describe`.

ListTransactions goes to every broker (each lists the ids it coordinates),
DescribeTransactions to the id's coordinator (FindCoordinator, key type 1),
through tools.kafka_wire: plaintext listeners only, Shoal or any Kafka 3.0+.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import click

from shoal.tools.options import bootstrap_option, console, format_option, timeout_option

_FIND_COORDINATOR = (10, 2)
_DESCRIBE = (65, 0)
_LIST = (66, 0)
STATES = ("Empty", "Ongoing", "PrepareCommit", "PrepareAbort", "CompleteCommit", "CompleteAbort")


def _brokers(bootstrap: str, timeout: float) -> list[str]:
    from kio.schema.metadata.v1.request import MetadataRequest

    from shoal.tools import kafka_wire

    first = bootstrap.split(",")[0]
    with kafka_wire.Connection(first, timeout) as conn:
        resp = conn.request((3, 1), MetadataRequest(topics=()))
    return [f"{b.host}:{b.port}" for b in resp.brokers]


def list_transactions(
    bootstrap: str, timeout: float, states: tuple[str, ...]
) -> list[dict[str, Any]]:
    from kio.schema.list_transactions.v0.request import ListTransactionsRequest

    from shoal.tools import kafka_wire

    rows: list[dict[str, Any]] = []
    for address in _brokers(bootstrap, timeout):
        with kafka_wire.Connection(address, timeout) as conn:
            if not conn.supports(_LIST):
                raise kafka_wire.WireError(f"{address} does not offer ListTransactions")
            resp = conn.request(
                _LIST, ListTransactionsRequest(state_filters=states, producer_id_filters=())
            )
        if resp.error_code.value != 0:
            raise kafka_wire.WireError(f"{address}: {resp.error_code.name.upper()}")
        rows.extend(
            {
                "transactional_id": t.transactional_id,
                "producer_id": int(t.producer_id),
                "state": t.transaction_state,
                "coordinator": address,
            }
            for t in resp.transaction_states
        )
    return sorted(rows, key=lambda r: str(r["transactional_id"]))


def describe_transaction(bootstrap: str, timeout: float, tid: str) -> dict[str, Any]:
    from kio.schema.describe_transactions.v0.request import DescribeTransactionsRequest
    from kio.schema.find_coordinator.v2.request import FindCoordinatorRequest
    from kio.schema.types import TransactionalId
    from kio.static.primitive import i8

    from shoal.tools import kafka_wire

    first = bootstrap.split(",")[0]
    with kafka_wire.Connection(first, timeout) as conn:
        found = conn.request(_FIND_COORDINATOR, FindCoordinatorRequest(key=tid, key_type=i8(1)))
    if found.error_code.value != 0:
        raise kafka_wire.WireError(f"{tid!r}: {found.error_code.name.upper()}")
    coordinator = f"{found.host}:{found.port}"
    with kafka_wire.Connection(coordinator, timeout) as conn:
        if not conn.supports(_DESCRIBE):
            raise kafka_wire.WireError(f"{coordinator} does not offer DescribeTransactions")
        (t,) = conn.request(
            _DESCRIBE, DescribeTransactionsRequest(transactional_ids=(TransactionalId(tid),))
        ).transaction_states
    if t.error_code.value != 0:
        raise kafka_wire.WireError(f"{tid!r}: {t.error_code.name.upper()}")
    start = t.transaction_start_time
    return {
        "transactional_id": tid,
        "coordinator": coordinator,
        "state": t.transaction_state,
        "producer_id": int(t.producer_id),
        "producer_epoch": int(t.producer_epoch),
        "timeout_ms": int(t.transaction_timeout.total_seconds() * 1000),
        "start": start.isoformat() if start.timestamp() >= 0 else None,
        "partitions": sorted(f"{p.topic}-{i}" for p in t.topics for i in p.partitions),
    }


@click.group()
def transactions() -> None:
    """Transactions (Kafka's transaction coordinator) over the Kafka protocol."""


@transactions.command("list")
@bootstrap_option()
@timeout_option()
@format_option()
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATES),
    help="Only transactions in this state (repeatable).",
)
def list_command(bootstrap: str, timeout: float, fmt: str, states: tuple[str, ...]) -> None:
    """Every transactional id the cluster's coordinators know."""
    from shoal.tools import kafka_wire

    try:
        rows = list_transactions(bootstrap, timeout, states)
    except kafka_wire.WireError as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"Transactions ({len(rows)})")
    for col in ("transactional_id", "producer_id", "state", "coordinator"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    console().print(table)


@transactions.command("describe")
@bootstrap_option()
@timeout_option()
@format_option()
@click.argument("transactional_id")
def describe_command(bootstrap: str, timeout: float, fmt: str, transactional_id: str) -> None:
    """One transactional id: state, producer, timeout, open partitions."""
    from shoal.tools import kafka_wire

    try:
        row = describe_transaction(bootstrap, timeout, transactional_id)
    except kafka_wire.WireError as exc:
        raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(row, indent=2))
        return
    started = row["start"]
    if started is not None:
        age = datetime.datetime.now(datetime.UTC) - datetime.datetime.fromisoformat(started)
        started = f"{started} ({age.total_seconds():.0f} s ago)"
    for key, value in {**row, "start": started or "-"}.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        click.echo(f"{key:17} {shown if shown not in ('', None) else '-'}")
