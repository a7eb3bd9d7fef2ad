"""`shoal meta`: back up the metadata store, check it against the objects,
rebuild it from them.

backup  a consistent copy of SQLite through sqlite3's online backup API, or
        of PostgreSQL through pg_dump (the brokers may keep running).
check   metadata against the objects (storage/inventory.py): missing objects,
        objects no metadata row names, ranges that do not line up, data past
        a stream's end. `--repair` adopts what continues a stream (as a
        broker does at start) and deletes nothing unless also told
        `--delete-unreferenced`, and then only objects no stream needs that
        are older than object.orphan.grace.ms.
rebuild topics, partitions, offsets and ranges from the objects alone, into
        an empty metadata store (storage/rebuild.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from shoal.config import BrokerConfig, ConfigError, load_config
from shoal.tools import options

F = TypeVar("F", bound=Callable[..., Any])


def store_options(f: F) -> F:
    """Where the broker's stores are: its data directory, or URLs."""
    for opt in reversed(
        [
            click.option("--data-dir", metavar="DIR", help="Data directory of the broker."),
            click.option("--objects", metavar="URL", help="Object store URL."),
            click.option("--metadata", metavar="URL", help="Metadata store URL."),
            click.option(
                "--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE"
            ),
        ]
    ):
        f = opt(f)
    return f


def _config(
    data_dir: str | None, objects: str | None, metadata: str | None, config_file: str | None
) -> BrokerConfig:
    flags = {"data.dir": data_dir, "objects": objects, "metadata": metadata}
    try:
        return load_config(config_file, os.environ, flags)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def sqlite_path(config: BrokerConfig) -> Path | None:
    """The SQLite file of the metadata URL (None for PostgreSQL)."""
    from sqlalchemy.engine import make_url

    url = config.metadata_url
    if not url.startswith("sqlite:"):
        return None
    database = make_url(url).database
    if not database or database == ":memory:":
        raise click.UsageError(f"metadata URL {url!r} names no database file")
    return Path(database)


@contextlib.contextmanager
def stopped_broker(config: BrokerConfig) -> Iterator[None]:
    """Changes need the broker stopped: take its lock (the directory of
    SQLite, as `shoal serve` does); PostgreSQL clusters are the operator's
    to stop."""
    from shoal.storage.localdirs import DirectoryLocked, locked

    path = sqlite_path(config)
    if path is None:
        yield
        return
    try:
        with locked(path.resolve().parent, "data directory"):
            yield
    except DirectoryLocked as exc:
        raise click.ClickException(f"{exc}: stop the broker first") from None


@click.group("meta")
def meta() -> None:
    """The metadata store: back it up, check it against the objects, rebuild it."""


# backup ----------------------------------------------------------------------------


