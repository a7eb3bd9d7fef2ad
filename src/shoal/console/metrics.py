"""Prometheus metrics per site, from the console's fleet view, so alerting
on a silent site or a growing backlog works without the console open.

Served by the broker's own endpoint (`metrics.listen`) when the console is
on: the collector renders the SiteBook at scrape time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shoal.console.sites import SiteBook


class SiteCollector(Collector):
    def __init__(self, book: SiteBook) -> None:
        self.book = book

    def collect(self) -> Iterator[Any]:
        now = time.time()
        up = GaugeMetricFamily(
            "shoal_site_up", "1 while the site reports and is not stopped", labels=["site"]
        )
        backlog = GaugeMetricFamily(
            "shoal_site_backlog_records", "Records the site has not delivered", labels=["site"]
        )
        backlog_b = GaugeMetricFamily(
            "shoal_site_backlog_bytes", "Bytes the site has not delivered", labels=["site"]
        )
        oldest = GaugeMetricFamily(
            "shoal_site_oldest_unsent_age_seconds",
            "Age of the site's oldest undelivered record",
            labels=["site"],
        )
        last = GaugeMetricFamily(
            "shoal_site_last_report_age_seconds", "Seconds since the site's last report",
            labels=["site"],
        )  # fmt: skip
        dropped = CounterMetricFamily(
            "shoal_site_dropped_records", "Records the site dropped (TTL, budget...)",
            labels=["site"],
        )  # fmt: skip
        for r in self.book.rows(now):
            s = [r["site"]]
            up.add_metric(s, 0 if r["state"] in ("silent", "stopped") else 1)
            backlog.add_metric(s, r["backlog_records"])
            backlog_b.add_metric(s, r["backlog_bytes"])
            oldest.add_metric(s, r["oldest_unsent_age_s"])
            last.add_metric(s, r["last_report_age_s"])
            dropped.add_metric(s, r["dropped_records"])
        yield from (up, backlog, backlog_b, oldest, last, dropped)
