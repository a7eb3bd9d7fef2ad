"""`shoal cluster status|drain` and `shoal partitions move`: cluster
operations against the shared metadata store (the controller carries them out)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click

from shoal.meta.cluster import ClusterStore
from shoal.meta.store import MetaStore, now_ms

_metadata = click.option(
    "--metadata",
    envvar="SHOAL_METADATA",
    required=True,
    metavar="URL",
    help="The cluster's metadata store (postgresql://...) [SHOAL_METADATA].",
)


async def _store(url: str) -> ClusterStore:
    return ClusterStore(await MetaStore.open(url))


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
        "controller": ctrl.node_id if ctrl and ctrl.lease_expiry_ms >= now else None,
        "brokers": [
            {
                "node_id": b.node_id,
                "address": f"{b.host}:{b.port}",
                "rack": b.rack,
                "incarnation": b.incarnation,
                "alive": b.lease_expiry_ms >= now,
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


@click.group()
def cluster() -> None:
    """Brokers, leases, controller and load of a Shoal cluster."""


@cluster.command()
@_metadata
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
def status(metadata: str, fmt: str) -> None:
    """Brokers with their leases, partition counts and load; the controller."""
    data = asyncio.run(status_data(metadata))
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"controller: {data['controller']}")
    click.echo(
        f"{'node':>4}  {'address':<21} {'rack':<10} {'lease':>7} {'parts':>5} "
        f"{'in B/s':>10} {'out B/s':>10}  state"
    )
    for b in data["brokers"]:
        state = "draining" if b["draining"] else ("alive" if b["alive"] else "expired")
        click.echo(
            f"{b['node_id']:>4}  {b['address']:<21} {b['rack'] or '-':<10} "
            f"{b['lease_ms_left'] / 1000:>6.1f}s {b['partitions']:>5} "
            f"{b['bytes_in_per_s']:>10} {b['bytes_out_per_s']:>10}  {state}"
        )
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

    left = asyncio.run(run())
    if left:
        raise click.ClickException(f"broker {node} still owns {left} partitions")
    click.echo(f"broker {node} drained" if wait else f"broker {node} draining")


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

    took = asyncio.run(run())
    click.echo(f"moved {topic}-{partition} to broker {target} in {took:.2f}s")
