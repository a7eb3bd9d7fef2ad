"""Prometheus endpoint: engine counters read at scrape time, so the produce
and fetch paths pay nothing for being observable."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shoal.broker.broker import Broker
from shoal.storage.diskspace import DiskGuard

log = logging.getLogger("shoal.metrics")


class EngineCollector(Collector):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def collect(self) -> Iterator[Any]:
        e = self.broker.engine
        for name, cache in (("log", e.log_cache), ("block", e.block_cache)):
            hits = CounterMetricFamily(f"shoal_{name}_cache_hits", f"{name} cache hits")
            hits.add_metric([], cache.stats.hits)
            yield hits
            misses = CounterMetricFamily(f"shoal_{name}_cache_misses", f"{name} cache misses")
            misses.add_metric([], cache.stats.misses)
            yield misses
            size = GaugeMetricFamily(f"shoal_{name}_cache_bytes", f"{name} cache size")
            size.add_metric([], cache.size)
            yield size
            # The bound the size grows to under steady load (a warm-up, not
            # a leak: docs/RELIABILITY.md, Soak).
            bound = GaugeMetricFamily(f"shoal_{name}_cache_max_bytes", f"{name} cache bound")
            bound.add_metric([], cache.max_bytes)
            yield bound
        expired = CounterMetricFamily(
            "shoal_log_cache_expired", "log cache entries dropped by log.cache.max.age.ms"
        )
        expired.add_metric([], e.log_cache.stats.expired)
        yield expired
        wal = e.wal
        for metric, value, doc in (
            ("shoal_wal_objects_committed", wal.objects_committed, "WAL objects committed"),
            ("shoal_wal_bytes_committed", wal.bytes_committed, "bytes in committed WAL objects"),
            ("shoal_wal_retries", wal.upload_retries, "object store or commit retries"),
            ("shoal_compaction_rounds", e.compactor.rounds, "compaction rounds"),
            ("shoal_compaction_objects_in", e.compactor.totals.objects_in, "objects compacted"),
            ("shoal_merge_rounds", e.compactor.merge_rounds, "merge rounds (second level)"),
            (
                "shoal_merge_objects_in",
                e.compactor.merge_totals.objects_in,
                "compacted objects merged or rewritten",
            ),
            (
                "shoal_merge_objects_out",
                e.compactor.merge_totals.objects_out,
                "objects merge rounds wrote",
            ),
            (
                "shoal_merge_bytes_dropped",
                e.compactor.merge_totals.bytes_in - e.compactor.merge_totals.bytes_live,
                "dead bytes (and indexes) of merged objects given back",
            ),
            ("shoal_objects_deleted", e.cleaner.totals.deleted, "replaced objects deleted"),
            ("shoal_orphans_deleted", e.cleaner.totals.orphans, "uncommitted uploads deleted"),
            ("shoal_catchup_read_bytes", e.catchup.taken_bytes, "bytes served from objects"),
            ("shoal_catchup_paced_seconds", e.catchup.waited_s, "catch-up reads held back"),
        ):
            c = CounterMetricFamily(metric, doc)
            c.add_metric([], value)
            yield c
        g = GaugeMetricFamily("shoal_wal_unflushed_bytes", "appended bytes not yet committed")
        g.add_metric([], wal.unflushed)
        yield g
        yield from disk_metrics(e.disk)
        for extra in list(self.broker.collectors):
            yield from extra()


def disk_metrics(disk: DiskGuard) -> Iterator[Any]:
    """The full-disk and low-space conditions (shared with the edge gateway)."""
    full = GaugeMetricFamily(
        "shoal_storage_writes_refused",
        "1 while writes are refused for lack of space, by cause (disk full, low space)",
        labels=["cause"],
    )
    full.add_metric(["full"], 1 if disk.full else 0)
    full.add_metric(["low"], 1 if disk.low else 0)
    yield full
    for metric, value, doc in (
        ("shoal_storage_full_events", disk.full_events, "writes that failed for lack of space"),
        ("shoal_storage_low_events", disk.low_events, "times free space fell below the floor"),
        ("shoal_storage_refused_writes", disk.refused, "appends refused for lack of space"),
    ):
        c = CounterMetricFamily(metric, doc)
        c.add_metric([], value)
        yield c
    free = GaugeMetricFamily(
        "shoal_storage_free_bytes", "free bytes of a local directory", labels=["dir"]
    )
    for what, n in disk.free.items():
        free.add_metric([what], n)
    yield free


def start_metrics(broker: Broker) -> Any | None:
    """Serve /metrics on metrics.listen (in a thread, off the event loop),
    with what the broker's services add to `broker.collectors`."""
    listen = str(broker.config["metrics.listen"])
    if not listen:
        return None
    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry()
    registry.register(EngineCollector(broker))
    server, _thread = start_http_server(int(port), host, registry)
    log.info("metrics on http://%s/metrics", listen)
    return server
