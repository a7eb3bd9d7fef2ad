"""`shoal edge`: run a gateway, show its status, check its local data.

shoal edge --config edge.toml            run the gateway
shoal edge status --config edge.toml     what it is doing (admin endpoint, else status file)
shoal edge check --config edge.toml      verify the local log offline (--repair to fix)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import click

from shoal.cli import run_async
from shoal.config import ConfigError
from shoal.edge.config import EdgeConfig, load_edge_config
from shoal.tools.options import console, format_option


def _load(config_file: str | None) -> EdgeConfig:
    if config_file is None:
        raise click.UsageError("--config FILE is required")
    try:
        return load_edge_config(config_file)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


@click.group("edge", invoke_without_command=True)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Gateway configuration (TOML); see examples/edge.toml.",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.pass_context
def edge(ctx: click.Context, config_file: str | None, log_level: str) -> None:
    """Edge gateway: MQTT/HTTP/Kafka ingest, durable local buffer, uplinks."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config_file
    if ctx.invoked_subcommand is not None:
        return
    cfg = _load(config_file)
    from shoal.logs import configure as configure_logging

    configure_logging(log_level)
    from shoal.edge.gateway import run_gateway
    from shoal.edge.state import SiteMismatch
    from shoal.meta.store import MetaError
    from shoal.storage.errors import StorageError

    try:
        run_async(run_gateway(cfg))
    except (SiteMismatch, StorageError, MetaError, ConfigError) as exc:
        click.echo(f"shoal edge: cannot start: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        click.echo(f"shoal edge: cannot start: {exc.strerror or exc}", err=True)
        sys.exit(1)


def _fetch_status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=3) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


@edge.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE")
@click.option("--url", help="Admin endpoint, e.g. http://127.0.0.1:9644 [from the config].")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the raw status document (= --format json)."
)
@format_option()
@click.pass_context
def status(
    ctx: click.Context, config_file: str | None, url: str | None, as_json: bool, fmt: str
) -> None:
    """Lanes, backlogs, drops, disk and uplink state of a gateway.

    Asks the running gateway's admin endpoint; if it does not answer, shows
    the status file it last wrote (and says how old it is). Exit 0 when the
    gateway answered and every uplink is up, 2 when it answered and an
    uplink is down (backing off, refused, or its last attempt failed), 3
    when only the file was read, 1 when neither.
    """
    config_file = config_file or ctx.obj.get("config")
    doc: dict[str, Any] | None = None
    source = ""
    cfg = _load(config_file) if config_file or not url else None
    if url is None and cfg is not None and cfg.admin.listen:
        url = f"http://{cfg.admin.listen}"
    if url is not None:
        try:
            doc = _fetch_status(url.rstrip("/") + "/status")
            source = url
        except (urllib.error.URLError, OSError, ValueError):
            doc = None
    code = 0
    if doc is None and cfg is not None:
        try:
            doc = json.loads(cfg.status_path.read_text())
            age = time.time() - float(doc.get("time", 0))
            source = f"{cfg.status_path} (gateway not answering; written {age:.0f}s ago)"
            code = 3
        except (OSError, ValueError):
            doc = None
    if doc is None:
        click.echo("shoal edge status: no answer from the gateway and no status file", err=True)
        sys.exit(1)
    if code == 0 and any(up.get("down") for up in doc.get("uplinks", [])):
        code = 2
    if as_json or fmt == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_status(doc, source)
    sys.exit(code)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _print_status(doc: dict[str, Any], source: str) -> None:
    from rich.table import Table

    con = console()  # whole tables in a pipe, too
    con.print(f"[bold]site {doc['site']}[/bold]  (from {source}; up {doc.get('uptime_s', 0)}s)")
    local = doc.get("local", {})
    con.print(
        f"local log: {local.get('records_in', 0)} records in, "
        f"{_fmt_bytes(local.get('disk_used_bytes', 0))} on disk"
    )
    mq = doc.get("mqtt")
    if mq:
        con.print(
            f"mqtt: {'connected' if mq['connected'] else 'DISCONNECTED'}, "
            f"{mq['received']} received, {mq['acked']} acked, {mq['pending_acks']} pending"
            + (f", last error: {mq['last_error']}" if mq.get("last_error") else "")
        )
    integ = doc.get("integrity")
    if integ and integ.get("findings"):
        con.print(
            f"[yellow]integrity at start: {len(integ['findings'])} findings, "
            f"{integ['records_lost']} records lost[/yellow]"
        )
        for f in integ["findings"]:
            con.print(f"  {f['kind']} {f['object']}: {f['detail']} -> {f['action']}")
    ut = Table(title="uplinks")
    for col in ("uplink", "state", "last ok", "rate", "sent", "in flight", "error"):
        ut.add_column(col)
    for up in doc.get("uplinks", []):
        age = up.get("last_success_age_s")
        ut.add_row(
            up["name"],
            ("[red]DOWN[/red] " if up.get("down") else "")
            + up["state"]
            + (f" (retry in {up['retry_in_s']}s)" if up.get("retry_in_s") is not None else ""),
            "never" if age is None else f"{age:.1f}s ago",
            f"{_fmt_bytes(up['rate_bytes_per_s'])}/s, {up['rate_records_per_s']:.0f} rec/s",
            str(up["sent_records"]),
            str(up["inflight_records"]),
            (f"{up['last_error_kind']}: {up['last_error']}" if up.get("last_error_kind") else ""),
        )
    con.print(ut)
    lt = Table(title="lanes")
    for col in ("lane", "prio", "disk used / budget", "backlog", "oldest unsent", "drops"):
        lt.add_column(col)
    for lane in doc.get("lanes", []):
        backlog = ", ".join(
            f"{u}: {r['backlog_records']} ({_fmt_bytes(r['backlog_bytes'])})"
            for u, r in lane["uplinks"].items()
        )
        oldest = ", ".join(f"{r['oldest_unsent_age_s']:.1f}s" for r in lane["uplinks"].values())
        drops = ", ".join(f"{k}: {v['records']}" for k, v in lane["drops"].items()) or "-"
        budget = _fmt_bytes(lane["disk_budget_bytes"]) if lane["disk_budget_bytes"] else "-"
        lt.add_row(
            lane["name"] + (" [red]BLOCKED[/red]" if lane["blocked"] else ""),
            str(lane["priority"]),
            f"{_fmt_bytes(lane['disk_used_bytes'])} / {budget} ({lane['when_full']})",
            backlog,
            oldest,
            drops,
        )
    con.print(lt)


