"""`shoal acls list|add|remove`: ACLs over the Kafka protocol, as kafka-acls.

Everything goes through confluent-kafka's AdminClient (DescribeAcls,
CreateAcls, DeleteAcls), so the same commands manage Shoal or any Kafka with
an authorizer. Names and codes are Kafka's; validation of a new ACL is the
broker's (its INVALID_REQUEST message is shown as is), the command only
checks what it must to build the request.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from shoal.security.acls import (
    CLUSTER_NAME,
    AclError,
    AclOperation,
    PatternType,
    Permission,
    ResourceType,
    check_principal,
)
from shoal.tools.options import (
    KafkaClients,
    client_errors,
    cluster_options,
    console,
    format_option,
)

F = TypeVar("F", bound=Callable[..., Any])

# What confluent-kafka's AdminClient can send (CREATE_TOKENS and DESCRIBE_TOKENS,
# for USER resources, are not among them).
OPERATIONS = [
    op.name for op in AclOperation if AclOperation.ALL <= op <= AclOperation.IDEMPOTENT_WRITE
]


def _ca() -> Any:
    """confluent_kafka.admin, loaded on use (its ACL types are untyped)."""
    import importlib

    return importlib.import_module("confluent_kafka.admin")


def _resource_options(f: F) -> F:
    options = [
        click.option(
            "--topic", metavar="NAME", help="A topic (or prefix, with --pattern prefixed)."
        ),
        click.option("--group", metavar="NAME", help="A consumer group (or prefix)."),
        click.option("--transactional-id", metavar="NAME", help="A transactional id (or prefix)."),
        click.option("--cluster", is_flag=True, help="The cluster (kafka-cluster)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _principal(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_principal(value)
    except AclError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _resource(
    topic: str | None, group: str | None, transactional_id: str | None, cluster: bool
) -> tuple[ResourceType, str | None]:
    given = [
        (ResourceType.TOPIC, topic),
        (ResourceType.GROUP, group),
        (ResourceType.TRANSACTIONAL_ID, transactional_id),
        (ResourceType.CLUSTER, CLUSTER_NAME if cluster else None),
    ]
    chosen = [(t, n) for t, n in given if n is not None]
    if len(chosen) > 1:
        raise click.UsageError(
            "name one resource: --topic, --group, --transactional-id or --cluster"
        )
    return chosen[0] if chosen else (ResourceType.ANY, None)


def _binding_row(b: Any) -> dict[str, Any]:
    rtype = ResourceType(int(b.restype.value))
    return {
        "principal": b.principal,
        "host": b.host,
        "operation": AclOperation(int(b.operation.value)).name,
        "permission": Permission(int(b.permission_type.value)).name,
        "resource_type": rtype.name,
        "pattern": PatternType(int(b.resource_pattern_type.value)).name,
        "name": b.name,
    }


def _print(rows: list[dict[str, Any]], fmt: str, title: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=title)
    columns = ("principal", "host", "operation", "permission", "resource_type", "pattern", "name")
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r[c]) for c in columns))
    console().print(table)


def _filter(
    rtype: ResourceType,
    name: str | None,
    pattern: str,
    principal: str | None,
    host: str | None,
    operation: str,
    permission: str,
    binding: bool = False,
) -> Any:
    """An AclBindingFilter; with binding=True, the AclBinding of those fields."""
    ca = _ca()
    return (ca.AclBinding if binding else ca.AclBindingFilter)(
        ca.ResourceType(int(rtype)),
        name,
        ca.ResourcePatternType(int(PatternType[pattern.upper()])),
        principal,
        host,
        ca.AclOperation(int(AclOperation[operation.upper()])),
        ca.AclPermissionType(int(Permission[permission.upper()])),
    )


def _check_authorizer(k: KafkaClients) -> None:
    """librdkafka answers an empty list where the broker said SECURITY_DISABLED
    to DescribeAcls; a DeleteAcls that can match nothing tells the two apart."""
    from confluent_kafka import KafkaException

    nothing = _filter(ResourceType.TOPIC, "", "literal", "User:-", None, "any", "any")
    try:
        for fut in k.admin.delete_acls([nothing], request_timeout=k.timeout).values():
            k.wait(fut, "DeleteAcls")
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if getattr(err, "name", lambda: "")() == "SECURITY_DISABLED":
            raise
    # Any other refusal (e.g. no ALTER on the cluster) says nothing about the list.


@click.group()
def acls() -> None:
    """ACLs (Kafka's model) over the Kafka protocol."""


@acls.command("list")
@cluster_options
@format_option()
@_resource_options
@click.option(
    "--pattern",
    type=click.Choice(["any", "match", "literal", "prefixed"], case_sensitive=False),
    default="any",
    show_default=True,
    help="match: every ACL that applies to the named resource (literal, prefixed, *).",
)
@click.option("--principal", callback=_principal, metavar="TYPE:NAME", help="e.g. User:plant-7")
@client_errors
def list_acls(
    bootstrap: str,
    timeout: float,
    extra: dict[str, str],
    fmt: str,
    topic: str | None,
    group: str | None,
    transactional_id: str | None,
    cluster: bool,
    pattern: str,
    principal: str | None,
) -> None:
    """ACLs matching the filter (all of them by default)."""
    k = KafkaClients(bootstrap, extra, timeout)
    rtype, name = _resource(topic, group, transactional_id, cluster)
    flt = _filter(rtype, name, pattern, principal, None, "any", "any")
    found = k.wait(k.admin.describe_acls(flt, request_timeout=timeout), "DescribeAcls")
    if not found:
        _check_authorizer(k)
    rows = sorted((_binding_row(b) for b in found), key=lambda r: tuple(r.values()))
    _print(rows, fmt, f"ACLs ({len(rows)})")


@acls.command("add")
@cluster_options
@_resource_options
@click.option(
    "--principal", required=True, callback=_principal, metavar="TYPE:NAME", help="e.g. User:plant-7"
)
@click.option(
    "--operation",
    "operations",
    multiple=True,
    required=True,
    type=click.Choice(OPERATIONS, case_sensitive=False),
    help="Repeatable.",
)
@click.option(
    "--pattern",
    type=click.Choice(["literal", "prefixed"], case_sensitive=False),
    default="literal",
    show_default=True,
)
@click.option("--host", default="*", show_default=True, help="* or an IP address.")
@click.option("--deny", is_flag=True, help="A DENY ACL (deny wins over allow).")
@client_errors
def add_acls(
    bootstrap: str,
    timeout: float,
    extra: dict[str, str],
    topic: str | None,
    group: str | None,
    transactional_id: str | None,
    cluster: bool,
    principal: str,
    operations: tuple[str, ...],
    pattern: str,
    host: str,
    deny: bool,
) -> None:
    """Add one ACL per --operation for a principal on one resource."""
    rtype, name = _resource(topic, group, transactional_id, cluster)
    if name is None:
        raise click.UsageError("name a resource: --topic, --group, --transactional-id or --cluster")
    k = KafkaClients(bootstrap, extra, timeout)
    permission = "deny" if deny else "allow"
    bindings = [
        _filter(rtype, name, pattern, principal, host, op, permission, binding=True)
        for op in dict.fromkeys(o.upper() for o in operations)
    ]
    for binding, fut in k.admin.create_acls(bindings, request_timeout=timeout).items():
        k.wait(fut, "CreateAcls")
        row = _binding_row(binding)
        click.echo(
            f"added: {row['permission']} {row['principal']} from {row['host']} "
            f"{row['operation']} {row['resource_type']}:{row['pattern']}:{row['name']}"
        )


@acls.command("remove")
@cluster_options
@format_option()
@_resource_options
@click.option(
    "--pattern",
    type=click.Choice(["any", "match", "literal", "prefixed"], case_sensitive=False),
    default="literal",
    show_default=True,
)
@click.option("--principal", callback=_principal, metavar="TYPE:NAME")
@click.option("--host", default=None, help="Only ACLs for this host (default: any).")
@click.option(
    "--operation",
    type=click.Choice(["ANY", *OPERATIONS], case_sensitive=False),
    default="ANY",
    show_default=True,
)
@click.option(
    "--permission",
    type=click.Choice(["any", "allow", "deny"], case_sensitive=False),
    default="any",
    show_default=True,
)
@client_errors
def remove_acls(
    bootstrap: str,
    timeout: float,
    extra: dict[str, str],
    fmt: str,
    topic: str | None,
    group: str | None,
    transactional_id: str | None,
    cluster: bool,
    pattern: str,
    principal: str | None,
    host: str | None,
    operation: str,
    permission: str,
) -> None:
    """Remove the ACLs matching the filter; prints what was removed."""
    rtype, name = _resource(topic, group, transactional_id, cluster)
    if name is None and principal is None:
        raise click.UsageError(
            "name a resource or a --principal (refusing to remove every ACL at once)"
        )
    if name is None:
        pattern = "any"
    k = KafkaClients(bootstrap, extra, timeout)
    flt = _filter(rtype, name, pattern, principal, host, operation, permission)
    futures = k.admin.delete_acls([flt], request_timeout=timeout)
    removed = [b for fut in futures.values() for b in k.wait(fut, "DeleteAcls")]
    rows = sorted((_binding_row(b) for b in removed), key=lambda r: tuple(r.values()))
    _print(rows, fmt, f"removed ({len(rows)})")
