"""`shoal cluster status|drain|undrain` and `shoal partitions move`: cluster
operations against the shared metadata store (the controller carries them out)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from shoal.meta.cluster import ClusterStore
from shoal.meta.store import MetaError, MetaStore, now_ms
from shoal.tools.options import format_option

T = TypeVar("T")

_metadata = click.option(
    "--metadata",
    envvar="SHOAL_METADATA",
    required=True,
    metavar="URL",
    help="The cluster's metadata store (postgresql://...) [SHOAL_METADATA].",
)


def _is_sqlite(url: str) -> bool:
    return url.strip().lower().startswith("sqlite")


NOT_CLUSTER = (
    "not in cluster mode: the metadata store is SQLite (one broker); "
    "cluster commands need the cluster's postgresql:// URL"
)


async def _store(url: str) -> ClusterStore:
    if _is_sqlite(url):
        raise click.ClickException(NOT_CLUSTER)
    # Read-only: an empty or mistyped database must not get Shoal's tables.
    return ClusterStore(await MetaStore.open(url, create=False))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; an unreachable or broken metadata store is
    one line naming the store (its password redacted), not a traceback."""
    try:
        return asyncio.run(coro)
    except MetaError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"metadata store: {exc.strerror or exc}") from None


async def status_data(url: str) -> dict[str, Any]:
    store = await _store(url)
    try:
        now = now_ms()
        brokers = await store.brokers()
        ctrl = await store.controller()
        owners = await store.owners()
        moves = await store.reassignments()
    finally:
        await store.meta.close()
    counts: dict[int | None, int] = {}
    for o in owners:
        counts[o.owner] = counts.get(o.owner, 0) + 1
    return {
        "cluster_mode": True,
        "controller": ctrl.node_id if ctrl and ctrl.lease_expiry_ms >= now else None,
        "brokers": [
            {
                "node_id": b.node_id,
                "address": f"{b.host}:{b.port}",
                "rack": b.rack,
                "incarnation": b.incarnation,
                "alive": b.lease_expiry_ms >= now,
                "state": _state(b.lease_expiry_ms >= now, b.draining),
                "lease_ms_left": b.lease_expiry_ms - now,
                "draining": b.draining,
                "partitions": counts.get(b.node_id, 0),
                "bytes_in_per_s": b.bytes_in,
                "bytes_out_per_s": b.bytes_out,
            }
            for b in brokers
        ],
        "unowned_partitions": sum(
            n for node, n in counts.items() if node not in {b.node_id for b in brokers}
        ),
        "reassignments": [
            {
                "topic": r.topic,
                "partition": r.partition,
                "from": r.source_node,
                "to": r.target_node,
                "moved": r.moved_ms is not None,
            }
            for r in moves
        ],
    }


def _state(alive: bool, draining: bool) -> str:
    if not alive:
        return "expired"
    return "draining" if draining else "alive"


def _lease(ms_left: int) -> str:
    if ms_left >= 0:
        return f"{ms_left / 1000:.1f}s"
    return f"expired {-ms_left / 1000:.0f}s ago"


@click.group()
def cluster() -> None:
    """Brokers, leases, controller and load of a Shoal cluster."""


@cluster.command()
@_metadata
@format_option()
def status(metadata: str, fmt: str) -> None:
    """Brokers with their leases, partition counts and load; the controller.

    A broker whose lease ran out (it crashed or lost the store) is listed as
    expired; one that shut down cleanly has left and is not listed."""
    if _is_sqlite(metadata):
        if fmt == "json":
            click.echo(json.dumps({"cluster_mode": False}, indent=2))
        else:
            click.echo(NOT_CLUSTER)
        return
    data = _run(status_data(metadata))
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"controller: {data['controller']}")
    rows = [
        (
            str(b["node_id"]),
            b["address"],
            b["rack"] or "-",
            _lease(b["lease_ms_left"]),
            str(b["partitions"]),
            str(b["bytes_in_per_s"]),
            str(b["bytes_out_per_s"]),
            b["state"],
        )
        for b in data["brokers"]
    ]
    head = ("NODE", "ADDRESS", "RACK", "LEASE-LEFT", "PARTITIONS", "IN-B/S", "OUT-B/S", "STATE")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if data["unowned_partitions"]:
        click.echo(f"partitions without a live owner: {data['unowned_partitions']}")
    for r in data["reassignments"]:
        click.echo(f"moving {r['topic']}-{r['partition']}: {r['from']} -> {r['to']}")


@cluster.command()
@_metadata
@click.argument("node", type=int)
@click.option("--wait/--no-wait", default=True, help="Wait until the broker owns nothing.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait.")
def drain(metadata: str, node: int, wait: bool, timeout: float) -> None:
    """Move every partition off broker NODE (before shutting it down)."""

    async def run() -> int:
        store = await _store(metadata)
        try:
            if not await store.set_draining(node):
                raise click.ClickException(f"broker {node} is not registered")
            deadline = time.monotonic() + timeout
            while True:
                left = sum(1 for o in await store.owners() if o.owner == node)
                if not wait or left == 0 or time.monotonic() > deadline:
                    return left
                await asyncio.sleep(0.2)
        finally:
            await store.meta.close()

    left = _run(run())
    if left and wait:
        raise click.ClickException(f"broker {node} still owns {left} partitions")
    click.echo(f"broker {node} drained" if wait else f"broker {node} draining")


@cluster.command()
@_metadata
@click.argument("node", type=int)
def undrain(metadata: str, node: int) -> None:
    """Let broker NODE take partitions again (ends `cluster drain`)."""

    async def run() -> None:
        store = await _store(metadata)
        try:
            if not await store.set_draining(node, False):
                raise click.ClickException(f"broker {node} is not registered")
        finally:
            await store.meta.close()

    _run(run())
    click.echo(f"broker {node} takes partitions again")


@click.group()
def partitions() -> None:
    """Partition owners of a Shoal cluster."""


@partitions.command()
@_metadata
@click.argument("topic")
@click.argument("partition", type=int)
@click.option("--to", "target", type=int, required=True, help="Node id of the new owner.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait.")
def move(metadata: str, topic: str, partition: int, target: int, timeout: float) -> None:
    """Move TOPIC PARTITION to another broker (metadata only, no data copied)."""

    async def run() -> float:
        store = await _store(metadata)
        try:
            live = {b.node_id for b in await store.brokers() if b.lease_expiry_ms >= now_ms()}
            if target not in live:
                raise click.ClickException(f"broker {target} is not alive")
            started = time.monotonic()
            try:
                await store.request_move(topic, partition, target)
            except KeyError:
                raise click.ClickException(f"no partition {topic}-{partition}") from None
            while time.monotonic() - started < timeout:
                pending = [
                    r
                    for r in await store.reassignments()
                    if (r.topic, r.partition) == (topic, partition)
                ]
                if not pending:
                    return time.monotonic() - started
                await asyncio.sleep(0.05)
            raise click.ClickException(f"move of {topic}-{partition} not done in {timeout}s")
        finally:
            await store.meta.close()

    took = _run(run())
    click.echo(f"moved {topic}-{partition} to broker {target} in {took:.2f}s")
