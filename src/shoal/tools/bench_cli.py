"""`shoal bench produce|consume|e2e`: the load bench on the command line.

Works against any Kafka-compatible bootstrap address. The summary goes to stdout,
the live progress line to stderr (only on a terminal), results to --json/--chart.
Exit status: 0 on success, 1 if the bench could not run or any record failed.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from shoal.tools import bench as b
from shoal.tools.fleet import FleetSpec, proc_cpu_s, run_fleet
from shoal.tools.options import (
    bootstrap_option,
    client_errors,
    parse_client_settings,
    parse_rate,
    settings_option,
)
from shoal.tools.replay_cli import replay

F = TypeVar("F", bound=Callable[..., Any])


def _common(f: F) -> F:
    """Options every subcommand takes."""
    options = [
        bootstrap_option(),
        settings_option(),
        click.option(
            "--json",
            "json_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write the full result as JSON to FILE.",
        ),
        click.option(
            "--chart",
            "chart_path",
            type=click.Path(dir_okay=False, path_type=Path),
            callback=_check_png,
            help="Write a PNG chart (needs matplotlib).",
        ),
        click.option("--quiet", is_flag=True, help="No live progress line."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _producer_options(default_rate: str, default_duration: float) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        options = [
            click.option(
                "--topic",
                default=None,
                help="Topic (created if missing). Default: a fresh bench-* name.",
            ),
            click.option(
                "--record-size",
                type=click.IntRange(min=0),
                default=1024,
                show_default=True,
                help="Value size in bytes.",
            ),
            click.option(
                "--keys",
                type=click.IntRange(min=1),
                default=1000,
                show_default=True,
                help="Number of distinct keys (with --key-dist uniform|zipf).",
            ),
            click.option(
                "--key-dist",
                type=click.Choice(b.KEY_DISTS),
                default="none",
                show_default=True,
                help="Key distribution; none sends null keys.",
            ),
            click.option(
                "--zipf-s",
                type=click.FloatRange(min=0, min_open=True),
                default=1.0,
                show_default=True,
                help="Zipf exponent for --key-dist zipf.",
            ),
            click.option(
                "--partitions",
                type=click.IntRange(min=1),
                default=6,
                show_default=True,
                help="Partitions when the topic is created.",
            ),
            click.option(
                "--replication-factor",
                type=click.IntRange(min=1),
                default=1,
                show_default=True,
                help="Replication factor when the topic is created.",
            ),
            click.option(
                "--rate",
                default=default_rate,
                show_default=True,
                callback=parse_rate,
                help="Target records/s, or 'unlimited'.",
            ),
            click.option(
                "--duration",
                type=click.FloatRange(min=0, min_open=True),
                default=default_duration,
                show_default=True,
                help="Seconds to produce.",
            ),
            click.option("--acks", type=click.Choice(b.ACKS), default="all", show_default=True),
            click.option(
                "--compression",
                type=click.Choice(b.COMPRESSIONS),
                default="none",
                show_default=True,
            ),
            click.option(
                "--linger-ms",
                type=click.FloatRange(min=0),
                default=5.0,
                show_default=True,
                help="linger.ms of the producer.",
            ),
        ]
        for option in reversed(options):
            f = option(f)
        return f

    return wrap


def _check_png(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and value.suffix.lower() != ".png":
        raise click.BadParameter("must end in .png", ctx=ctx, param=param)
    return value


def _produce_spec(topic: str, kw: dict[str, Any]) -> b.ProduceSpec:
    try:
        return b.ProduceSpec(
            bootstrap=kw["bootstrap"],
            topic=topic,
            record_size=kw["record_size"],
            key_dist=kw["key_dist"],
            keys=kw["keys"],
            zipf_s=kw["zipf_s"],
            partitions=kw["partitions"],
            replication_factor=kw["replication_factor"],
            rate=kw["rate"],
            duration_s=kw["duration"],
            acks=kw["acks"],
            compression=kw["compression"],
            linger_ms=kw["linger_ms"],
            extra=kw["extra"],
        )
    except ValueError as e:  # options are range-checked already; this is a backstop
        raise click.UsageError(str(e)) from e


def _fresh_topic() -> str:
    return f"bench-{uuid.uuid4().hex[:10]}"


def _finish(result: b.BenchResult, json_path: Path | None, chart_path: Path | None) -> None:
    # Plain aligned lines: they stay one line per figure in logs and pipes too.
    rows = result.summary()
    width = max(len(name) for name, _ in rows)
    click.echo(f"shoal bench {result.kind}")
    for name, value in rows:
        click.echo(f"  {name:<{width}}  {value}")
    if json_path is not None:
        json_path.write_text(result.to_json() + "\n")
    if chart_path is not None:
        b.write_chart(result, chart_path)
    errors = result.error_total()
    if errors:
        raise click.ClickException(f"{errors:,} records failed")


def _guard(f: F) -> F:
    """Turn a bench that cannot run into a one-line error instead of a traceback:
    its own errors, and the Kafka client's (a bad -X setting, a refused request)."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except b.BenchError as e:
            raise click.ClickException(str(e)) from e

    return client_errors(wrapper)  # type: ignore[return-value]


