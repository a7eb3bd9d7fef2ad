"""`shoal transactions list|describe|abort`: transactions over the Kafka
protocol, as `kafka-transactions.sh list|describe|abort`.

ListTransactions goes to every broker (each lists the ids it coordinates),
DescribeTransactions to the id's coordinator (FindCoordinator, key type 1);
`abort` ends a hanging transaction on one partition as Kafka's tool does:
DescribeProducers on the partition's leader finds the producer with an open
transaction there, and WriteTxnMarkers writes its abort marker. All through
tools.kafka_wire: plaintext listeners only, Shoal or any Kafka 3.0+.
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


def _metadata(bootstrap: str, timeout: float, topics: tuple[str, ...] = ()) -> Any:
    from kio.schema.metadata.v1.request import MetadataRequest, MetadataRequestTopic
    from kio.schema.types import TopicName

    from shoal.tools import kafka_wire

    first = bootstrap.split(",")[0]
    with kafka_wire.Connection(first, timeout) as conn:
        return conn.request(
            (3, 1),
            MetadataRequest(topics=tuple(MetadataRequestTopic(name=TopicName(t)) for t in topics)),
        )


def _brokers(bootstrap: str, timeout: float) -> list[str]:
    return [f"{b.host}:{b.port}" for b in _metadata(bootstrap, timeout).brokers]


def abort_hanging(
    bootstrap: str, timeout: float, topic: str, partition: int, producer_id: int | None
) -> int:
    """Abort the open transaction on TOPIC-PARTITION; returns its producer id."""
    from kio.schema.describe_producers.v0 import request as dp
    from kio.schema.types import ProducerId, TopicName
    from kio.schema.write_txn_markers.v1 import request as wm
    from kio.static.primitive import i16, i32

    from shoal.tools import kafka_wire

    meta = _metadata(bootstrap, timeout, (topic,))
    (t,) = meta.topics
    if t.error_code.value != 0:
        raise kafka_wire.WireError(f"topic {topic!r}: {t.error_code.name.upper()}")
    leaders = {int(p.partition_index): int(p.leader_id) for p in t.partitions}
    if partition not in leaders:
        raise kafka_wire.WireError(f"topic {topic!r} has no partition {partition}")
    addresses = {int(b.node_id): f"{b.host}:{b.port}" for b in meta.brokers}
    leader = addresses.get(leaders[partition])
    if leader is None:
        raise kafka_wire.WireError(f"{topic}-{partition} has no leader")
    with kafka_wire.Connection(leader, timeout) as conn:
        resp = conn.request(
            (61, 0),
            dp.DescribeProducersRequest(
                topics=(
                    dp.TopicRequest(name=TopicName(topic), partition_indexes=(i32(partition),)),
                )
            ),
        )
        (p,) = resp.topics[0].partitions
        if p.error_code.value != 0:
            raise kafka_wire.WireError(f"{topic}-{partition}: {p.error_code.name.upper()}")
        open_txns = [
            a
            for a in p.active_producers
            if a.current_txn_start_offset >= 0
            and (producer_id is None or a.producer_id == producer_id)
        ]
        if not open_txns:
            raise kafka_wire.WireError(
                f"{topic}-{partition}: no open transaction"
                + (f" of producer {producer_id}" if producer_id is not None else "")
            )
        if len(open_txns) > 1:
            ids = ", ".join(str(a.producer_id) for a in open_txns)
            raise kafka_wire.WireError(
                f"{topic}-{partition}: open transactions of producers {ids}: give --producer-id"
            )
        (victim,) = open_txns
        result = conn.request(
            (27, 1),
            wm.WriteTxnMarkersRequest(
                markers=(
                    wm.WritableTxnMarker(
                        producer_id=ProducerId(victim.producer_id),
                        producer_epoch=i16(victim.producer_epoch),
                        transaction_result=False,
                        topics=(
                            wm.WritableTxnMarkerTopic(
                                name=TopicName(topic), partition_indexes=(i32(partition),)
                            ),
                        ),
                        coordinator_epoch=i32(victim.coordinator_epoch),
                    ),
                )
            ),
        )
    code = result.markers[0].topics[0].partitions[0].error_code
    if code.value != 0:
        raise kafka_wire.WireError(f"{topic}-{partition}: {code.name.upper()}")
    return int(victim.producer_id)


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


@transactions.command("abort")
@bootstrap_option()
@timeout_option()
@click.option("--topic", required=True, help="The partition's topic.")
@click.option("--partition", type=click.IntRange(min=0), required=True)
@click.option(
    "--producer-id",
    type=click.IntRange(min=0),
    default=None,
    help="The producer whose transaction to abort (needed when several are open).",
)
def abort_command(
    bootstrap: str, timeout: float, topic: str, partition: int, producer_id: int | None
) -> None:
    """Abort a hanging transaction on one partition (its abort marker)."""
    from shoal.tools import kafka_wire

    try:
        victim = abort_hanging(bootstrap, timeout, topic, partition, producer_id)
    except kafka_wire.WireError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"aborted the transaction of producer {victim} on {topic}-{partition}")
