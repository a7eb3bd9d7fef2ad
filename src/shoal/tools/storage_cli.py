"""`shoal storage stats`: what the object store holds and what it costs to read.

Reads the metadata store and the object store directly (it works with the
broker stopped), and the broker's Prometheus endpoint for cache hit rates.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from typing import Any

import click
from rich.table import Table

from shoal.config import ConfigError, load_config
from shoal.tools import options


async def gather_stats(config_flags: dict[str, Any], config_file: str | None) -> dict[str, Any]:
    from shoal.meta.store import MetaStore, redact_url
    from shoal.storage.objectstore import ObjectStore

    config = load_config(config_file, os.environ, config_flags)
    # Read-only: a mistyped --data-dir must not become an empty store.
    meta = await MetaStore.open(config.metadata_url, create=False)
    try:
        summary = await meta.storage_summary()
        store = ObjectStore(config.objects_url, config.object_store_options, create=False)
        listed = await store.list("")
        known = await meta.object_keys()
        import time

        cutoff = int(time.time() * 1000) - int(config["compaction.min.age.ms"])
        node = int(config["node.id"])
        pending = len(await meta.wal_objects(node, cutoff, 1_000_000))
    finally:
        await meta.close()
    return {
        "objects_url": config.objects_url,
        "metadata_url": redact_url(config.metadata_url),
        "objects": {k: {"count": n, "bytes": b} for k, (n, b) in summary["objects"].items()},
        "pending_delete": {
            "count": summary["pending_delete"][0],
            "bytes": summary["pending_delete"][1],
        },
        "store": {
            "count": len(listed),
            "bytes": sum(o.size for o in listed),
            "unknown": sum(1 for o in listed if o.key not in known),
        },
        "pending_compaction": pending,
        "topics": {name: {"bytes": b, "ranges": n} for name, (b, n) in summary["topics"].items()},
    }


def scrape_caches(address: str) -> dict[str, dict[str, float]]:
    """Cache hits and misses from a broker's /metrics."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("shoal_") and " " in line:
            name, _, value = line.partition(" ")
            values[name] = float(value)
    out = {}
    for cache in ("log", "block"):
        hits = values.get(f"shoal_{cache}_cache_hits_total", 0.0)
        misses = values.get(f"shoal_{cache}_cache_misses_total", 0.0)
        out[cache] = {
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "bytes": values.get(f"shoal_{cache}_cache_bytes", 0.0),
        }
    return out


@click.group("storage")
def storage() -> None:
    """Inspect the log's object storage."""


@storage.command("stats")
@click.option("--data-dir", metavar="DIR", help="Data directory of the broker [./shoal-data].")
@click.option("--objects", metavar="URL", help="Object store URL.")
@click.option("--metadata", metavar="URL", help="Metadata store URL.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), metavar="FILE")
@click.option("--metrics", metavar="HOST:PORT", help="A broker's metrics.listen, for cache hits.")
@options.format_option()
def stats(
    data_dir: str | None,
    objects: str | None,
    metadata: str | None,
    config_file: str | None,
    metrics: str | None,
    fmt: str,
) -> None:
    """Objects, bytes, per-topic size, pending compaction and cache hit rates."""
    flags = {"data.dir": data_dir, "objects": objects, "metadata": metadata}
    try:
        result = asyncio.run(gather_stats(flags, config_file))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except Exception as exc:
        raise click.ClickException(f"cannot read storage: {exc}") from None
    if metrics:
        try:
            result["caches"] = scrape_caches(metrics)
        except OSError as exc:
            raise click.ClickException(f"cannot read metrics from {metrics}: {exc}") from None
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
        return
    console = options.console()  # whole tables in a pipe, too
    console.print(f"objects: {result['objects_url']}   metadata: {result['metadata_url']}")
    t = Table("kind", "objects", "bytes", title="Live objects")
    for kind, v in sorted(result["objects"].items()):
        t.add_row(kind, f"{v['count']:,}", f"{v['bytes']:,}")
    pd = result["pending_delete"]
    t.add_row("awaiting deletion", f"{pd['count']:,}", f"{pd['bytes']:,}")
    st = result["store"]
    t.add_row("in the store", f"{st['count']:,}", f"{st['bytes']:,}")
    console.print(t)
    console.print(
        f"WAL objects awaiting compaction: {result['pending_compaction']:,}; "
        f"objects in the store unknown to metadata: {st['unknown']:,}"
    )
    tt = Table("topic", "bytes", "ranges", title="Topics")
    for name, v in result["topics"].items():
        tt.add_row(name, f"{v['bytes']:,}", f"{v['ranges']:,}")
    console.print(tt)
    if "caches" in result:
        ct = Table("cache", "hits", "misses", "hit rate", "bytes", title="Caches")
        for name, v in result["caches"].items():
            ct.add_row(
                name,
                f"{v['hits']:,.0f}",
                f"{v['misses']:,.0f}",
                f"{v['hit_rate']:.1%}",
                f"{v['bytes']:,.0f}",
            )
        console.print(ct)
