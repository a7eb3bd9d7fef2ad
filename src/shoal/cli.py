"""The `shoal` command."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import click

from shoal.broker import switching
from shoal.config import BrokerConfig, ConfigError, load_config

BROKER_TRIM_FREE_ABOVE = 16 * 1024 * 1024  # free heap at which `serve` trims


def restore_stop_signals() -> None:
    """`shoal serve &` in a script starts with SIGINT ignored (background
    jobs of a non-interactive shell do): a SIGINT sent while the broker
    starts would be lost and the broker would run on. Restore the defaults
    as early as possible so SIGINT stops it however it was started."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_async(coro: Any) -> None:
    """Run the server's coroutine on uvloop where it is available, with the
    GIL's switch interval a broker's threads need (broker/switching.py)."""
    restore_stop_signals()
    switching.apply()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is absent on Windows
        asyncio.run(coro)
    else:
        uvloop.run(coro)


class LazyGroup(click.Group):
    """Subcommands whose modules load on first use, so `shoal serve` does not
    pay for the tools' imports (Kafka clients, charts)."""

    lazy = {
        "acls": ("shoal.tools.acls_cli", "acls"),
        "bench": ("shoal.tools.bench_cli", "bench"),
        "cluster": ("shoal.cluster.cli", "cluster"),
        "cost": ("shoal.tools.cost_cli", "cost"),
        "edge": ("shoal.edge.cli", "edge"),
        "groups": ("shoal.tools.groups_cli", "groups"),
        "meta": ("shoal.tools.meta_cli", "meta"),
        "partitions": ("shoal.cluster.cli", "partitions"),
        "produce": ("shoal.tools.console_io", "produce"),
        "quotas": ("shoal.tools.quotas_cli", "quotas"),
        "consume": ("shoal.tools.console_io", "consume"),
        "scorecard": ("shoal.tools.scorecard_cli", "scorecard"),
        "storage": ("shoal.tools.storage_cli", "storage"),
        "users": ("shoal.tools.users_cli", "users"),
        "link": ("shoal.link.cli", "link"),
        "topics": ("shoal.tools.topics_cli", "topics"),
        "transactions": ("shoal.tools.transactions_cli", "transactions"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            import importlib

            module, attr = self.lazy[name]
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup)
@click.version_option(package_name="shoal")
def cli() -> None:
    """Shoal: Kafka-compatible streaming on object storage, for IoT fleets."""


@cli.command()
@click.option("--listen", metavar="HOST:PORT", help="Address to listen on [127.0.0.1:9092].")
@click.option("--advertise", metavar="HOST:PORT", help="Address given to clients [--listen].")
@click.option("--data-dir", metavar="DIR", help="Local data directory [./shoal-data].")
@click.option("--objects", metavar="URL", help="Object store [file://DATA_DIR/objects].")
@click.option("--metadata", metavar="URL", help="Metadata store [sqlite:///DATA_DIR/meta.db].")
@click.option("--node-id", type=int, help="This broker's id [0].")
@click.option("--rack", help="Availability zone of this broker.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="TOML file of configuration keys (Kafka names).",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def serve(
    listen: str | None,
    advertise: str | None,
    data_dir: str | None,
    objects: str | None,
    metadata: str | None,
    node_id: int | None,
    rack: str | None,
    config_file: str | None,
    log_level: str,
) -> None:
    """Run a broker. Keys: file < SHOAL_* environment < flags."""
    from shoal.logs import configure as configure_logging

    configure_logging(log_level)
    flags = {
        "listen": listen,
        "advertise": advertise,
        "data.dir": data_dir,
        "objects": objects,
        "metadata": metadata,
        "node.id": node_id,
        "rack": rack,
    }
    try:
        config = load_config(config_file, os.environ, flags)
        from shoal.security.listeners import check_security

        check_security(config)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    from shoal.broker.server import serve as run_server
    from shoal.meta.store import MetaError
    from shoal.storage.errors import StorageError

    try:
        with local_state(config):
            from shoal import native_memory as memory
            from shoal.console.app import Console
            from shoal.link.manager import LinkManager

            # Freed heap handed back to the kernel: without it a broker's RSS
            # kept its high-water mark, 17 MiB more after a quarter of an hour
            # of the soak's load (docs/RELIABILITY.md, Soak).
            trim = functools.partial(
                memory.TrimService.start,
                capped=memory.limit_arenas(),  # before storage and client threads
                free_above=BROKER_TRIM_FREE_ABOVE,
            )
            run_async(run_server(config, services=(LinkManager.start, Console.service, trim)))
    except KeyboardInterrupt:
        click.echo("shoal: stopped by SIGINT while starting", err=True)
        sys.exit(130)
    except (StorageError, MetaError) as exc:
        click.echo(f"shoal: cannot start: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:
        where = exc.filename if "://" in str(exc.filename) else config["listen"]
        click.echo(f"shoal: cannot listen on {where}: {exc.strerror or exc}", err=True)
        sys.exit(1)


@contextlib.contextmanager
def local_state(config: BrokerConfig) -> Iterator[None]:
    """Lock the directory of the broker's local state and prove it can write
    where it must, before anything opens: two brokers on one SQLite database
    would both be node 0 and take each other's streams, and an unwritable
    objects directory would otherwise show only as produce timeouts."""
    from sqlalchemy.engine import make_url

    from shoal.storage.localdirs import ensure_writable, ensure_writable_file, locked

    sqlite: Path | None = None
    if config.metadata_url.startswith("sqlite:"):
        database = make_url(config.metadata_url).database
        if database and database != ":memory:":
            sqlite = Path(database).resolve()
    objects: Path | None = None
    if config.objects_url.startswith("file:"):
        objects = Path(urlparse(config.objects_url).path)
    if sqlite is not None:
        lock_dir: Path | None = sqlite.parent
    elif objects is not None and not config["objects"]:
        lock_dir = config.data_dir.resolve()  # objects default to DATA_DIR/objects
    else:
        lock_dir = None  # remote stores only: nothing local to share
    with contextlib.ExitStack() as stack:
        if lock_dir is not None:
            what = "data directory" if lock_dir == config.data_dir.resolve() else "directory"
            stack.enter_context(locked(lock_dir, what))
        if objects is not None:
            ensure_writable(objects, "objects directory")
        if sqlite is not None:
            ensure_writable_file(sqlite, "metadata database")
        yield


def main() -> None:
    restore_stop_signals()
    cli()
