"""The fleet as the console knows it: the last report of every site read
from the compacted site report topic (edge/report.py), plus a short history
of each site's backlog and rate for the charts.

`SiteBook` is sans-IO (records in, views out); `SiteReader` feeds it by
reading the topic's streams through the broker's storage engine, the way a
fetch would, so it needs no Kafka client and no credentials.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from shoal.broker.broker import Broker
from shoal.console.data import bounds
from shoal.protocol.batches import BatchDecodeError, decode_records, is_control, iter_batches
from shoal.storage.errors import StorageError

log = logging.getLogger("shoal.console.sites")

SCHEMA = 1
HISTORY = 720  # points per site: an hour at a 5 s report interval
#: a site is silent when its last report is older than this many intervals
SILENT_INTERVALS = 3
SILENT_GRACE_S = 2.0


@dataclass(slots=True)
class Point:
    time: float
    backlog_records: int
    backlog_bytes: int
    rate_records_per_s: float
    oldest_unsent_age_s: float


@dataclass(slots=True)
class Site:
    site: str
    report: dict[str, Any]
    history: collections.deque[Point] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY)
    )

    @property
    def last_report(self) -> float:
        return float(self.report.get("time", 0.0))

    def silent(self, now: float) -> bool:
        interval = float(self.report.get("interval_ms", 5000)) / 1000
        return now - self.last_report > SILENT_INTERVALS * interval + SILENT_GRACE_S

    def state(self, now: float) -> str:
        """What the fleet view shows: `stopped` (said so in its last report),
        `silent` (no report for three intervals), else the uplink's state."""
        if not self.report.get("running", True):
            return "stopped"
        if self.silent(now):
            return "silent"
        return str(self.report.get("uplink", {}).get("state", "unknown"))

    def row(self, now: float) -> dict[str, Any]:
        r = self.report
        up = r.get("uplink", {})
        state = self.state(now)
        return {
            "site": self.site,
            "state": state,
            "version": r.get("version", ""),
            "uplink": up.get("name", ""),
            "backlog_records": int(r.get("backlog_records", 0)),
            "backlog_bytes": int(r.get("backlog_bytes", 0)),
            "oldest_unsent_age_s": float(r.get("oldest_unsent_age_s", 0.0)),
            "rate_records_per_s": float(up.get("rate_records_per_s", 0.0)),
            "rate_bytes_per_s": float(up.get("rate_bytes_per_s", 0.0)),
            "dropped_records": int(r.get("dropped_records", 0)),
            "disk_used_bytes": int(r.get("disk_used_bytes", 0)),
            "disk_budget_bytes": int(r.get("disk_budget_bytes", 0)),
            "last_error": up.get("last_error"),
            "last_report": self.last_report,
            "last_report_age_s": round(max(0.0, now - self.last_report), 1),
            "silent_since": self.last_report if state in ("silent", "stopped") else None,
        }


class BadReport(ValueError):
    """A record on the report topic that is not a site report."""


def parse_report(key: bytes | None, value: bytes | None) -> dict[str, Any] | None:
    """The report, None for a tombstone (the site was removed); BadReport
    when the record is not a report of a schema this console knows."""
    if value is None:
        return None
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadReport(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != SCHEMA:
        raise BadReport(f"not a v{SCHEMA} site report")
    site = doc.get("site")
    if not isinstance(site, str) or not site:
        raise BadReport("no site")
    if key is not None and key.decode(errors="replace") != site:
        raise BadReport(f"key {key!r} is not its site {site!r}")
    if not isinstance(doc.get("time"), int | float):
        raise BadReport("no time")
    return doc


class SiteBook:
    """The last report of every site and each site's recent history."""

    def __init__(self) -> None:
        self.sites: dict[str, Site] = {}
        self.bad = 0

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        try:
            report = parse_report(key, value)
        except BadReport as exc:
            self.bad += 1
            if self.bad <= 10:
                log.info("skipping a record on the site report topic: %s", exc)
            return
        if report is None:
            if key is not None:
                self.sites.pop(key.decode(errors="replace"), None)
            return
        name = report["site"]
        site = self.sites.get(name)
        if site is None:
            site = self.sites[name] = Site(name, report)
        elif report["time"] < site.last_report:
            return  # an older report (two uplinks, or replayed): keep the newest
        site.report = report
        site.history.append(
            Point(
                float(report["time"]),
                int(report.get("backlog_records", 0)),
                int(report.get("backlog_bytes", 0)),
                float(report.get("uplink", {}).get("rate_records_per_s", 0.0)),
                float(report.get("oldest_unsent_age_s", 0.0)),
            )
        )

    def rows(
        self,
        now: float,
        state: str | None = None,
        text: str | None = None,
        sort: str = "site",
        descending: bool = False,
    ) -> list[dict[str, Any]]:
        rows = [s.row(now) for s in self.sites.values()]
        if state:
            rows = [r for r in rows if r["state"] == state]
        if text:
            rows = [r for r in rows if text.lower() in r["site"].lower()]
        rows.sort(key=lambda r: (r[sort] is None, r[sort], r["site"]), reverse=descending)
        return rows


SORT_KEYS = (
    "site",
    "state",
    "backlog_records",
    "backlog_bytes",
    "oldest_unsent_age_s",
    "rate_records_per_s",
    "last_report",
)


class SiteReader:
    """Reads the report topic into a SiteBook: from the log start once (the
    compacted topic holds every site's last report), then its tail."""

    def __init__(self, broker: Broker, topic: str, book: SiteBook) -> None:
        self.broker = broker
        self.topic = topic
        self.book = book
        self.positions: dict[int, int] = {}  # stream id -> next offset
        self._task: asyncio.Task[None] | None = None
        self.read_once = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-sites")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading %s failed; retrying", self.topic)
            self.read_once.set()
            await asyncio.sleep(1.0)

    async def poll(self) -> None:
        topic = await self.broker.topics.get_or_create(self.topic, allow_auto_create=False)
        if topic is None:
            return
        engine = self.broker.engine
        for part in topic.partitions:
            sid = part.stream_id
            pos = self.positions.get(sid)
            start, end = await bounds(self.broker, part)
            if pos is None or pos < start:
                pos = start
            while pos < end:
                try:
                    # read-only: never takes the stream from its owner
                    result = await engine.read_only(sid, pos, 1 << 20)
                except StorageError as exc:
                    log.info("reading %s-%d at %d: %s", self.topic, part.partition, pos, exc)
                    break
                if not result.chunks:
                    break
                pos = self._apply_chunks(result.chunks, pos)
            self.positions[sid] = pos

    def _apply_chunks(self, chunks: list[Any], pos: int) -> int:
        for chunk in chunks:
            for batch in iter_batches(chunk):
                base = int.from_bytes(batch[0:8], "big", signed=True)
                last = base + int.from_bytes(batch[23:27], "big", signed=True)
                if last < pos:
                    continue
                if not is_control(batch):
                    try:
                        records = decode_records(batch)
                    except BatchDecodeError as exc:
                        log.info("%s: batch at %d skipped: %s", self.topic, base, exc)
                        records = []
                    for r in records:
                        if r.offset >= pos:
                            self.book.apply(r.key, r.value)
                pos = last + 1
        return pos
