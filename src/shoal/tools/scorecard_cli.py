"""`shoal scorecard`: readiness checks against any Kafka-compatible cluster.

Exit status: 0 when every mandatory check passes, 1 otherwise; skipped optional
features (transactions on a cluster without them) do not fail the run.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from shoal.tools import scorecard as sc
from shoal.tools.options import (
    bootstrap_option,
    console,
    format_option,
    parse_bootstrap,
    parse_client_settings,
)
from shoal.tools.scorecard_security import SecurityOptions

_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


def _only(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    known = sc.check_ids()
    for v in values:
        if v not in known:
            raise click.BadParameter(
                f"unknown check {v!r}; one of: {', '.join(known)}", ctx=ctx, param=param
            )
    return list(values)


def _address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """One HOST:PORT (the checks talk to that listener only)."""
    if value is None:
        return None
    if "," in value or ":" not in value:
        raise click.BadParameter(
            f"expected one HOST:PORT with a port in 1-65535, got {value!r}", ctx=ctx, param=param
        )
    return parse_bootstrap(ctx, param, value)


def _security(kw: dict[str, Any]) -> SecurityOptions:
    """The security checks' options; the password never on the command line."""
    password = os.environ.get("SHOAL_SCORECARD_PASSWORD")
    if kw["password_file"] is not None:
        password = kw["password_file"].readline().rstrip("\r\n")
    if kw["user"] and not password:
        raise click.UsageError(
            "--user needs a password: --password-file PATH or SHOAL_SCORECARD_PASSWORD"
        )
    return SecurityOptions(
        tls_bootstrap=kw["tls_bootstrap"],
        sasl_bootstrap=kw["sasl_bootstrap"],
        sasl_protocol=kw["sasl_protocol"],
        mechanism=kw["sasl_mechanism"],
        user=kw["user"],
        password=password,
        ca_file=kw["ca_file"],
        other_site_topic=kw["other_site_topic"],
    )


@click.command(name="scorecard")
@bootstrap_option()
@format_option()
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=15.0,
    show_default=True,
    help="Seconds each check may take.",
)
@click.option(
    "--check",
    "only",
    multiple=True,
    callback=_only,
    metavar="ID",
    help="Run only this check (repeatable).",
)
@click.option(
    "-X",
    "extra",
    multiple=True,
    metavar="KEY=VALUE",
    callback=parse_client_settings,
    help="librdkafka setting for every client (repeatable).",
)
@click.option(
    "--tls-bootstrap",
    metavar="HOST:PORT",
    callback=_address,
    help="A TLS listener: plain text must be refused there (security.plaintext_on_tls).",
)
@click.option(
    "--sasl-bootstrap",
    metavar="HOST:PORT",
    callback=lambda c, p, v: None if v is None else parse_bootstrap(c, p, v),
    help="A SASL listener: anonymous and wrong-password clients must be refused.",
)
@click.option(
    "--sasl-protocol",
    type=click.Choice(["SASL_SSL", "SASL_PLAINTEXT"]),
    default="SASL_SSL",
    show_default=True,
)
@click.option(
    "--sasl-mechanism",
    type=click.Choice(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
    default="SCRAM-SHA-512",
    show_default=True,
)
@click.option("--user", metavar="NAME", help="A site's user on the SASL listener.")
@click.option(
    "--password-file",
    type=click.File("r"),
    metavar="PATH",
    help="The user's password, read from PATH (- for stdin); or SHOAL_SCORECARD_PASSWORD.",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False),
    help="CA bundle for the TLS listeners' certificates.",
)
@click.option(
    "--other-site-topic",
    metavar="TOPIC",
    help="A topic the user must not write (security.cross_site).",
)
def scorecard(**kw: Any) -> None:
    """Short compatibility and reconnect checks, pass/fail with the evidence.

    Security checks run with their options (--tls-bootstrap; --sasl-bootstrap,
    --user and a password; --other-site-topic) and are skipped without them."""
    from rich.console import Console
    from rich.table import Table

    err = Console(stderr=True)
    live = kw["fmt"] == "table" and sys.stderr.isatty()

    def progress(r: sc.CheckResult) -> None:
        if live:
            err.print(f"  {r.id}: [{_STYLE[r.status]}]{r.status}[/]")

    card = sc.run_scorecard(
        kw["bootstrap"],
        extra=kw["extra"],
        timeout_s=kw["timeout"],
        only=kw["only"] or None,
        on_result=progress,
        security=_security(kw),
    )
    if kw["fmt"] == "json":
        click.echo(card.to_json())
    else:
        table = Table(title=f"shoal scorecard: {card.bootstrap} ({card.seconds:.1f} s)")
        table.add_column("check")
        table.add_column("result")
        table.add_column("s", justify="right")
        table.add_column("evidence", overflow="fold")
        for r in card.results:
            label = r.id if r.mandatory else f"{r.id} (optional)"
            table.add_row(
                label, f"[{_STYLE[r.status]}]{r.status}[/]", f"{r.seconds:.1f}", r.evidence
            )
        out = console()  # whole lines in a pipe
        if out.is_terminal:
            out = Console(width=max(120, out.width))
        out.print(table)
        verdict = "all mandatory checks passed" if card.passed else "mandatory checks failed"
        click.echo(verdict)
    sys.exit(0 if card.passed else 1)
