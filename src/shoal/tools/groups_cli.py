"""`shoal groups list|describe|reset-offsets|delete|delete-offsets`: consumer
groups over the Kafka protocol.

Everything goes through confluent-kafka's AdminClient (ListGroups, DescribeGroups,
OffsetFetch, ListOffsets, OffsetCommit, DeleteGroups), so the same commands work
against Shoal or any Kafka; OffsetDelete, which confluent-kafka lacks, goes
through tools.kafka_wire. Lag is the partition's end offset minus the group's
committed offset; a partition assigned but never committed has no lag ("-"), as
in Kafka's tool.
"""

from __future__ import annotations

import json
from typing import Any

import click

from shoal.tools.options import (
    KafkaClients,
    client_errors,
    cluster_options,
    console,
    format_option,
    known_partitions,
    parse_datetime,
    parse_topic_partitions,
)

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


def list_groups(k: KafkaClients) -> list[dict[str, Any]]:
    """Every consumer group with its state, type and member count."""
    admin, timeout = k.admin, k.timeout
    listing = k.wait(admin.list_consumer_groups(request_timeout=timeout), "ListGroups")
    if listing.errors and not listing.valid:
        raise click.ClickException(f"cannot list groups: {listing.errors[0]}")
    ids = sorted(g.group_id for g in listing.valid)
    members: dict[str, int] = {}
    if ids:
        for gid, fut in admin.describe_consumer_groups(ids, request_timeout=timeout).items():
            members[gid] = len(k.wait(fut, "DescribeGroups").members)
    return [
        {
            "group": g.group_id,
            "state": _state(g.state),
            "simple": bool(g.is_simple_consumer_group),
            "members": members.get(g.group_id, 0),
        }
        for g in sorted(listing.valid, key=lambda g: g.group_id)
    ]


def _describe(k: KafkaClients, group: str) -> Any:
    futures = k.admin.describe_consumer_groups([group], request_timeout=k.timeout)
    return k.wait(futures[group], "DescribeGroups")


def committed_offsets(k: KafkaClients, group: str) -> dict[tuple[str, int], int]:
    """GROUP's committed offset per (topic, partition)."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    futures = k.admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=k.timeout
    )
    fetched = k.wait(futures[group], "OffsetFetch")
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in fetched.topic_partitions or []
        if tp.error is None and tp.offset >= 0
    }


def list_offsets(
    k: KafkaClients, keys: list[tuple[str, int]], spec: Any
) -> dict[tuple[str, int], int]:
    """ListOffsets for every partition in `keys` with one OffsetSpec."""
    from confluent_kafka import TopicPartition

    if not keys:
        return {}
    futures = k.admin.list_offsets(
        {TopicPartition(t, p): spec for t, p in keys}, request_timeout=k.timeout
    )
    return {
        (tp.topic, tp.partition): k.wait(fut, "ListOffsets").offset for tp, fut in futures.items()
    }


def describe_group(k: KafkaClients, group: str) -> dict[str, Any]:
    """Members, assignments, committed and end offsets, and lag per partition."""
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

    desc = _describe(k, group)
    committed = committed_offsets(k, group)
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
    ends = list_offsets(k, keys, OffsetSpec.latest())  # type: ignore[no-untyped-call]
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
@cluster_options
@format_option()
@client_errors
def list_command(bootstrap: str, fmt: str, timeout: float, extra: dict[str, str]) -> None:
    """List consumer groups with their state and member count."""
    rows = list_groups(KafkaClients(bootstrap, extra, timeout))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"consumer groups at {bootstrap}")
    for col in ("GROUP", "STATE", "MEMBERS", "TYPE"):
        table.add_column(col, justify="right" if col == "MEMBERS" else "left")
    for r in rows:
        table.add_row(
            r["group"], r["state"], str(r["members"]), "simple" if r["simple"] else "consumer"
        )
    console().print(table)


@groups.command("describe")
@click.argument("group")
@cluster_options
@format_option()
@client_errors
def describe_command(
    group: str, bootstrap: str, fmt: str, timeout: float, extra: dict[str, str]
) -> None:
    """Describe GROUP: members, assignments, committed offsets, end offsets, lag."""
    info = describe_group(KafkaClients(bootstrap, extra, timeout), group)
    if fmt == "json":
        click.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    out = console()
    coord = info["coordinator"]
    out.print(
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
    out.print(table)
    idle = [m for m in info["members"] if not m["assignment"]]
    for m in idle:
        out.print(f"member {m['member_id']} ({m['client_id']}@{m['host']}) has no partitions")


def topic_partitions(k: KafkaClients, wanted: dict[str, list[int] | None]) -> list[tuple[str, int]]:
    """(topic, partition) pairs named by --topic T[:P,...], checked against the
    cluster's metadata: an unknown topic or partition is an error, not a no-op."""
    metadata = k.metadata()
    return sorted(
        (topic, p)
        for topic, parts in wanted.items()
        for p in known_partitions(k, metadata, topic, parts)
    )