@edge.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE")
@click.option("--repair", is_flag=True, help="Fix what is found (as the gateway does at start).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (= --format json).")
@format_option()
@click.pass_context
def check(
    ctx: click.Context, config_file: str | None, repair: bool, as_json: bool, fmt: str
) -> None:
    """Verify the local log offline: every object, every batch's CRC.

    Exit 0 when clean, 1 when damage was found (repaired with --repair),
    2 when the check could not run (the gateway is running, say).
    """
    cfg = _load(config_file or ctx.obj.get("config"))
    from shoal.edge.integrity import check_log, data_dir_lock
    from shoal.storage.errors import StorageError

    # Read-only where there is nothing: a wrong data_dir must not be created
    # and reported as a clean log.
    if not cfg.data_dir.is_dir():
        click.echo(
            f"shoal edge check: data directory {cfg.data_dir} does not exist "
            f"(data_dir in {cfg.source}): nothing to check",
            err=True,
        )
        sys.exit(2)
    if not (cfg.log_dir / "meta.db").is_file():
        click.echo(
            f"shoal edge check: {cfg.data_dir} holds no local log ({cfg.log_dir / 'meta.db'} "
            "is missing): not a gateway's data directory, or the gateway never started",
            err=True,
        )
        sys.exit(2)
    try:
        with data_dir_lock(cfg.data_dir):
            report = asyncio.run(
                check_log(cfg.log_dir, cfg.data_dir / "quarantine", repair=repair, deep=True)
            )
    except StorageError as exc:
        click.echo(f"shoal edge check: {exc}", err=True)
        sys.exit(2)
    if as_json or fmt == "json":
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(
            f"checked {report.objects} objects ({_fmt_bytes(report.bytes)}), verified "
            f"{report.verified_batches} batches in {report.seconds:.2f}s"
        )
        for f in report.findings:
            where = f" {f.topic}-{f.partition}" if f.topic is not None else ""
            click.echo(
                f"{f.kind}{where} {f.object}: {f.detail}; {f.records_lost} records lost"
                f" -> {f.action}"
            )
        click.echo("ok" if report.ok else ("repaired" if report.repaired else "DAMAGED"))
    sys.exit(0 if report.ok else 1)
