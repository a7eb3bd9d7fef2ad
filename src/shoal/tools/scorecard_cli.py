"""`shoal scorecard`: readiness checks against any Kafka-compatible cluster.

Exit status: 0 when every mandatory check passes, 1 otherwise; skipped optional
features (transactions on a cluster without them) do not fail the run.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from shoal.tools import scorecard as sc
from shoal.tools.options import bootstrap_option, console, parse_client_settings

_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}


def _only(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[str]:
    known = sc.check_ids()
    for v in values:
        if v not in known:
            raise click.BadParameter(
                f"unknown check {v!r}; one of: {', '.join(known)}", ctx=ctx, param=param
            )
    return list(values)


@click.command(name="scorecard")
@bootstrap_option()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
)
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
def scorecard(**kw: Any) -> None:
    """Short compatibility and reconnect checks, pass/fail with the evidence."""
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
