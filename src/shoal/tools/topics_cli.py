"""`shoal topics list|describe|create|alter|delete` over the Kafka protocol.

confluent-kafka's AdminClient (Metadata, ListOffsets, DescribeConfigs,
CreateTopics, CreatePartitions, IncrementalAlterConfigs, DeleteTopics) does the
work, so the commands run against Shoal or any Kafka. Partition sizes come from
DescribeLogDirs (tools.kafka_wire) where the cluster offers it; otherwise they
are shown as "n/a", never estimated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from shoal.tools.options import (
    KafkaClients,
    client_errors,
    cluster_options,
    console,
    format_option,
    known_topic,
    parse_settings,
)

F = TypeVar("F", bound=Callable[..., Any])


def _config_option(f: F) -> F:
    return click.option(
        "--config",
        "configs",
        multiple=True,
        metavar="KEY=VALUE",
        callback=parse_settings,
        help="Topic configuration key (repeatable), e.g. retention.ms=86400000.",
    )(f)


def list_topics(k: KafkaClients) -> list[dict[str, Any]]:
    """Every topic with its partition count and replication factor."""
    metadata = k.metadata()
    rows = []
    for name in sorted(metadata.topics):
        meta = metadata.topics[name]
        if meta.error is not None:
            continue
        parts = meta.partitions.values()
        rows.append(
            {
                "topic": name,
                "partitions": len(meta.partitions),
                "replication_factor": max((len(p.replicas) for p in parts), default=0),
            }
        )
    return rows


def _sizes(k: KafkaClients, metadata: Any) -> dict[tuple[str, int], int] | None:
    from shoal.tools import kafka_wire

    if k.extra.get("security.protocol", "plaintext").lower() != "plaintext":
        return None  # the raw client speaks plaintext only
    brokers = [f"{b.host}:{b.port}" for b in metadata.brokers.values()]
    try:
        return kafka_wire.log_dir_sizes(brokers, k.timeout)
    except kafka_wire.WireError:
        return None


def _source(value: Any) -> str:
    from confluent_kafka.admin import ConfigSource  # type: ignore[attr-defined]

    try:
        return str(ConfigSource(value).name)
    except ValueError:
        return str(value)


def describe_topic(k: KafkaClients, topic: str) -> dict[str, Any]:
    """Partitions with owners, log start/end offsets and sizes; configs with sources."""
    from confluent_kafka.admin import ConfigResource, OffsetSpec  # type: ignore[attr-defined]

    from shoal.tools.groups_cli import list_offsets

    metadata = k.metadata()
    meta = known_topic(k, metadata, topic)
    keys = [(topic, p) for p in sorted(meta.partitions)]
    starts = list_offsets(k, keys, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
    ends = list_offsets(k, keys, OffsetSpec.latest())  # type: ignore[no-untyped-call]
    sizes = _sizes(k, metadata)
    partitions = []
    for key in keys:
        p = meta.partitions[key[1]]
        partitions.append(
            {
                "partition": key[1],
                "leader": p.leader,
                "replicas": list(p.replicas),
                "isr": list(p.isrs),
                "log_start": starts[key],
                "log_end": ends[key],
                "records": ends[key] - starts[key],
                "size_bytes": sizes.get(key) if sizes is not None else None,
            }
        )
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    futures = k.admin.describe_configs([resource], request_timeout=k.timeout)
    entries = k.wait(futures[resource], "DescribeConfigs")
    configs = [
        {
            "name": e.name,
            "value": None if e.is_sensitive else e.value,
            "source": _source(e.source),
            "default": bool(e.is_default),
            "read_only": bool(e.is_read_only),
            "sensitive": bool(e.is_sensitive),
        }
        for e in sorted(entries.values(), key=lambda e: e.name)
    ]
    return {
        "topic": topic,
        "partitions": partitions,
        "size_bytes": sum(p["size_bytes"] for p in partitions) if sizes is not None else None,
        "configs": configs,
    }


def _size(value: int | None) -> str:
    return "n/a" if value is None else str(value)


@click.group()
def topics() -> None:
    """Topics: partitions, owners, offsets, sizes and configs."""


@topics.command("list")
@cluster_options
@format_option()
@client_errors
def list_command(bootstrap: str, timeout: float, extra: dict[str, str], fmt: str) -> None:
    """List topics with their partition count and replication factor."""
    rows = list_topics(KafkaClients(bootstrap, extra, timeout))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"topics at {bootstrap}")
    table.add_column("TOPIC")
    table.add_column("PARTITIONS", justify="right")
    table.add_column("REPLICATION", justify="right")
    for r in rows:
        table.add_row(r["topic"], str(r["partitions"]), str(r["replication_factor"]))
    console().print(table)


@topics.command("describe")
@click.argument("names", metavar="TOPIC...", nargs=-1, required=True)
@click.option("--all-configs", is_flag=True, help="Show default configs too (table only).")
@cluster_options
@format_option()
@client_errors
def describe_command(
    names: tuple[str, ...],
    all_configs: bool,
    bootstrap: str,
    timeout: float,
    extra: dict[str, str],
    fmt: str,
) -> None:
    """Describe topics: partition owners, log start and end offsets, sizes, configs
    and where each config comes from. Sizes are n/a when the cluster does not
    offer DescribeLogDirs."""
    k = KafkaClients(bootstrap, extra, timeout)
    infos = [describe_topic(k, name) for name in names]
    if fmt == "json":
        click.echo(json.dumps(infos, indent=2))
        return
    from rich.table import Table

    out = console()
    for info in infos:
        out.print(
            f"[bold]{info['topic']}[/bold]  partitions {len(info['partitions'])}  "
            f"records {sum(p['records'] for p in info['partitions'])}  "
            f"size {_size(info['size_bytes'])}"
        )
        table = Table()
        for col in ("PARTITION", "LEADER", "REPLICAS", "ISR", "LOG-START", "LOG-END", "SIZE"):
            table.add_column(col, justify="right")
        for p in info["partitions"]:
            table.add_row(
                str(p["partition"]),
                str(p["leader"]),
                ",".join(map(str, p["replicas"])),
                ",".join(map(str, p["isr"])),
                str(p["log_start"]),
                str(p["log_end"]),
                _size(p["size_bytes"]),
            )
        out.print(table)
        shown = [c for c in info["configs"] if all_configs or not c["default"]]
        if not shown:
            out.print("configs: all defaults (--all-configs to list them)")
            continue
        configs = Table()
        for col in ("CONFIG", "VALUE", "SOURCE"):
            configs.add_column(col)
        for c in shown:
            value = "(sensitive)" if c["sensitive"] else c["value"]
            configs.add_row(c["name"], "-" if value is None else str(value), c["source"])
        out.print(configs)


@topics.command("create")
@click.argument("topic")
@click.option("--partitions", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--replication-factor", type=click.IntRange(min=1), default=1, show_default=True)
@_config_option
@click.option("--if-not-exists", is_flag=True, help="Succeed if the topic exists already.")
@cluster_options
@client_errors
def create_command(
    topic: str,
    partitions: int,
    replication_factor: int,
    configs: dict[str, str],
    if_not_exists: bool,
    bootstrap: str,
    timeout: float,
    extra: dict[str, str],
) -> None:
    """Create TOPIC."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    k = KafkaClients(bootstrap, extra, timeout)
    new = NewTopic(
        topic, num_partitions=partitions, replication_factor=replication_factor, config=configs
    )
    futures = k.admin.create_topics([new], request_timeout=timeout)
    try:
        k.wait(futures[topic], "CreateTopics")
    except KafkaException as exc:
        err = exc.args[0]
        if err.name() == "TOPIC_ALREADY_EXISTS" and if_not_exists:
            click.echo(f"topic {topic} exists already")
            return
        raise click.ClickException(f"cannot create topic {topic!r}: {err.str()}") from None
    click.echo(f"created topic {topic} ({partitions} partitions)")