def backup_sqlite(source: Path, destination: Path) -> dict[str, int]:
    """A consistent copy of a live SQLite database (online backup API), then
    SQLite's own check of the copy; returns what it holds."""
    tmp = destination.with_name(destination.name + ".partial")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
            ok = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if ok != "ok":
                raise click.ClickException(f"the copy fails SQLite's integrity check: {ok}")
            counts = {
                table: int(dst.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in ("topics", "streams", "objects", "stream_ranges", "group_offsets")
            }
        finally:
            dst.close()
    finally:
        src.close()
    os.replace(tmp, destination)
    return counts


def libpq_url(url: str) -> tuple[str, str | None]:
    """The metadata URL as libpq takes it (no SQLAlchemy driver name), and
    its password apart: pg_dump gets that through PGPASSWORD, never on a
    command line every `ps` shows."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    password = parsed.password
    rendered = parsed.set(password=None).render_as_string(hide_password=False)
    return rendered, (str(password) if password else None)


def backup_postgres(url: str, destination: Path, pg_dump: str) -> tuple[int, bool]:
    """pg_dump's custom format (one consistent snapshot: pg_dump reads in a
    single repeatable-read transaction, so it runs beside the brokers), then
    `pg_restore --list` reads it back when it stands beside pg_dump; returns
    the size and whether it was read back."""
    from shoal.meta.store import redact_url

    binary = shutil.which(pg_dump)
    if binary is None:
        raise click.ClickException(
            f"pg_dump not found ({pg_dump!r}): install PostgreSQL's client tools (the server's "
            "major version or newer) or name the program with --pg-dump PATH"
        )
    target, password = libpq_url(url)
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = password
    tmp = destination.with_name(destination.name + ".partial")
    tmp.unlink(missing_ok=True)
    done = subprocess.run(
        [binary, "--format=custom", f"--file={tmp}", f"--dbname={target}"],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        why = redact_url(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "")
        raise click.ClickException(
            f"pg_dump of {redact_url(url)} failed (exit {done.returncode}): {why}"
        )
    restore = Path(binary).with_name("pg_restore")
    checked = restore.exists()
    if checked:
        listed = subprocess.run([str(restore), "--list", str(tmp)], capture_output=True, text=True)
        if listed.returncode != 0 or "TABLE DATA public streams" not in listed.stdout:
            tmp.unlink(missing_ok=True)
            raise click.ClickException(
                f"the dump of {redact_url(url)} does not read back: {listed.stderr.strip()}"
            )
    os.replace(tmp, destination)
    return destination.stat().st_size, checked


@meta.command("backup")
@click.argument("destination", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite DESTINATION if it exists.")
@click.option(
    "--pg-dump",
    default="pg_dump",
    show_default=True,
    metavar="PATH",
    help="PostgreSQL: the pg_dump program (the server's major version or newer).",
)
@store_options
def backup(
    destination: str,
    force: bool,
    pg_dump: str,
    data_dir: str | None,
    objects: str | None,
    metadata: str | None,
    config_file: str | None,
) -> None:
    """Copy the metadata store to DESTINATION, consistently, while the
    brokers run. SQLite: a database file; restore it with the broker stopped
    by copying it over meta.db and deleting meta.db-wal and meta.db-shm.
    PostgreSQL: a pg_dump archive (custom format); restore it with the
    brokers stopped into an empty database with pg_restore --no-owner
    --dbname=URL DESTINATION. At a cold start the first broker adopts the
    records acknowledged after the backup from the objects (README)."""
    from shoal.meta.store import redact_url

    config = _config(data_dir, objects, metadata, config_file)
    dest = Path(destination)
    if dest.exists() and not force:
        raise click.ClickException(f"{dest} exists: pass --force to overwrite it")
    if not dest.parent.is_dir():
        raise click.ClickException(f"directory {dest.parent} does not exist")
    source = sqlite_path(config)
    if source is None:
        size, checked = backup_postgres(config.metadata_url, dest, pg_dump)
        click.echo(
            f"backed up {redact_url(config.metadata_url)} to {dest} "
            f"(pg_dump custom format, {size} bytes; "
            + (
                "read back with pg_restore --list)"
                if checked
                else "not read back: no pg_restore beside pg_dump)"
            )
        )
        return
    if not source.is_file():
        raise click.ClickException(f"no metadata database at {source} (no Shoal data there)")
    try:
        counts = backup_sqlite(source, dest)
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot back up {source}: {exc}") from None
    click.echo(
        f"backed up {source} to {dest}: " + ", ".join(f"{n} {table}" for table, n in counts.items())
    )


# check -----------------------------------------------------------------------------


async def run_check(
    config: BrokerConfig, repair: bool, delete_unreferenced: bool
) -> dict[str, Any]:
    from shoal.meta.store import MetaStore
    from shoal.storage.inventory import adopt, take_inventory
    from shoal.storage.objectstore import ObjectStore

    store = ObjectStore(config.objects_url, config.object_store_options, create=False)
    await store.check()
    meta_store = await MetaStore.open(config.metadata_url, create=False)
    try:
        inv = await take_inventory(store, meta_store)
        actions: list[str] = []
        if repair:
            if inv.adoptable and not inv.blocking:
                adopted = await adopt(store, meta_store, inv, int(config["node.id"]))
                actions.append(f"adopted {adopted} offsets past the metadata's end")
            elif inv.adoptable:
                actions.append(
                    "adopted nothing: other data past the metadata's end cannot be adopted "
                    "(see ahead-of-metadata); consider `shoal meta rebuild`"
                )
            if delete_unreferenced:
                grace = int(config["object.orphan.grace.ms"])
                gone = [k for k, age in sorted(inv.garbage.items()) if age >= grace]
                for key in gone:
                    await store.delete(key)
                kept = len(inv.garbage) - len(gone)
                actions.append(
                    f"deleted {len(gone)} unreferenced object(s) no stream needs"
                    + (f"; kept {kept} younger than object.orphan.grace.ms" if kept else "")
                )
            elif inv.garbage:
                actions.append(
                    f"kept {len(inv.garbage)} unreferenced object(s): pass "
                    "--delete-unreferenced to delete those older than object.orphan.grace.ms"
                )
    finally:
        await meta_store.close()
    return {
        "objects_url": config.objects_url,
        "findings": [f.as_dict() for f in inv.findings],
        "counts": inv.kinds(),
        "actions": actions,
    }


@meta.command("check")
@click.option(
    "--repair",
    is_flag=True,
    help="Adopt objects that continue their streams past the metadata's end (needs the "
    "broker stopped). Deletes nothing by itself.",
)
@click.option(
    "--delete-unreferenced",
    is_flag=True,
    help="With --repair: delete objects no metadata row names and no stream needs (every "
    "block below its stream's end), older than object.orphan.grace.ms.",
)
@store_options
@options.format_option()
def check(
    repair: bool,
    delete_unreferenced: bool,
    data_dir: str | None,
    objects: str | None,
    metadata: str | None,
    config_file: str | None,
    fmt: str,
) -> None:
    """Compare the metadata store with the objects. Exit 0: consistent (or
    only unreferenced objects); 1: findings; 2: could not run."""
    if delete_unreferenced and not repair:
        raise click.UsageError("--delete-unreferenced goes with --repair")
    config = _config(data_dir, objects, metadata, config_file)
    try:
        if repair:
            with stopped_broker(config):
                result = asyncio.run(run_check(config, repair, delete_unreferenced))
        else:
            result = asyncio.run(run_check(config, repair, delete_unreferenced))
    except click.ClickException:
        raise
    except Exception as exc:
        click.echo(f"Error: cannot check: {exc}", err=True)
        raise SystemExit(2) from None
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
    else:
        for f in result["findings"]:
            click.echo(f"{f['kind']:22} {f['subject']}: {f['detail']}")
        summary = ", ".join(f"{n} {k}" for k, n in sorted(result["counts"].items()))
        click.echo(f"{result['objects_url']}: {summary or 'consistent'}")
        for a in result["actions"]:
            click.echo(a)
    if _problems(result, repair):
        raise SystemExit(1)


def _problems(result: dict[str, Any], repaired: bool) -> bool:
    """Findings that need an operator. Unreferenced objects are not: every
    store has some (uploads in flight, leftovers the cleaner reclaims after
    object.orphan.grace.ms). After --repair, adopted data is not either."""
    adopted = any(
        a.startswith("adopted ") and not a.startswith("adopted nothing") for a in result["actions"]
    )
    for f in result["findings"]:
        if f["kind"] == "unreferenced-object":
            continue
        if repaired and adopted and f["detail"].endswith(": adoptable"):
            continue
        return True
    return False


# rebuild ---------------------------------------------------------------------------


async def run_rebuild(config: BrokerConfig) -> dict[str, Any]:
    from shoal.meta.store import MetaStore
    from shoal.storage.objectstore import ObjectStore
    from shoal.storage.rebuild import rebuild as rebuild_meta

    store = ObjectStore(config.objects_url, config.object_store_options, create=False)
    await store.check()
    meta_store = await MetaStore.open(config.metadata_url)
    try:
        report = await rebuild_meta(store, meta_store, int(config["node.id"]))
    finally:
        await meta_store.close()
    return report.as_dict()


@meta.command("rebuild")
@store_options
@options.format_option()
def rebuild(
    data_dir: str | None,
    objects: str | None,
    metadata: str | None,
    config_file: str | None,
    fmt: str,
) -> None:
    """Rebuild a lost metadata store from the objects: topics, partitions,
    offsets, ranges and producers' sequence state, into an empty store.
    Topic configs, committed group offsets, ACLs, credentials and quotas are
    not in the objects and must be set again (docs/RELIABILITY.md)."""
    from shoal.meta.store import redact_url

    if not objects and not data_dir and not config_file:
        raise click.UsageError("--objects URL (or --data-dir DIR) names the objects to read")
    config = _config(data_dir, objects, metadata, config_file)
    try:
        with stopped_broker(config):
            result = asyncio.run(run_rebuild(config))
    except click.ClickException:
        raise
    except Exception as exc:
        raise click.ClickException(
            f"cannot rebuild {redact_url(config.metadata_url)} from {config.objects_url}: {exc}"
        ) from None
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
        return
    for p in result["partitions"]:
        lost = f"  (offsets lost: {p['lost']})" if p["lost"] else ""
        click.echo(f"{p['topic']}-{p['partition']}: [{p['start']}, {p['end']}){lost}")
    for what in ("unreadable_objects", "unlabeled_streams", "shadowed"):
        if result[what]:
            click.echo(f"{what.replace('_', ' ')}: {result[what]}")
    click.echo(
        f"rebuilt {len(result['topics'])} topic(s) into {redact_url(config.metadata_url)}; "
        "set topic configs, ACLs, users and quotas again, consumer groups start from "
        "their auto.offset.reset"
    )
