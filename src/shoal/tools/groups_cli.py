"""`shoal groups list|describe`: consumer groups and their lag, over the Kafka protocol.

Everything goes through confluent-kafka's AdminClient (ListGroups, DescribeGroups,
OffsetFetch, ListOffsets), so the same commands work against Shoal or any Kafka.
Lag is the partition's end offset minus the group's committed offset; a
partition assigned but never committed has no lag ("-"), as in Kafka's tool.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from shoal.tools.options import bootstrap_option, settings_option

F = TypeVar("F", bound=Callable[..., Any])

STATES = {
    "PREPARING_REBALANCING": "PreparingRebalance",
    "COMPLETING_REBALANCING": "CompletingRebalance",
    "STABLE": "Stable",
    "DEAD": "Dead",
    "EMPTY": "Empty",
}


def _state(value: Any) -> str:
    name = getattr(value, "name", str(value))
    return STATES.get(name, name.title())


def _common(f: F) -> F:
    options = [
        bootstrap_option(),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["table", "json"]),
            default="table",
            show_default=True,
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0.1),
            default=15.0,
            show_default=True,
            help="Seconds to wait for each admin request.",
        ),
        settings_option(),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _admin(bootstrap: str, extra: dict[str, str]) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, **extra})


def list_groups(admin: Any, timeout: float) -> list[dict[str, Any]]:
    """Every consumer group with its state, type and member count."""
    listing = admin.list_consumer_groups(request_timeout=timeout).result(timeout)
    if listing.errors and not listing.valid:
        raise click.ClickException(f"cannot list groups: {listing.errors[0]}")
    ids = sorted(g.group_id for g in listing.valid)
    members: dict[str, int] = {}
    if ids:
        for gid, fut in admin.describe_consumer_groups(ids, request_timeout=timeout).items():
            members[gid] = len(fut.result(timeout).members)
    return [
        {
            "group": g.group_id,
            "state": _state(g.state),
            "simple": bool(g.is_simple_consumer_group),
            "members": members.get(g.group_id, 0),
        }
        for g in sorted(listing.valid, key=lambda g: g.group_id)
    ]


def describe_group(admin: Any, group: str, timeout: float) -> dict[str, Any]:
    """Members, assignments, committed and end offsets, and lag per partition."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

    desc = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout)
    fetched = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
    )[group].result(timeout)
    committed = {
        (tp.topic, tp.partition): tp.offset
        for tp in fetched.topic_partitions or []
        if tp.error is None and tp.offset >= 0
    }
    owner: dict[tuple[str, int], Any] = {}
    members = []
    for m in desc.members:
        parts = sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions)
        for key in parts:
            owner[key] = m
        members.append(
            {
                "member_id": m.member_id,
                "instance_id": m.group_instance_id,
                "client_id": m.client_id,
                "host": m.host,
                "assignment": [{"topic": t, "partition": p} for t, p in parts],
            }
        )
    if _state(desc.state) == "Dead" and not members and not committed:
        raise click.ClickException(f"group {group!r} does not exist")
    keys = sorted(set(committed) | set(owner))
    ends: dict[tuple[str, int], int] = {}
    if keys:
        futures = admin.list_offsets(
            {TopicPartition(t, p): OffsetSpec.latest() for t, p in keys},  # type: ignore[no-untyped-call]
            request_timeout=timeout,
        )
        for tp, fut in futures.items():
            ends[(tp.topic, tp.partition)] = fut.result(timeout).offset
    partitions = []
    for key in keys:
        c, end = committed.get(key), ends.get(key)
        m = owner.get(key)
        partitions.append(
            {
                "topic": key[0],
                "partition": key[1],
                "committed": c,
                "end": end,
                "lag": end - c if c is not None and end is not None else None,
                "member_id": m.member_id if m is not None else None,
                "client_id": m.client_id if m is not None else None,
                "host": m.host if m is not None else None,
            }
        )
    coordinator = desc.coordinator
    return {
        "group": group,
        "state": _state(desc.state),
        "assignor": desc.partition_assignor,
        "coordinator": {"id": coordinator.id, "host": coordinator.host, "port": coordinator.port}
        if coordinator is not None
        else None,
        "members": members,
        "partitions": partitions,
        "total_lag": sum(p["lag"] for p in partitions if p["lag"] is not None),
    }


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


@click.group()
def groups() -> None:
    """Consumer groups: members, assignments, committed offsets and lag."""


@groups.command("list")
@_common
def list_command(bootstrap: str, fmt: str, timeout: float, extra: dict[str, str]) -> None:
    """List consumer groups with their state and member count."""
    from confluent_kafka import KafkaException

    try:
        rows = list_groups(_admin(bootstrap, extra), timeout)
    except KafkaException as exc:
        raise click.ClickException(f"{bootstrap}: {exc}") from None
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"consumer groups at {bootstrap}")
    for col in ("GROUP", "STATE", "MEMBERS", "TYPE"):
        table.add_column(col, justify="right" if col == "MEMBERS" else "left")
    for r in rows:
        table.add_row(
            r["group"], r["state"], str(r["members"]), "simple" if r["simple"] else "consumer"
        )
    Console().print(table)


@groups.command("describe")
@click.argument("group")
@_common
def describe_command(
    group: str, bootstrap: str, fmt: str, timeout: float, extra: dict[str, str]
) -> None:
    """Describe GROUP: members, assignments, committed offsets, end offsets, lag."""
    from confluent_kafka import KafkaException

    try:
        info = describe_group(_admin(bootstrap, extra), group, timeout)
    except KafkaException as exc:
        raise click.ClickException(f"{bootstrap}: {exc}") from None
    if fmt == "json":
        click.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    coord = info["coordinator"]
    console.print(
        f"[bold]{group}[/bold]  state {info['state']}  assignor {info['assignor'] or '-'}  "
        f"members {len(info['members'])}  total lag {info['total_lag']}"
        + (f"  coordinator {coord['id']}@{coord['host']}:{coord['port']}" if coord else "")
    )
    table = Table()
    for col in ("TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG"):
        table.add_column(col, justify="left" if col == "TOPIC" else "right")
    for col in ("CONSUMER-ID", "HOST", "CLIENT-ID"):
        table.add_column(col)
    for p in info["partitions"]:
        table.add_row(
            p["topic"],
            str(p["partition"]),
            _dash(p["committed"]),
            _dash(p["end"]),
            _dash(p["lag"]),
            _dash(p["member_id"]),
            _dash(p["host"]),
            _dash(p["client_id"]),
        )
    console.print(table)
    idle = [m for m in info["members"] if not m["assignment"]]
    for m in idle:
        console.print(f"member {m['member_id']} ({m['client_id']}@{m['host']}) has no partitions")