@topics.command("alter")
@click.argument("topic")
@click.option(
    "--partitions", type=click.IntRange(min=1), help="New partition count (can only grow)."
)
@_config_option
@click.option(
    "--delete-config",
    "deleted",
    multiple=True,
    metavar="KEY",
    help="Back to the default for KEY (repeatable).",
)
@cluster_options
@client_errors
def alter_command(
    topic: str,
    partitions: int | None,
    configs: dict[str, str],
    deleted: tuple[str, ...],
    bootstrap: str,
    timeout: float,
    extra: dict[str, str],
) -> None:
    """Add partitions to TOPIC or change its configs."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
    )

    if partitions is None and not configs and not deleted:
        raise click.UsageError("nothing to change: give --partitions, --config or --delete-config")
    k = KafkaClients(bootstrap, extra, timeout)
    meta = known_topic(k, k.metadata(), topic)
    if partitions is not None and partitions != len(meta.partitions):
        if partitions < len(meta.partitions):
            raise click.ClickException(
                f"topic {topic!r} has {len(meta.partitions)} partitions; "
                f"cannot shrink to {partitions}"
            )
        futures = k.admin.create_partitions(
            [NewPartitions(topic, partitions)], request_timeout=timeout
        )
        try:
            k.wait(futures[topic], "CreatePartitions")
        except KafkaException as exc:
            raise click.ClickException(
                f"cannot add partitions to {topic!r}: {exc.args[0].str()}"
            ) from None
        click.echo(f"topic {topic} now has {partitions} partitions")
    if configs or deleted:
        entries = [
            ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
            for key, value in configs.items()
        ] + [
            ConfigEntry(key, None, incremental_operation=AlterConfigOpType.DELETE)
            for key in deleted
        ]
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            topic,
            incremental_configs=entries,
        )
        futures = k.admin.incremental_alter_configs([resource], request_timeout=timeout)
        try:
            k.wait(futures[resource], "IncrementalAlterConfigs")
        except KafkaException as exc:
            raise click.ClickException(
                f"cannot change configs of {topic!r}: {exc.args[0].str()}"
            ) from None
        changed = [*(f"{key}={v}" for key, v in configs.items()), *(f"-{key}" for key in deleted)]
        click.echo(f"topic {topic} configs changed: {' '.join(changed)}")


@topics.command("delete")
@click.argument("names", metavar="TOPIC...", nargs=-1, required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@cluster_options
@client_errors
def delete_command(
    names: tuple[str, ...], yes: bool, bootstrap: str, timeout: float, extra: dict[str, str]
) -> None:
    """Delete topics and all their records. Asks first unless --yes."""
    from confluent_kafka import KafkaException

    k = KafkaClients(bootstrap, extra, timeout)
    metadata = k.metadata()
    for name in names:
        known_topic(k, metadata, name)
    if not yes:
        click.confirm(
            f"delete {len(names)} topic(s) and all their records: {', '.join(names)}?",
            abort=True,
            err=True,
        )
    futures = k.admin.delete_topics(list(names), operation_timeout=timeout)
    failed = 0
    for name in names:
        try:
            k.wait(futures[name], "DeleteTopics")
        except KafkaException as exc:
            failed += 1
            click.echo(f"shoal: cannot delete topic {name!r}: {exc.args[0].str()}", err=True)
        else:
            click.echo(f"deleted topic {name}")
    if failed:
        raise SystemExit(1)
