"""`shoal users add|list|delete`: SCRAM users (which PLAIN also checks).

Two ways in: `--metadata URL` writes the metadata store directly (the way to
create the first user, before any broker can authenticate anyone), or
`--bootstrap` with `-X` client settings goes through the Kafka protocol
(AlterUserScramCredentials / DescribeUserScramCredentials), against Shoal or
any Kafka. Passwords are read from a file, standard input or a prompt, never
from the command line, and never printed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from shoal.tools.options import (
    KafkaClients,
    bootstrap_option,
    client_errors,
    format_option,
    kafka_error_text,
    settings_option,
    timeout_option,
)

F = TypeVar("F", bound=Callable[..., Any])
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


def _target(f: F) -> F:
    f = client_errors(f)
    f = settings_option()(f)
    f = timeout_option()(f)
    f = bootstrap_option()(f)
    return click.option(
        "--metadata",
        metavar="URL",
        help="Metadata store URL (sqlite:///..., postgresql://...): change it directly.",
    )(f)


@click.group()
def users() -> None:
    """SCRAM users: SASL PLAIN and SCRAM-SHA-256/512 log in with these."""


def _password(password_file: str | None) -> str:
    if password_file == "-":
        text = sys.stdin.readline()
    elif password_file:
        try:
            with open(password_file, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {password_file!r}: {exc.strerror}", param_hint="--password-file"
            ) from None
    else:
        text = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    password = text.rstrip("\r\n")
    if not password:
        raise click.BadParameter("the password is empty", param_hint="--password-file")
    return password


@users.command("add")
@click.argument("name")
@click.option(
    "--mechanism",
    "mechanisms",
    multiple=True,
    type=click.Choice(MECHANISMS),
    help="Mechanism to store a credential for (repeatable) [both].",
)
@click.option("--iterations", type=click.IntRange(4096, 16384), default=8192, show_default=True)
@click.option("--password-file", metavar="PATH", help="Read the password from PATH (- for stdin).")
@_target
def add(
    name: str,
    mechanisms: tuple[str, ...],
    iterations: int,
    password_file: str | None,
    metadata: str | None,
    bootstrap: str,
    timeout: float,
    extra: dict[str, str],
) -> None:
    """Create NAME or change its password."""
    if not name:
        raise click.BadParameter("empty user name", param_hint="NAME")
    password = _password(password_file)
    mechs = mechanisms or MECHANISMS
    if metadata:
        from shoal.security.scram import make_credential

        creds = [(name, make_credential(m, password, iterations)) for m in mechs]
        _run(metadata, lambda store: store.alter(creds, []))
    else:
        from confluent_kafka.admin import (  # type: ignore[attr-defined]
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialUpsertion,
        )

        changes = [
            UserScramCredentialUpsertion(
                name,
                ScramCredentialInfo(getattr(ScramMechanism, m.replace("-", "_")), iterations),
                password.encode("utf-8"),
            )
            for m in mechs
        ]
        _alter(KafkaClients(bootstrap, extra, timeout), changes)
    click.echo(f"user {name}: {', '.join(mechs)} credentials stored")


@users.command("delete")
@click.argument("name")
@click.option(
    "--mechanism",
    "mechanisms",
    multiple=True,
    type=click.Choice(MECHANISMS),
    help="Only this mechanism's credential (repeatable) [all the user has].",
)
@_target
def delete(
    name: str,
    mechanisms: tuple[str, ...],
    metadata: str | None,
    bootstrap: str,
    timeout: float,
    extra: dict[str, str],
) -> None:
    """Delete NAME's credentials."""
    k = KafkaClients(bootstrap, extra, timeout)
    have = {m for m, _ in _describe(metadata, k, [name]).get(name, [])}
    wanted = [m for m in (mechanisms or MECHANISMS) if m in have]
    if not wanted:
        raise click.ClickException(f"user {name!r} has no SCRAM credentials to delete")
    if metadata:
        _run(metadata, lambda store: store.alter([], [(name, m) for m in wanted]))
    else:
        from confluent_kafka.admin import (  # type: ignore[attr-defined]
            ScramMechanism,
            UserScramCredentialDeletion,
        )

        changes = [
            UserScramCredentialDeletion(name, getattr(ScramMechanism, m.replace("-", "_")))
            for m in wanted
        ]
        _alter(k, changes)
    click.echo(f"user {name}: {', '.join(wanted)} credentials deleted")


@users.command("list")
@format_option()
@_target
def list_users(
    fmt: str, metadata: str | None, bootstrap: str, timeout: float, extra: dict[str, str]
) -> None:
    """Users with SCRAM credentials: mechanism and iterations (never secrets)."""
    found = _describe(metadata, KafkaClients(bootstrap, extra, timeout), None)
    rows = [
        {"user": user, "mechanism": m, "iterations": i}
        for user, infos in sorted(found.items())
        for m, i in infos
    ]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no users")
        return
    width = max(len("USER"), *(len(str(r["user"])) for r in rows))
    click.echo(f"{'USER':<{width}}  {'MECHANISM':<13}  ITERATIONS")
    for r in rows:
        click.echo(f"{r['user']:<{width}}  {r['mechanism']:<13}  {r['iterations']}")


def _run(metadata: str, action: Callable[[Any], Any]) -> Any:
    from shoal.meta.security import SecurityStore
    from shoal.meta.store import MetaError, MetaStore

    async def go() -> Any:
        meta = await MetaStore.open(metadata)
        try:
            return await action(SecurityStore(meta))
        finally:
            await meta.close()

    try:
        return asyncio.run(go())
    except MetaError as exc:
        raise click.ClickException(str(exc)) from None


def _alter(k: KafkaClients, changes: list[Any]) -> None:
    from confluent_kafka import KafkaException

    futures = k.admin.alter_user_scram_credentials(changes, request_timeout=k.timeout)
    for user, fut in futures.items():
        try:
            k.wait(fut, "AlterUserScramCredentials")
        except KafkaException as exc:
            raise click.ClickException(f"user {user}: {kafka_error_text(exc)}") from None


def _describe(
    metadata: str | None, k: KafkaClients, names: list[str] | None
) -> dict[str, list[tuple[str, int]]]:
    from confluent_kafka import KafkaException

    if metadata:
        found: dict[str, list[tuple[str, int]]] = _run(
            metadata, lambda store: store.describe(names)
        )
        return found
    what = "DescribeUserScramCredentials"
    try:
        if names is None:
            result = k.wait(
                k.admin.describe_user_scram_credentials(request_timeout=k.timeout), what
            )
        else:
            futures = k.admin.describe_user_scram_credentials(names, request_timeout=k.timeout)
            result = {}
            for user, fut in futures.items():
                try:
                    result[user] = k.wait(fut, what)
                except KafkaException as exc:
                    if "RESOURCE_NOT_FOUND" in str(exc) or "nonexistent" in str(exc).lower():
                        continue
                    raise
    except KafkaException as exc:
        raise click.ClickException(f"cannot describe users: {kafka_error_text(exc)}") from None
    return {
        user: [
            (info.mechanism.name.replace("_", "-"), int(info.iterations))
            for info in desc.scram_credential_infos
        ]
        for user, desc in result.items()
    }
