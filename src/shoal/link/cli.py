"""`shoal link create|list|status|pause|resume|delete|promote|rollback`: migration
links, managed in the metadata store that the brokers follow (they poll one
version counter), like `shoal cluster` and `shoal users --metadata`.

`create` first proves the source works (reachable, credentials accepted) and
that no mirror would take the name of a normal topic. Source passwords are
stored for the brokers but never printed. `promote --reverse` starts copying
what is written here back to the source; `rollback` ends that copy and moves
consumer groups back with translated offsets.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from shoal.link.rollback import RollbackError, RollbackResult
from shoal.link.rollback import rollback as do_rollback
from shoal.link.source import SourceCluster, SourceError
from shoal.link.spec import (
    SpecError,
    check_name,
    check_patterns,
    matches,
    mirror_name,
    parse_settings,
    patterns,
)
from shoal.link.status import link_dict, status_data
from shoal.meta.links import (
    MIRRORING,
    PROMOTED,
    PROMOTING,
    LinkRow,
    LinkStore,
)
from shoal.meta.store import MetaError, MetaStore
from shoal.tools.options import console, format_option
from shoal.tools.options import parse_settings as parse_x

T = TypeVar("T")

_metadata = click.option(
    "--metadata",
    envvar="SHOAL_METADATA",
    required=True,
    metavar="URL",
    help="The Shoal cluster's metadata store (sqlite:///..., postgresql://...) [SHOAL_METADATA].",
)


def _run(metadata: str, action: Callable[[LinkStore], Awaitable[T]]) -> T:
    async def go() -> T:
        meta = await MetaStore.open(metadata, create=False)
        try:
            return await action(LinkStore(meta))
        finally:
            await meta.close()

    try:
        return asyncio.run(go())
    except MetaError as exc:
        raise click.ClickException(str(exc)) from None
    except SourceError as exc:
        raise click.ClickException(f"source: {exc}") from None


@click.group()
def link() -> None:
    """Migration links: mirror another Kafka cluster here at its own offsets."""


@link.command()
@click.argument("name")
@click.option("--source", required=True, metavar="HOST:PORT[,...]", help="Source bootstrap.")
@click.option(
    "-X",
    "extra",
    multiple=True,
    metavar="KEY=VALUE",
    callback=parse_x,
    help="Source client setting, librdkafka's names (security.protocol, sasl.*, ssl.*).",
)
@click.option("--topics", required=True, help="Source topics to mirror: comma-separated globs.")
@click.option("--groups", default="", help="Consumer groups whose offsets to sync: globs.")
@click.option("--prefix", default="", help="Prefix of mirror topic names.")
@click.option(
    "--write-through",
    is_flag=True,
    help="Forward produce to mirror topics to the source (acked once both hold it).",
)
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@_metadata
def create(
    name: str,
    source: str,
    extra: dict[str, str],
    topics: str,
    groups: str,
    prefix: str,
    write_through: bool,
    timeout: float,
    metadata: str,
) -> None:
    """Create link NAME; its brokers start mirroring within a second."""
    try:
        check_name(name)
        settings = parse_settings(extra)
        check_patterns(topics, "--topics")
    except SpecError as exc:
        raise click.BadParameter(str(exc)) from None

    async def go(store: LinkStore) -> list[str]:
        src = SourceCluster(source, settings, timeout)
        try:
            meta = await src.check()
        finally:
            src.close()
        wanted = sorted(t for t in meta.partitions if matches(patterns(topics), t))
        _v, _links, mirrors = await store.load()
        taken = {m.mirror for m in mirrors}
        existing = {t.name for t in await store.meta.list_topics()}
        for t in wanted:
            mirror = mirror_name(prefix, t)
            if mirror in existing or mirror in taken:
                raise click.ClickException(
                    f"mirror topic {mirror!r} (of source topic {t!r}) already exists here "
                    "as a normal topic or another link's mirror: choose a --prefix or "
                    "narrow --topics"
                )
        await store.create(
            LinkRow(name, source, extra, topics, groups, prefix, write_through=write_through)
        )
        return wanted

    wanted = _run(metadata, go)
    click.echo(
        f"link {name} created: mirroring {len(wanted)} topic(s) from {source}"
        + (f": {', '.join(wanted)}" if wanted else " (none match yet)")
    )


@link.command(name="list")
@format_option()
@_metadata
def list_links(fmt: str, metadata: str) -> None:
    """Every link, its source and patterns (passwords hidden)."""

    async def go(store: LinkStore) -> tuple[list[LinkRow], dict[str, dict[str, str]]]:
        _v, links, _m = await store.load()
        reverse: dict[str, dict[str, str]] = {}
        for r in await store.reverse():
            reverse.setdefault(r.link, {})[r.mirror] = r.state
        return links, reverse

    links, reverse = _run(metadata, go)
    rows = [link_dict(r, reverse.get(r.name, {})) for r in links]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table("link", "source", "topics", "groups", "prefix", "state", "reverse", "settings")
    for r in rows:
        table.add_row(
            r["name"],
            r["source"],
            r["topics"],
            r["groups"],
            r["prefix"],
            r["state"],
            " ".join(f"{k}:{v}" for k, v in r["reverse"].items()) or "-",
            " ".join(f"{k}={v}" for k, v in r["settings"].items()),
        )
    console().print(table)


@link.command()
@click.argument("name", required=False)
@format_option()
@_metadata
def status(name: str | None, fmt: str, metadata: str) -> None:
    """Per mirror topic: state, lag in records, bytes copied, the synced
    groups' lag, last error."""
    rows = _run(metadata, lambda store: status_data(store, name))
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(
        "link", "mirror", "source topic", "state", "lag", "lag s", "bytes", "groups (lag)", "error"
    )
    for r in rows:
        state, errors, rev = r["state"], r["errors"], r["reverse"]
        if rev is not None:
            state += f", reverse {rev['state']} ({rev['lag_records']} behind)"
            errors = errors + rev["errors"]
        table.add_row(
            r["link"],
            r["mirror"],
            r["source_topic"],
            state,
            str(r["lag_records"]),
            "-" if r["lag_seconds"] is None else f"{r['lag_seconds']:.1f}",
            str(r["bytes"]),
            ", ".join(f"{g['group']} ({g['lag']})" for g in r["groups"]),
            "; ".join(errors),
        )
    console().print(table)


