"""`shoal quotas list|set|remove`: client quotas over the Kafka protocol, as
`kafka-configs --entity-type users|clients`.

Requests are Kafka's DescribeClientQuotas and AlterClientQuotas (v0), sent
through tools.kafka_wire because confluent-kafka has no client quota API; so
the same commands manage Shoal or any Kafka 2.6+. kafka_wire speaks plaintext
only: point --bootstrap at a PLAINTEXT listener (e.g. a loopback one kept for
local tools). Validation is the broker's: its INVALID_REQUEST message is shown
as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from shoal.security.quotas import (
    CLIENT_ID,
    CONSUMER_BYTE_RATE,
    CONTROLLER_MUTATION_RATE,
    DEFAULT_NAME,
    PRODUCER_BYTE_RATE,
    QUOTA_KEYS,
    REQUEST_PERCENTAGE,
    USER,
)
from shoal.tools.options import bootstrap_option, console, format_option, timeout_option

F = TypeVar("F", bound=Callable[..., Any])

_DESCRIBE = (48, 0)
_ALTER = (49, 0)


def _entity_options(f: F) -> F:
    options = [
        click.option("--user", metavar="NAME", help="A user (the principal's name: plant-7)."),
        click.option("--default-user", is_flag=True, help="The <default> user."),
        click.option("--client-id", metavar="ID", help="A client id."),
        click.option("--default-client-id", is_flag=True, help="The <default> client id."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _common(f: F) -> F:
    for option in reversed([bootstrap_option(), timeout_option()]):
        f = option(f)
    return f


def _entity(
    user: str | None, default_user: bool, client_id: str | None, default_client_id: bool
) -> list[tuple[str, str | None]]:
    """(entity type, name) per component given; name None is the default."""
    if user is not None and default_user:
        raise click.UsageError("give --user or --default-user, not both")
    if client_id is not None and default_client_id:
        raise click.UsageError("give --client-id or --default-client-id, not both")
    out: list[tuple[str, str | None]] = []
    if user is not None or default_user:
        out.append((USER, user))
    if client_id is not None or default_client_id:
        out.append((CLIENT_ID, client_id))
    return out


def _request(bootstrap: str, timeout: float, api: tuple[int, int], body: Any) -> Any:
    from shoal.tools import kafka_wire

    first = bootstrap.split(",")[0]
    try:
        with kafka_wire.Connection(first, timeout) as conn:
            if not conn.supports(api):
                raise click.ClickException(
                    f"{first} does not support client quotas (API {api[0]} v{api[1]})"
                )
            return conn.request(api, body)
    except kafka_wire.WireError as exc:
        raise click.ClickException(str(exc)) from None


def _label(entity: list[tuple[str, str | None]]) -> str:
    return ",".join(f"{t}={DEFAULT_NAME if n is None else n}" for t, n in entity)


@click.group()
def quotas() -> None:
    """Client quotas (Kafka's model) over the Kafka protocol."""


@quotas.command("list")
@_common
@format_option()
@_entity_options
def list_quotas(
    bootstrap: str,
    timeout: float,
    fmt: str,
    user: str | None,
    default_user: bool,
    client_id: str | None,
    default_client_id: bool,
) -> None:
    """Quotas of the entities matching the filter (all of them by default)."""
    from kio.schema.describe_client_quotas.v0.request import (
        ComponentData,
        DescribeClientQuotasRequest,
    )
    from kio.static.primitive import i8

    components = tuple(
        ComponentData(entity_type=t, match_type=i8(0 if n is not None else 1), match=n)
        for t, n in _entity(user, default_user, client_id, default_client_id)
    )
    resp = _request(
        bootstrap,
        timeout,
        _DESCRIBE,
        DescribeClientQuotasRequest(components=components, strict=False),
    )
    if resp.error_code.value != 0:
        raise click.ClickException(
            f"{bootstrap}: {resp.error_code.name.upper()}: {resp.error_message or ''}".rstrip(": ")
        )
    rows = [
        {
            "entity": _label([(e.entity_type, e.entity_name) for e in entry.entity]),
            **{v.key: v.value for v in entry.values},
        }
        for entry in resp.entries or ()
    ]
    rows.sort(key=lambda r: str(r["entity"]))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"Client quotas ({len(rows)})")
    columns = ("entity", *QUOTA_KEYS)
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*(_show(r.get(c)) for c in columns))
    console().print(table)


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


