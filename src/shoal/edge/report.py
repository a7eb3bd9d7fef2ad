"""Site status reports: every few seconds, one JSON record keyed by the site
id on a compacted topic of the central cluster (`_shoal_sites` by default).

Plain Kafka records, so any Kafka-compatible central cluster takes them; the
compacted topic keeps the last report of every site, which is what the web
console (shoal.console) reads to draw the fleet. A site that stops reporting
is "silent since" its last record: absence is the signal, so nothing has to
be sent when a site goes away.

The reporter has its own small producer (not idempotent, short delivery
timeout): a report that cannot be delivered is simply replaced by the next
one, and reports never queue behind the uplink's data or count in its window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from shoal.edge.config import UplinkConfig

log = logging.getLogger("shoal.edge.report")
rdkafka_log = logging.getLogger("shoal.edge.rdkafka")

#: CreateTopics refusals that retrying will not change
REFUSED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.POLICY_VIOLATION,
    KafkaError.INVALID_CONFIG,
    KafkaError.INVALID_REPLICATION_FACTOR,
}
SCHEMA = 1  # the "v" field of a report: readers skip versions they do not know

try:
    VERSION = metadata.version("shoal")
except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
    VERSION = "0.0.0"


def site_report(
    snapshot: dict[str, Any], uplink: str, interval_ms: int, now: float | None = None
) -> dict[str, Any]:
    """The record a site sends, from the gateway's status snapshot
    (Gateway.refresh_status) as seen by one uplink: its state, the backlog
    it still has to deliver per lane, rates, drops and disk use."""
    up: dict[str, Any] = next((u for u in snapshot.get("uplinks", []) if u["name"] == uplink), {})
    lanes = []
    total_r = total_b = drops = 0
    oldest = 0.0
    used = budget = 0
    for lane in snapshot.get("lanes", []):
        mine = lane.get("uplinks", {}).get(uplink, {})
        r = int(mine.get("backlog_records", 0))
        b = int(mine.get("backlog_bytes", 0))
        age = float(mine.get("oldest_unsent_age_s", 0.0))
        lane_drops = {k: int(v["records"]) for k, v in lane.get("drops", {}).items()}
        lanes.append(
            {
                "name": lane["name"],
                "priority": lane.get("priority", 0),
                "topics": lane.get("topics", []),
                "backlog_records": r,
                "backlog_bytes": b,
                "oldest_unsent_age_s": age,
                "disk_used_bytes": int(lane.get("disk_used_bytes", 0)),
                "disk_budget_bytes": int(lane.get("disk_budget_bytes", 0)),
                "blocked": bool(lane.get("blocked", False)),
                "drops": lane_drops,
            }
        )
        total_r += r
        total_b += b
        oldest = max(oldest, age)
        drops += sum(lane_drops.values())
        used += int(lane.get("disk_used_bytes", 0))
        budget += int(lane.get("disk_budget_bytes", 0))
    feeds = sorted(
        {(p["topic"], p["central_topic"]) for p in up.get("partitions", [])},
    )
    mq = snapshot.get("mqtt")
    return {
        "v": SCHEMA,
        "site": snapshot.get("site", ""),
        "version": VERSION,
        "time": round(time.time() if now is None else now, 3),
        "interval_ms": interval_ms,
        "running": bool(snapshot.get("running", True)),
        "uptime_s": snapshot.get("uptime_s", 0),
        "uplink": {
            "name": uplink,
            "state": up.get("state", "starting"),
            "last_error": up.get("last_error"),
            "last_error_kind": up.get("last_error_kind"),
            "last_success_age_s": up.get("last_success_age_s"),
            "rate_records_per_s": up.get("rate_records_per_s", 0.0),
            "rate_bytes_per_s": up.get("rate_bytes_per_s", 0.0),
            "sent_records": up.get("sent_records", 0),
            "sent_bytes": up.get("sent_bytes", 0),
            "reconnects": up.get("reconnects", 0),
        },
        "backlog_records": total_r,
        "backlog_bytes": total_b,
        "oldest_unsent_age_s": oldest,
        "dropped_records": drops,
        # the lanes' own bytes against the sum of their budgets (0: unbounded)
        "disk_used_bytes": used,
        "disk_budget_bytes": budget,
        "records_in": snapshot.get("local", {}).get("records_in", 0),
        "mqtt_connected": None if mq is None else bool(mq.get("connected")),
        "lanes": lanes,
        "feeds": [{"local": a, "central": b} for a, b in feeds],
    }


class SiteReporter:
    """Publishes `site_report` for one uplink every `report_interval_ms`."""

    def __init__(
        self, cfg: UplinkConfig, site: str, snapshot: Callable[[], dict[str, Any]]
    ) -> None:
        self.cfg = cfg
        self.site = site
        self.snapshot = snapshot
        self.topic = cfg.report_topic
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None
        self._producer: Producer | None = None
        self._task: asyncio.Task[None] | None = None
        self._topic_ready = False

    def _conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = dict(self.cfg.producer_config())
        interval = self.cfg.report_interval_ms
        conf.update(
            {
                "enable.idempotence": False,
                "acks": 1,
                "linger.ms": 5,
                "message.timeout.ms": max(interval * 2, 5000),
                "queue.buffering.max.messages": 10,
                "compression.type": "lz4",
                "logger": rdkafka_log,
            }
        )
        # Not the uplink's transactional id: reports are plain produce.
        for k in (
            "batch.size",
            "queue.buffering.max.kbytes",
            "partitioner",
            "transactional.id",
            "transaction.timeout.ms",
        ):
            conf.pop(k, None)
        return conf

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"report-{self.cfg.name}")

    async def stop(self, final: dict[str, Any] | None = None) -> None:
        """Stop; with `final` (the gateway's last snapshot), send one last
        report saying the site stopped, so the console shows it stopped
        rather than silent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        p = self._producer
        if p is not None and final is not None:
            with contextlib.suppress(Exception):
                self._produce(p, final)
                await asyncio.to_thread(p.flush, 2)
        self._producer = None
        if p is not None:
            holder = [p]
            del p
            await asyncio.to_thread(holder.clear)  # rd_kafka_destroy may block

    async def _run(self) -> None:
        self._producer = Producer(self._conf())
        interval = self.cfg.report_interval_ms / 1000
        while True:
            try:
                if not self._topic_ready:
                    # before any produce: a produce would let the central
                    # cluster auto-create the topic uncompacted
                    self._topic_ready = await self._in_daemon_thread(self._ensure_topic)
                if self._topic_ready:
                    self._produce(self._producer, self.snapshot())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bad snapshot must not end the reports
                log.warning("site report on %s failed: %s", self.cfg.name, exc)
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                self._producer.poll(0)
                await asyncio.sleep(min(left, 0.2))

    @staticmethod
    async def _in_daemon_thread(fn: Callable[[], bool]) -> bool:
        """`fn` in a daemon thread: an admin request to an unreachable
        cluster must not hold up the gateway's exit (the default executor's
        threads are waited for when the event loop closes)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()

        def settle(ok: bool) -> None:
            if not fut.done():
                fut.set_result(ok)

        def work() -> None:
            try:
                ok = fn()
            except Exception:
                ok = False
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, ok)

        threading.Thread(target=work, name="site-report-topic", daemon=True).start()
        return await fut

    def _produce(self, p: Producer, snapshot: dict[str, Any]) -> None:
        if not snapshot:
            return
        report = site_report(snapshot, self.cfg.name, self.cfg.report_interval_ms)
        try:
            p.produce(
                self.topic,
                key=self.site.encode(),
                value=json.dumps(report, separators=(",", ":")).encode(),
                on_delivery=self._delivered,
            )
        except BufferError:
            self.failed += 1  # the central cluster is not taking them: skip this one
        p.poll(0)

    def _delivered(self, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self.sent += 1
            self.last_error = None
            return
        self.failed += 1
        message = f"{err.name()}: {err.str()}"
        if message != self.last_error:
            log.info("site report to %s not delivered: %s", self.topic, message)
        self.last_error = message
        if err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            self._topic_ready = False

    def _ensure_topic(self) -> bool:
        """Create the report topic compacted when it is missing (and the
        central cluster allows it). True once it exists or was created; a
        refusal is logged once and reports go on (an operator may create it)."""
        admin = AdminClient(self.cfg.client_config())
        try:
            md = admin.list_topics(timeout=5)
            if self.topic in md.topics and md.topics[self.topic].error is None:
                return True
            fut = admin.create_topics(
                [NewTopic(self.topic, 1, config={"cleanup.policy": "compact"})],
                operation_timeout=5,
                request_timeout=5,
            )[self.topic]
            try:
                fut.result(timeout=10)
                log.info("created compacted topic %s for site reports", self.topic)
            except Exception as exc:
                err = exc.args[0] if exc.args else None
                code = err.code() if isinstance(err, KafkaError) else None
                if code == KafkaError.TOPIC_ALREADY_EXISTS:
                    return True
                if code in REFUSED:
                    # for an operator to create (or grant): report anyway
                    log.warning("cannot create site report topic %s: %s", self.topic, exc)
                    return True
                log.info("creating site report topic %s failed (retrying): %s", self.topic, exc)
                return False
            return True
        except Exception as exc:
            log.debug("site report topic check failed: %s", exc)
            return False