def reset_plan(
    k: KafkaClients,
    group: str,
    keys: list[tuple[str, int]],
    committed: dict[tuple[str, int], int],
    target: tuple[str, int | None],
) -> list[dict[str, Any]]:
    """New offset per partition. Like Kafka's tool, an offset outside the log is
    clamped to [log start, log end], and a timestamp after the last record
    resets to the log end."""
    from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

    kind, value = target
    starts = list_offsets(k, keys, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
    ends = list_offsets(k, keys, OffsetSpec.latest())  # type: ignore[no-untyped-call]
    at_time: dict[tuple[str, int], int] = {}
    if kind == "datetime" and value is not None:
        at_time = list_offsets(k, keys, OffsetSpec.for_timestamp(value))
    rows = []
    for key in keys:
        start, end, current = starts[key], ends[key], committed.get(key)
        if kind == "earliest":
            new = start
        elif kind == "latest":
            new = end
        elif kind == "datetime":
            found = at_time[key]
            new = end if found < 0 else found
        elif kind == "offset":
            assert value is not None
            new = value
        else:  # shift
            assert value is not None
            if current is None:
                raise click.ClickException(
                    f"group {group!r} has no committed offset for {key[0]}-{key[1]} to shift"
                )
            new = current + value
        rows.append(
            {
                "topic": key[0],
                "partition": key[1],
                "current": current,
                "new": min(max(new, start), end),
                "log_start": start,
                "log_end": end,
            }
        )
    return rows


def _require_empty(k: KafkaClients, group: str, action: str) -> Any:
    desc = _describe(k, group)
    if desc.members:
        raise click.ClickException(
            f"cannot {action} group {group!r}: it has {len(desc.members)} active member(s) "
            f"(state {_state(desc.state)}); stop its consumers first"
        )
    return desc


@groups.command("reset-offsets")
@click.argument("group")
@click.option(
    "--topic",
    "topics",
    multiple=True,
    metavar="TOPIC[:P,...]",
    callback=parse_topic_partitions,
    help="Topic, or some of its partitions (repeatable).",
)
@click.option("--all-topics", is_flag=True, help="Every partition the group has committed.")
@click.option("--to-earliest", is_flag=True, help="To the log start offset.")
@click.option("--to-latest", is_flag=True, help="To the log end offset.")
@click.option(
    "--to-datetime",
    callback=parse_datetime,
    metavar="ISO",
    help="To the first record at or after this time (no zone = UTC).",
)
@click.option("--to-offset", type=int, metavar="N", help="To offset N (clamped to the log).")
@click.option("--shift-by", type=int, metavar="N", help="Committed offset plus N (may be < 0).")
@click.option("--execute", is_flag=True, help="Apply the plan (default: print it only).")
@cluster_options
@format_option()
@client_errors
def reset_offsets_command(
    group: str,
    topics: dict[str, list[int] | None],
    all_topics: bool,
    to_earliest: bool,
    to_latest: bool,
    to_datetime: int | None,
    to_offset: int | None,
    shift_by: int | None,
    execute: bool,
    bootstrap: str,
    fmt: str,
    timeout: float,
    extra: dict[str, str],
) -> None:
    """Move GROUP's committed offsets. Prints the plan; --execute applies it.

    Refused while the group has active members, as in Kafka: their next commit
    would overwrite the reset."""
    targets: list[tuple[str, int | None]] = [
        t
        for t, chosen in (
            (("earliest", None), to_earliest),
            (("latest", None), to_latest),
            (("datetime", to_datetime), to_datetime is not None),
            (("offset", to_offset), to_offset is not None),
            (("shift", shift_by), shift_by is not None),
        )
        if chosen
    ]
    if len(targets) != 1:
        raise click.UsageError(
            "give exactly one of --to-earliest, --to-latest, --to-datetime, --to-offset, --shift-by"
        )
    if bool(topics) == all_topics:
        raise click.UsageError("give --topic TOPIC[:P,...] or --all-topics (one of them)")
    k = KafkaClients(bootstrap, extra, timeout)
    _require_empty(k, group, "reset offsets of")
    committed = committed_offsets(k, group)
    if all_topics:
        keys = sorted(committed)
        if not keys:
            raise click.ClickException(f"group {group!r} has no committed offsets")
    else:
        keys = topic_partitions(k, topics)
    rows = reset_plan(k, group, keys, committed, targets[0])
    if execute:
        _apply(k, group, rows)
    if fmt == "json":
        click.echo(json.dumps({"group": group, "executed": execute, "partitions": rows}, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{'new' if execute else 'planned'} offsets of group {group}")
    for col in ("TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET", "LOG-START", "LOG-END"):
        table.add_column(col, justify="left" if col == "TOPIC" else "right")
    for r in rows:
        table.add_row(
            r["topic"],
            str(r["partition"]),
            _dash(r["current"]),
            str(r["new"]),
            str(r["log_start"]),
            str(r["log_end"]),
        )
    out = console()
    out.print(table)
    if not execute:
        out.print("dry run: nothing changed; add --execute to apply")


def _apply(k: KafkaClients, group: str, rows: list[dict[str, Any]]) -> None:
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(r["topic"], r["partition"], r["new"]) for r in rows]
    )
    futures = k.admin.alter_consumer_group_offsets([request], request_timeout=k.timeout)
    result = k.wait(futures[group], "OffsetCommit")
    failed = [tp for tp in result.topic_partitions or [] if tp.error is not None]
    if failed:
        tp = failed[0]
        raise click.ClickException(
            f"{len(failed)} partition(s) not reset, e.g. {tp.topic}-{tp.partition}: "
            f"{tp.error.str()}"
        )


@groups.command("delete")
@click.argument("group_ids", metavar="GROUP...", nargs=-1, required=True)
@cluster_options
@client_errors
def delete_command(
    group_ids: tuple[str, ...], bootstrap: str, timeout: float, extra: dict[str, str]
) -> None:
    """Delete consumer groups and their committed offsets (only empty groups)."""
    from confluent_kafka import KafkaException

    k = KafkaClients(bootstrap, extra, timeout)
    futures = k.admin.delete_consumer_groups(list(group_ids), request_timeout=timeout)
    failed = 0
    for gid in group_ids:
        try:
            k.wait(futures[gid], "DeleteGroups")
        except KafkaException as exc:
            failed += 1
            err = exc.args[0]
            reason = {
                "GROUP_ID_NOT_FOUND": "no such group",
                "NON_EMPTY_GROUP": "it has active members; stop its consumers first",
            }.get(err.name(), err.str())
            click.echo(f"shoal: cannot delete group {gid!r}: {reason}", err=True)
        else:
            click.echo(f"deleted group {gid}")
    if failed:
        raise SystemExit(1)


@groups.command("delete-offsets")
@click.argument("group")
@click.option(
    "--topic",
    "topics",
    multiple=True,
    required=True,
    metavar="TOPIC[:P,...]",
    callback=parse_topic_partitions,
    help="Topic, or some of its partitions (repeatable).",
)
@cluster_options
@client_errors
def delete_offsets_command(
    group: str,
    topics: dict[str, list[int] | None],
    bootstrap: str,
    timeout: float,
    extra: dict[str, str],
) -> None:
    """Delete GROUP's committed offsets for some topics (OffsetDelete).

    Kafka refuses it for a topic the group's live members subscribe to."""
    from shoal.tools import kafka_wire

    if extra.get("security.protocol", "plaintext").lower() != "plaintext":
        raise click.ClickException("delete-offsets speaks plaintext only (OffsetDelete)")
    k = KafkaClients(bootstrap, extra, timeout)
    keys = topic_partitions(k, topics)
    wanted: dict[str, list[int]] = {}
    for topic, p in keys:
        wanted.setdefault(topic, []).append(p)
    first = bootstrap.split(",")[0]
    try:
        error, per_partition = kafka_wire.offset_delete(first, group, wanted, timeout)
    except kafka_wire.WireError as exc:
        raise click.ClickException(str(exc)) from None
    if error != "NONE":
        reason = {
            "GROUP_ID_NOT_FOUND": "no such group",
            "NON_EMPTY_GROUP": "it has active members",
        }.get(error, error)
        raise click.ClickException(f"cannot delete offsets of group {group!r}: {reason}")
    bad = {key: e for key, e in per_partition.items() if e != "NONE"}
    for (topic, p), e in sorted(bad.items()):
        reason = "a live member subscribes to it" if e == "GROUP_SUBSCRIBED_TO_TOPIC" else e
        click.echo(f"shoal: {topic}-{p}: not deleted: {reason}", err=True)
    done = len(per_partition) - len(bad)
    click.echo(f"deleted {done} committed offset(s) of group {group}")
    if bad:
        raise SystemExit(1)
