"""`shoal bench replay`: the reconnect-burst replay bench on the command line.

Kept apart from bench_cli.py so the two benches can change independently; the
bench group adds this command with `bench.add_command(replay)`.
Exit status: 0 when every record arrived exactly once, 1 otherwise.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import click

from shoal.tools import replay as r
from shoal.tools.bench import BenchError
from shoal.tools.options import bootstrap_option, client_errors, parse_client_settings, parse_rate


def _png(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.suffix.lower() != ".png":
        raise click.BadParameter("must end in .png", ctx=ctx, param=param)
    return value


_POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command(name="replay")
@bootstrap_option()
@click.option(
    "--sites", type=click.IntRange(min=1), default=100, show_default=True, help="Edge sites."
)
@click.option(
    "--offline",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds every site is offline (buffering).",
)
@click.option("--rate", type=_POSITIVE, default=10.0, show_default=True, help="Records/s per site.")
@click.option(
    "--record-size",
    type=click.IntRange(min=r.MIN_RECORD_SIZE),
    default=256,
    show_default=True,
    help="Value size in bytes (starts with site, sequence and timestamps).",
)
@click.option("--partitions", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--topic", default=None, help="Topic (created if missing). Default: fresh name.")
@click.option(
    "--before", type=_POSITIVE, default=5.0, show_default=True, help="Steady seconds first."
)
@click.option(
    "--after",
    type=_POSITIVE,
    default=15.0,
    show_default=True,
    help="Steady seconds after the last site reconnects.",
)
@click.option(
    "--reconnect",
    type=click.Choice(r.RECONNECT_MODES),
    default="all",
    show_default=True,
    help="All sites at once, or spread uniformly over --jitter seconds.",
)
@click.option(
    "--jitter", type=click.FloatRange(min=0), default=5.0, show_default=True, help="Seconds."
)
@click.option(
    "--replay-rate",
    default="unlimited",
    show_default=True,
    callback=parse_rate,
    help="Backlog records/s per site, or 'unlimited'.",
)
@click.option(
    "--catchup-threshold-ms",
    type=_POSITIVE,
    default=None,
    help="Lag counted as caught up [2x pre-outage p99, at least 10 ms].",
)
@click.option(
    "--drain-timeout",
    type=_POSITIVE,
    default=30.0,
    show_default=True,
    help="Max seconds to finish the replay and receive everything.",
)
@click.option(
    "-X",
    "extra",
    multiple=True,
    metavar="KEY=VALUE",
    callback=parse_client_settings,
    help="librdkafka setting for producer and consumer (repeatable).",
)
@click.option(
    "--consumer-X",
    "consumer_extra",
    multiple=True,
    metavar="KEY=VALUE",
    callback=parse_client_settings,
    help="Setting for the consumer only (repeatable).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--chart", "chart_path", type=click.Path(dir_okay=False, path_type=Path), callback=_png
)
@click.option("--quiet", is_flag=True, help="No start line.")
@client_errors
def replay(**kw: Any) -> None:
    """Sites go offline together, then reconnect and replay their backlog.

    Reports catch-up time, peak consumer lag, live produce latency before, during
    and after the burst, errors by kind, and exactly-once accounting.
    """
    try:
        spec = r.ReplaySpec(
            bootstrap=kw["bootstrap"],
            topic=kw["topic"] or f"replay-{uuid.uuid4().hex[:10]}",
            sites=kw["sites"],
            rate=kw["rate"],
            offline_s=kw["offline"],
            before_s=kw["before"],
            after_s=kw["after"],
            record_size=kw["record_size"],
            partitions=kw["partitions"],
            reconnect=kw["reconnect"],
            jitter_s=kw["jitter"],
            replay_rate=kw["replay_rate"],
            catchup_threshold_ms=kw["catchup_threshold_ms"],
            drain_timeout_s=kw["drain_timeout"],
            extra=kw["extra"],
            consumer_extra=kw["consumer_extra"],
            seed=kw["seed"],
        )
    except ValueError as e:  # options are range-checked already; this is a backstop
        raise click.UsageError(str(e)) from e
    try:
        result = r.run_replay(spec, quiet=kw["quiet"])
    except BenchError as e:
        raise click.ClickException(str(e)) from e
    rows = result.summary()
    width = max(len(name) for name, _ in rows)
    click.echo("shoal bench replay")
    for name, value in rows:
        click.echo(f"  {name:<{width}}  {value}")
    if kw["json_path"] is not None:
        kw["json_path"].write_text(result.to_json() + "\n")
    if kw["chart_path"] is not None:
        r.write_replay_chart(result, kw["chart_path"])
    if not result.consistent():
        raise click.ClickException("not every record arrived exactly once (see above)")
