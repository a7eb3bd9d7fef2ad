"""Prometheus exposition of the gateway's status (prometheus-client).

A custom collector renders the latest status snapshot at scrape time, so the
endpoint and `shoal edge status` always agree and nothing is counted twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from shoal.edge.gateway import Gateway

UPLINK_STATES = (
    "starting",
    "connecting",
    "connected",
    "degraded",
    "idle",
    "backoff",
    "fenced",
    "error",
    "stopped",
)
LANE_DROP_REASONS = ("ttl", "disk-budget", "low-disk", "rejected", "corrupt", "torn")


class _Collector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Any]:
        st = self.gateway.status_snapshot
        site = str(st.get("site", ""))
        backlog_r = GaugeMetricFamily(
            "shoal_edge_lane_backlog_records",
            "Records not yet delivered by an uplink",
            labels=["site", "lane", "uplink"],
        )
        backlog_b = GaugeMetricFamily(
            "shoal_edge_lane_backlog_bytes",
            "Bytes not yet delivered by an uplink (estimate)",
            labels=["site", "lane", "uplink"],
        )
        oldest = GaugeMetricFamily(
            "shoal_edge_lane_oldest_unsent_age_seconds",
            "Age of the oldest undelivered record",
            labels=["site", "lane", "uplink"],
        )
        used = GaugeMetricFamily(
            "shoal_edge_lane_disk_used_bytes",
            "Local log bytes held by the lane",
            labels=["site", "lane"],
        )
        budget = GaugeMetricFamily(
            "shoal_edge_lane_disk_budget_bytes",
            "Disk budget of the lane (0: unbounded)",
            labels=["site", "lane"],
        )
        blocked = GaugeMetricFamily(
            "shoal_edge_lane_blocked",
            "1 while ingest into the lane waits for room",
            labels=["site", "lane"],
        )
        drops_r = CounterMetricFamily(
            "shoal_edge_lane_dropped_records",
            "Records dropped, by reason",
            labels=["site", "lane", "reason"],
        )
        drops_b = CounterMetricFamily(
            "shoal_edge_lane_dropped_bytes",
            "Bytes dropped, by reason",
            labels=["site", "lane", "reason"],
        )
        for lane in st.get("lanes", []):
            name = lane["name"]
            used.add_metric([site, name], lane["disk_used_bytes"])
            budget.add_metric([site, name], lane["disk_budget_bytes"])
            blocked.add_metric([site, name], 1 if lane["blocked"] else 0)
            for reason in LANE_DROP_REASONS:
                d = lane["drops"].get(reason, {"records": 0, "bytes": 0})
                drops_r.add_metric([site, name, reason], d["records"])
                drops_b.add_metric([site, name, reason], d["bytes"])
            for up, row in lane["uplinks"].items():
                backlog_r.add_metric([site, name, up], row["backlog_records"])
                backlog_b.add_metric([site, name, up], row["backlog_bytes"])
                oldest.add_metric([site, name, up], row["oldest_unsent_age_s"])
        state = GaugeMetricFamily(
            "shoal_edge_uplink_state",
            "1 for the uplink's current state; connected only if a produce succeeded recently",
            labels=["site", "uplink", "state"],
        )
        rate = GaugeMetricFamily(
            "shoal_edge_uplink_rate_bytes_per_second",
            "Delivered bytes per second (10 s)",
            labels=["site", "uplink"],
        )
        rrate = GaugeMetricFamily(
            "shoal_edge_uplink_rate_records_per_second",
            "Delivered records per second (10 s)",
            labels=["site", "uplink"],
        )
        sent_r = CounterMetricFamily(
            "shoal_edge_uplink_sent_records",
            "Records acknowledged by the central cluster",
            labels=["site", "uplink"],
        )
        sent_b = CounterMetricFamily(
            "shoal_edge_uplink_sent_bytes",
            "Bytes acknowledged by the central cluster",
            labels=["site", "uplink"],
        )
        success = GaugeMetricFamily(
            "shoal_edge_uplink_last_success_age_seconds",
            "Seconds since the last acknowledged produce (-1: never)",
            labels=["site", "uplink"],
        )
        txn_c = CounterMetricFamily(
            "shoal_edge_uplink_transactions_committed",
            "Transactions an exactly-once uplink committed",
            labels=["site", "uplink"],
        )
        txn_a = CounterMetricFamily(
            "shoal_edge_uplink_transactions_aborted",
            "Transactions an exactly-once uplink aborted (their records are sent again)",
            labels=["site", "uplink"],
        )
        txn_s = CounterMetricFamily(
            "shoal_edge_uplink_commit_seconds",
            "Time spent committing transactions (commit_transaction: flush and EndTxn)",
            labels=["site", "uplink"],
        )
        txn_p = GaugeMetricFamily(
            "shoal_edge_uplink_commit_latency_ms",
            "Commit latency of the last 1000 transactions, by quantile",
            labels=["site", "uplink", "quantile"],
        )
        mode = GaugeMetricFamily(
            "shoal_edge_uplink_exactly_once",
            "1 for an exactly-once (transactional) uplink, 0 for at-least-once",
            labels=["site", "uplink"],
        )
        for up in st.get("uplinks", []):
            name = up["name"]
            txn = up.get("transactions")
            mode.add_metric([site, name], 1 if txn else 0)
            if txn:
                txn_c.add_metric([site, name], txn["committed"])
                txn_a.add_metric([site, name], txn["aborted"])
                txn_s.add_metric([site, name], txn["commit_seconds_total"])
                for q, k in (("0.5", "commit_latency_ms_p50"), ("0.99", "commit_latency_ms_p99")):
                    if txn[k] is not None:
                        txn_p.add_metric([site, name, q], txn[k])
            for s in UPLINK_STATES:
                state.add_metric([site, name, s], 1 if up["state"] == s else 0)
            rate.add_metric([site, name], up["rate_bytes_per_s"])
            rrate.add_metric([site, name], up["rate_records_per_s"])
            sent_r.add_metric([site, name], up["sent_records"])
            sent_b.add_metric([site, name], up["sent_bytes"])
            age = up["last_success_age_s"]
            success.add_metric([site, name], -1 if age is None else age)
        disk = GaugeMetricFamily(
            "shoal_edge_disk_used_bytes", "Bytes of the local log on disk", labels=["site"]
        )
        disk.add_metric([site], st.get("local", {}).get("disk_used_bytes", 0))
        ingest = CounterMetricFamily(
            "shoal_edge_ingested_records", "Records appended to the local log", labels=["site"]
        )
        ingest.add_metric([site], st.get("local", {}).get("records_in", 0))
        mqtt = GaugeMetricFamily(
            "shoal_edge_mqtt_connected", "1 while connected to the MQTT broker", labels=["site"]
        )
        mq = st.get("mqtt")
        mqtt.add_metric([site], 1 if mq and mq["connected"] else 0)
        local = st.get("local", {})
        low = GaugeMetricFamily(
            "shoal_edge_disk_low",
            "1 while the data directory is full or below local.min_free_bytes "
            "(lanes act on their when_full policy)",
            labels=["site"],
        )
        low.add_metric([site], 1 if local.get("disk_low") else 0)
        free = GaugeMetricFamily(
            "shoal_edge_free_bytes", "Free bytes of a local directory", labels=["site", "dir"]
        )
        for kind, n in sorted(local.get("free_bytes", {}).items()):
            free.add_metric([site, kind], n)
        yield from (
            backlog_r,
            backlog_b,
            oldest,
            used,
            budget,
            blocked,
            drops_r,
            drops_b,
            state,
            rate,
            rrate,
            sent_r,
            sent_b,
            success,
            mode,
            txn_c,
            txn_a,
            txn_s,
            txn_p,
            disk,
            ingest,
            mqtt,
            low,
            free,
        )


def render(gateway: Gateway) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(gateway))
    return generate_latest(registry), CONTENT_TYPE_LATEST