@click.group(name="bench")
def bench() -> None:
    """Load bench against any Kafka-compatible cluster (MB = 10^6 bytes)."""


@bench.command()
@_common
@_producer_options(default_rate="unlimited", default_duration=10.0)
@_guard
def produce(**kw: Any) -> None:
    """Produce and measure throughput and send->ack latency percentiles."""
    spec = _produce_spec(kw["topic"] or _fresh_topic(), kw)
    result = b.run_produce(spec, quiet=kw["quiet"])
    _finish(result, kw["json_path"], kw["chart_path"])


@bench.command()
@_common
@click.option("--topic", required=True, help="Topic to read from the beginning.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Stop after this many seconds.",
)
@click.option(
    "--records", type=click.IntRange(min=1), default=None, help="Stop after this many records."
)
@click.option(
    "--follow",
    is_flag=True,
    help="Keep reading new records until --duration instead of stopping at the end.",
)
@_guard
def consume(**kw: Any) -> None:
    """Read a topic from the beginning (no consumer group) and measure throughput."""
    try:
        spec = b.ConsumeSpec(
            bootstrap=kw["bootstrap"],
            topic=kw["topic"],
            duration_s=kw["duration"],
            max_records=kw["records"],
            follow=kw["follow"],
            extra=kw["extra"],
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    result = b.run_consume(spec, quiet=kw["quiet"])
    _finish(result, kw["json_path"], kw["chart_path"])


@bench.command()
@_common
@_producer_options(default_rate="1000", default_duration=10.0)
@click.option(
    "--consumer-X",
    "consumer_extra",
    multiple=True,
    metavar="KEY=VALUE",
    callback=parse_client_settings,
    help="Setting for the consumer only (repeatable).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the consumer to catch up after producing.",
)
@_guard
def e2e(**kw: Any) -> None:
    """Produce at a fixed rate while tailing the topic; end-to-end latency percentiles."""
    if kw["rate"] is None:
        raise click.BadParameter("e2e needs a fixed rate", param_hint="'--rate'")
    if kw["record_size"] < b.E2E_MIN_RECORD_SIZE:
        raise click.BadParameter(
            f"e2e needs at least {b.E2E_MIN_RECORD_SIZE} bytes (run nonce + timestamp)",
            param_hint="'--record-size'",
        )
    spec = _produce_spec(kw["topic"] or _fresh_topic(), kw)
    consumer_extra = {**kw["extra"], **kw["consumer_extra"]}
    result = b.run_e2e(
        spec,
        consumer_extra=consumer_extra,
        drain_timeout_s=kw["drain_timeout"],
        quiet=kw["quiet"],
    )
    _finish(result, kw["json_path"], kw["chart_path"])


@bench.command()
@bootstrap_option()
@settings_option()
@click.option("--sites", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--topics-per-site", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--partitions",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Partitions per topic (records keyed by device).",
)
@click.option("--devices-per-site", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--rate-per-device",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Records/s each device sends.",
)
@click.option(
    "--record-size",
    type=click.IntRange(min=16),
    default=200,
    show_default=True,
    help="Value size in bytes.",
)
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True
)
@click.option(
    "--producers",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Producer clients (gateways); sites are spread over them.",
)
@click.option("--acks", type=click.Choice(b.ACKS), default="all", show_default=True)
@click.option("--linger-ms", type=click.FloatRange(min=0), default=5.0, show_default=True)
@click.option(
    "--prefix",
    default="",
    help="Topic name prefix (default: fleet-<random>, new topics each run).",
)
@click.option(
    "--broker-pid",
    type=click.IntRange(min=1),
    default=None,
    help="A broker on this machine: report its CPU and memory from /proc.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the full result as JSON to FILE.",
)
@_guard
def fleet(**kw: Any) -> None:
    """An IoT fleet: sites x topics x partitions keyed by device, each device
    quiet; throughput, produce and end-to-end latency, broker CPU and memory."""
    try:
        spec = FleetSpec(
            bootstrap=kw["bootstrap"],
            sites=kw["sites"],
            topics_per_site=kw["topics_per_site"],
            partitions=kw["partitions"],
            devices_per_site=kw["devices_per_site"],
            rate_per_device=kw["rate_per_device"],
            record_size=kw["record_size"],
            duration_s=kw["duration"],
            producers=kw["producers"],
            acks=kw["acks"],
            linger_ms=kw["linger_ms"],
            prefix=kw["prefix"],
            broker_pid=kw["broker_pid"],
            extra=kw["extra"],
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    if spec.broker_pid is not None:
        proc_cpu_s(spec.broker_pid)  # a wrong pid fails now, not after the run
    result = run_fleet(spec)
    rows = result.summary()
    width = max(len(name) for name, _ in rows)
    click.echo("shoal bench fleet")
    for name, value in rows:
        click.echo(f"  {name:<{width}}  {value}")
    if kw["json_path"] is not None:
        kw["json_path"].write_text(result.to_json() + "\n")
    if result.errors or result.unanswered:
        raise click.ClickException(
            f"{result.errors:,} records failed, {result.unanswered:,} unanswered"
        )


bench.add_command(replay)


def main() -> None:
    """Entry point for `python -m shoal.tools.bench_cli`."""
    bench()


if __name__ == "__main__":
    main()