def _alter(
    bootstrap: str,
    timeout: float,
    entity: list[tuple[str, str | None]],
    ops: list[tuple[str, float, bool]],
) -> None:
    from kio.schema.alter_client_quotas.v0.request import (
        AlterClientQuotasRequest,
        EntityData,
        EntryData,
        OpData,
    )
    from kio.static.primitive import f64

    if not entity:
        raise click.UsageError(
            "name an entity: --user/--default-user and/or --client-id/--default-client-id"
        )
    body = AlterClientQuotasRequest(
        entries=(
            EntryData(
                entity=tuple(EntityData(entity_type=t, entity_name=n) for t, n in entity),
                ops=tuple(OpData(key=k, value=f64(v), remove=r) for k, v, r in ops),
            ),
        ),
        validate_only=False,
    )
    resp = _request(bootstrap, timeout, _ALTER, body)
    label = _label(entity)
    for entry in resp.entries:
        if entry.error_code.value != 0:
            raise click.ClickException(
                f"{label}: {entry.error_code.name.upper()}: {entry.error_message or ''}".rstrip(
                    ": "
                )
            )


_RATE = click.FloatRange(min=0, min_open=True)


@quotas.command("set")
@_common
@_entity_options
@click.option("--producer-byte-rate", type=_RATE, metavar="BYTES/S")
@click.option("--consumer-byte-rate", type=_RATE, metavar="BYTES/S")
@click.option(
    "--request-percentage", type=_RATE, metavar="PERCENT", help="Of one thread, per window."
)
@click.option("--controller-mutation-rate", type=_RATE, metavar="N/S", help="Stored only.")
def set_quotas(
    bootstrap: str,
    timeout: float,
    user: str | None,
    default_user: bool,
    client_id: str | None,
    default_client_id: bool,
    producer_byte_rate: float | None,
    consumer_byte_rate: float | None,
    request_percentage: float | None,
    controller_mutation_rate: float | None,
) -> None:
    """Set quotas of one entity (user, client id, or both; named or default)."""
    given = {
        PRODUCER_BYTE_RATE: producer_byte_rate,
        CONSUMER_BYTE_RATE: consumer_byte_rate,
        REQUEST_PERCENTAGE: request_percentage,
        CONTROLLER_MUTATION_RATE: controller_mutation_rate,
    }
    ops = [(k, v, False) for k, v in given.items() if v is not None]
    if not ops:
        raise click.UsageError(
            "give at least one of --producer-byte-rate, --consumer-byte-rate, "
            "--request-percentage, --controller-mutation-rate"
        )
    entity = _entity(user, default_user, client_id, default_client_id)
    _alter(bootstrap, timeout, entity, ops)
    label = _label(entity)
    click.echo(f"set: {label} " + " ".join(f"{k}={_show(v)}" for k, v, _r in ops))


@quotas.command("remove")
@_common
@_entity_options
@click.option(
    "--key",
    "keys",
    multiple=True,
    type=click.Choice(list(QUOTA_KEYS)),
    help="Repeatable; default: every quota of the entity.",
)
def remove_quotas(
    bootstrap: str,
    timeout: float,
    user: str | None,
    default_user: bool,
    client_id: str | None,
    default_client_id: bool,
    keys: tuple[str, ...],
) -> None:
    """Remove quotas of one entity."""
    entity = _entity(user, default_user, client_id, default_client_id)
    chosen = list(dict.fromkeys(keys)) or list(QUOTA_KEYS)
    _alter(bootstrap, timeout, entity, [(k, 0.0, True) for k in chosen])
    click.echo(f"removed: {_label(entity)} {' '.join(chosen)}")