@link.command()
@click.argument("name")
@_metadata
def pause(name: str, metadata: str) -> None:
    """Stop copying (mirror topics stay read-only)."""
    _run(metadata, lambda store: store.set_paused(name, True))
    click.echo(f"link {name} paused")


@link.command()
@click.argument("name")
@_metadata
def resume(name: str, metadata: str) -> None:
    """Copy again from where each partition stopped."""
    _run(metadata, lambda store: store.set_paused(name, False))
    click.echo(f"link {name} resumed")


@link.command()
@click.argument("name")
@_metadata
def delete(name: str, metadata: str) -> None:
    """Remove the link; its mirror topics stay as normal, writable topics."""
    mirrors = _run(metadata, lambda store: store.delete(name))
    click.echo(
        f"link {name} deleted; {len(mirrors)} former mirror topic(s) are now writable"
        + (f": {', '.join(mirrors)}" if mirrors else "")
    )


@link.command()
@click.argument("topics", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every mirror topic (of --link, if given).")
@click.option("--link", "link_name", default=None, help="With --all: only this link's topics.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the mirrors to reach the source's end.",
)
@click.option(
    "--reverse",
    is_flag=True,
    help="Then copy what is written here back to the source (a rollback target).",
)
@_metadata
def promote(
    topics: tuple[str, ...],
    all_: bool,
    link_name: str | None,
    timeout: float,
    reverse: bool,
    metadata: str,
) -> None:
    """Stop mirroring TOPICS once they hold everything the source has, and
    make them writable here. Stop the source's producers first: records
    written there after promotion are not copied. With --reverse, records
    written here from then on are copied back to the source, which stays a
    place to roll back to (`shoal link rollback`)."""
    if bool(topics) == all_:
        raise click.UsageError("name the mirror topics to promote, or --all")
    reversed_: list[str] = []

    async def go(store: LinkStore) -> tuple[list[str], list[dict[str, Any]]]:
        chosen, lagging = await promote_topics(store)
        if reverse and not lagging:
            _v, _links, mirrors = await store.load()
            named = set(topics) if topics else None
            by_link: dict[str, list[str]] = {}
            for m in mirrors:
                if m.state != PROMOTED or (named is not None and m.mirror not in named):
                    continue
                if named is None and m.mirror not in chosen:
                    continue
                by_link.setdefault(m.link, []).append(m.mirror)
            for lnk, names in by_link.items():
                if await store.add_reverse(names, lnk):
                    reversed_.extend(names)
        return chosen, lagging

    async def promote_topics(store: LinkStore) -> tuple[list[str], list[dict[str, Any]]]:
        _v, links, mirrors = await store.load()
        by_name = {m.mirror: m for m in mirrors}
        paused_links = {row.name for row in links if row.paused}
        if all_:
            chosen = [
                m.mirror
                for m in mirrors
                if m.state != PROMOTED and (link_name is None or m.link == link_name)
            ]
        else:
            for t in topics:
                if t not in by_name:
                    raise click.ClickException(f"{t!r} is not a mirror topic of any link")
            chosen = [t for t in topics if by_name[t].state != PROMOTED]
        if not chosen:
            return [], []
        paused = sorted({by_name[t].link for t in chosen if by_name[t].link in paused_links})
        if paused:
            raise click.ClickException(
                f"link {', '.join(paused)} is paused: resume it first "
                "(a paused link cannot reach the source's end)"
            )
        await store.set_state(chosen, PROMOTING, only_from=MIRRORING)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            _v, _links, now = await store.load()
            if all(m.state == PROMOTED for m in now if m.mirror in chosen):
                return chosen, []
            await asyncio.sleep(0.2)
        # Not there in time: back to mirroring, and say how far behind.
        await store.set_state(chosen, MIRRORING, only_from=PROMOTING)
        rows = [r for r in await status_data(store, None) if r["mirror"] in chosen]
        return chosen, rows

    chosen, lagging = _run(metadata, go)
    if not chosen:
        click.echo("nothing to promote: already promoted")
        if reversed_:
            click.echo(f"copying back to the source from now on: {', '.join(reversed_)}")
        return
    if lagging:
        detail = ", ".join(
            f"{r['mirror']} {r['lag_records']} record(s) behind"
            + (f" ({'; '.join(r['errors'])})" if r["errors"] else "")
            for r in lagging
        )
        raise click.ClickException(
            f"not promoted: the mirrors did not reach the source's end within {timeout:g}s "
            f"({detail}); they are still mirroring. Stop the source's producers, then retry."
        )
    click.echo(f"promoted {', '.join(chosen)}: writable here, no longer mirrored")
    if reversed_:
        click.echo(
            f"copying back to the source from now on: {', '.join(reversed_)} "
            "(the rollback point stays open: shoal link rollback)"
        )


@link.command()
@click.argument("name")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for the reverse link to copy everything back.",
)
@click.option(
    "--groups",
    default=None,
    help="Consumer groups to move back: globs (default: the link's --groups, else all).",
)
@_metadata
def rollback(name: str, timeout: float, groups: str | None, metadata: str) -> None:
    """Go back to link NAME's source after `promote --reverse`: stop producers
    and consumers here first. Waits until everything written here is on the
    source (the topics are read-only here from then on), then sets the
    groups' offsets on the source to the translated positions; the groups
    must have no members there."""
    if groups is not None:
        try:
            check_patterns(groups, "--groups")
        except SpecError as exc:
            raise click.BadParameter(str(exc)) from None

    async def go(store: LinkStore) -> RollbackResult | None:
        try:
            return await do_rollback(store, name, timeout, groups)
        except RollbackError as exc:
            raise click.ClickException(str(exc)) from None

    result = _run(metadata, go)
    if result is None:
        click.echo(f"link {name} is already rolled back")
        return
    click.echo(
        f"rolled back {', '.join(result.topics)}: {result.copied} offset(s) had been copied "
        f"back ({result.ranges} offset-map range(s)); the source takes writes again"
    )
    if result.recovered:
        click.echo(f"{result.recovered} offset(s) were mapped after a restart, not sent again")
    extra = sum(result.extra.values())
    click.echo(
        f"offsets on the source the reverse link did not write (duplicates or other writers): "
        f"{extra}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in result.extra.items())})" if extra else "")
    )
    for group, rows in result.groups.items():
        moved = ", ".join(f"{t}-{p} {here}->{there}" for t, p, here, there in rows)
        click.echo(f"group {group}: offsets set on the source: {moved}")
