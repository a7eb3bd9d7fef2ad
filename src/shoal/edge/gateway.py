"""The gateway process: local broker, ingest, lanes, uplinks, housekeeping.

Start order matters: lock the data directory, check (and repair) the local
log before the broker opens it, then open the broker, then start forwarding,
then accept ingest. Stop runs the other way: stop taking messages, append
what is pending, give in-flight records a moment to be acknowledged
centrally, write progress, close the broker (which commits its WAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

from shoal import native_memory as memory
from shoal.broker.broker import Broker
from shoal.broker.handlers import Client, Handler, registry
from shoal.broker.listener import KafkaListener
from shoal.broker.server import start_listeners
from shoal.config import ConfigError
from shoal.edge import integrity
from shoal.edge.config import EdgeConfig
from shoal.edge.http import HttpServer, Request, Response
from shoal.edge.lanes import Lanes
from shoal.edge.locallog import IngestRejected, LocalLog
from shoal.edge.mqtt import MqttIngest
from shoal.edge.pacing import PriorityScheduler
from shoal.edge.report import SiteReporter
from shoal.edge.state import StateStore
from shoal.edge.uplink import Forwarder, Uplink
from shoal.logs import flush_summaries
from shoal.protocol.headers import RequestHeader
from shoal.protocol.records import read_header
from shoal.storage.diskspace import is_disk_full
from shoal.storage.errors import StorageError

log = logging.getLogger("shoal.edge")

PRODUCE = 0


class Gateway:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.started = time.time()
        self.state = StateStore(config.state_path)
        self.broker: Broker | None = None
        self.lanes: Lanes | None = None
        self.locallog: LocalLog | None = None
        self.uplinks: list[Uplink] = []
        self.reporters: list[SiteReporter] = []
        self.mqtt: MqttIngest | None = None
        self.scheduler = PriorityScheduler(
            config.bandwidth.cap_bytes_per_sec, config.bandwidth.burst_bytes
        )
        self.integrity: integrity.Report | None = None
        self.http_in: HttpServer | None = None
        self.admin: HttpServer | None = None
        self.kafka_listener: KafkaListener | None = None
        self.http_records = 0
        self.kafka_produce_requests = 0
        self.disk_used_bytes = 0
        # Why the data directory counts as low on space (None: it does not).
        self.disk_low: str | None = None
        self.disk_low_events = 0
        self._write_failures: dict[str, int] = {}
        self.status_snapshot: dict[str, Any] = {}
        self._maintenance: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stack = contextlib.ExitStack()
        self._rates: dict[str, list[tuple[float, int, int]]] = {}
        self._head_ts: dict[tuple[int, int], int | None] = {}
        self.stopping = False

    # start / stop ----------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        capped = memory.limit_arenas()  # before the storage and Kafka client threads exist
        cfg.check_files()
        self._stack.enter_context(integrity.data_dir_lock(cfg.data_dir))
        self._reserve_ports()
        await self.state.open(cfg.site)
        report = await integrity.check_log(
            cfg.log_dir, cfg.data_dir / "quarantine", repair=True, deep=False
        )
        self.integrity = report
        for f in report.findings:
            await self.state.add_event(
                "integrity",
                {
                    "finding": f.kind,
                    "object": f.object,
                    "detail": f.detail,
                    "action": f.action,
                    "topic": f.topic,
                    "partition": f.partition,
                    "records_lost": f.records_lost,
                },
            )
            log.warning(
                "integrity: %s %s: %s -> %s (%d records lost)",
                f.kind,
                f.object,
                f.detail,
                f.action,
                f.records_lost,
            )
        broker = self.broker = await Broker.open(cfg.broker_config())
        try:
            from shoal.broker.maintenance import Maintenance
        except ImportError:  # pragma: no cover - depends on the storage work in the tree
            self._maintenance = None
        else:
            self._maintenance = Maintenance(broker)
            self._maintenance.start()
        lanes = self.lanes = Lanes(cfg, broker)
        lanes.load_drops(await self.state.load_drops())
        for f in report.findings:
            if f.records_lost and f.topic is not None:
                lanes.lane_of(f.topic).count_drop("torn", f.records_lost, f.bytes_lost)
        self.locallog = LocalLog(broker, cfg, lanes)
        for topic in self._configured_topics():
            await self.locallog.ensure_topic(topic)
        await lanes.refresh()
        progress = await self.state.load_progress()
        epochs = await self.state.load_epochs()
        for up_cfg in cfg.uplinks:
            up = Uplink(
                up_cfg,
                cfg.site,
                broker,
                lanes,
                self.scheduler,
                progress,
                epochs,
                self.state.bump_epoch,
            )
            up.start()
            self.uplinks.append(up)
            if up_cfg.report_topic:
                reporter = SiteReporter(up_cfg, cfg.site, lambda: self.status_snapshot)
                reporter.start()
                self.reporters.append(reporter)
        await self._start_kafka()
        if cfg.mqtt is not None:
            self.mqtt = MqttIngest(cfg.mqtt, self.locallog)
            self._tasks.append(asyncio.create_task(self.mqtt.run(), name="mqtt"))
        if cfg.http is not None:
            self.http_in = HttpServer(self._ingest_http, cfg.http.max_body_bytes)
            await self.http_in.start(cfg.http.listen)
        if cfg.admin.listen:
            self.admin = HttpServer(self._admin_http)
            await self.admin.start(cfg.admin.listen)
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks.append(asyncio.create_task(self._progress_loop(), name="progress"))
        self._tasks.append(asyncio.create_task(memory.trim_loop(), name="malloc-trim"))
        if capped:
            log.info("malloc arenas capped at %d (glibc M_ARENA_MAX)", memory.ARENAS)
        await self.refresh_status()
        await asyncio.to_thread(self._write_status_file)

    def _reserve_ports(self) -> None:
        """Bind every listener's address before anything else: a clash must
        fail the start naming the listener's key, before MQTT is touched (the
        same client id would kick a running gateway's session) or the local
        log is opened. The sockets are bound, not listening (SO_REUSEADDR
        lets the real servers bind beside them) and closed at stop."""
        cfg = self.config
        wanted = [("local.listen", cfg.local.listen)]
        if cfg.http is not None:
            wanted.append(("http.listen", cfg.http.listen))
        if cfg.admin.listen:
            wanted.append(("admin.listen", cfg.admin.listen))
        for key, address in wanted:
            host, _, port = address.rpartition(":")
            try:
                infos = socket.getaddrinfo(
                    host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
                for family, kind, proto, _name, sockaddr in infos:
                    sock = socket.socket(family, kind, proto)
                    self._stack.callback(sock.close)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind(sockaddr)
            except OSError as exc:
                raise ConfigError(
                    f"{key}: cannot listen on {address}: {exc.strerror or exc}"
                ) from None

    def _configured_topics(self) -> Iterable[str]:
        cfg = self.config
        seen: set[str] = set()
        for lane in cfg.lanes:
            seen.update(lane.topics)
        if cfg.mqtt is not None:
            seen.update(r.topic for r in cfg.mqtt.routes)
        if cfg.http is not None:
            seen.update(cfg.http.topics)
        return sorted(seen)

    async def _start_kafka(self) -> None:
        broker = self.broker
        assert broker is not None
        handlers = registry()
        handlers[PRODUCE] = self._budgeted_produce(handlers[PRODUCE])

        # The same listener as the broker's: idle timeout, frame caps, the
        # request memory budget, connection limits and authentication, all
        # from [local.broker] (one listener: local.security_protocol).
        (self.kafka_listener,) = await start_listeners(broker, handlers)

    def _budgeted_produce(self, inner: Handler) -> Handler:
        """Local Kafka producers go through the lanes too: under the block
        policy a produce request waits for room (the client sees latency, then
        its own request timeout), it is never refused."""

        async def produce(broker: Broker, client: Client, header: RequestHeader, body: Any) -> Any:
            assert self.lanes is not None
            self.kafka_produce_requests += 1
            for td in body.topic_data:
                size = sum(len(pd.records or b"") for pd in td.partition_data)
                lane = self.lanes.lane_of(td.name)
                await lane.wait_room(size)
                self.lanes.add_appended(td.name, size)
            return await inner(broker, client, header, body)

        return produce

    async def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        log.info("edge gateway stopping")
        if self.mqtt is not None:
            await self.mqtt.stop()
        if self.http_in is not None:
            await self.http_in.close()
        if self.kafka_listener is not None:
            await self.kafka_listener.close()
        if self.locallog is not None:
            await self.locallog.close()
        for up in self.uplinks:
            await up.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.lanes is not None:
            await self._save_progress()
        if self._maintenance is not None:
            await self._maintenance.stop()
        if self.admin is not None:
            await self.admin.close()
        if self.broker is not None:
            await self.broker.close()
        with contextlib.suppress(Exception):
            await self.refresh_status(final=True)
            await asyncio.to_thread(self._write_status_file)
        for reporter in self.reporters:
            await reporter.stop(final=self.status_snapshot)
        await self.state.close()
        self._stack.close()
        log.info("edge gateway stopped")

    # progress ----------------------------------------------------------------

    async def _save_progress(self) -> None:
        assert self.lanes is not None
        dirty: dict[tuple[str, str, int], int] = {}
        fws: list[tuple[Forwarder, int]] = []
        for up in self.uplinks:
            for fw in up.forwarders.values():
                if fw.acked != fw.saved:
                    dirty[fw.key] = fw.acked
                    fws.append((fw, fw.acked))
        await self.state.save(dirty, self.lanes.drop_totals())
        for fw, acked in fws:
            fw.saved = acked
        for up in self.uplinks:
            up.unsaved = sum(max(0, f.acked - f.saved) for f in up.forwarders.values())
            up.window_changed()

    async def _progress_loop(self) -> None:
        interval = min((u.progress_interval_ms for u in self.config.uplinks), default=200)
        while True:
            await asyncio.sleep(interval / 1000)
            try:
                await self._quietly("uplink progress", self._save_progress())
            except Exception:
                log.exception("saving uplink progress failed; retrying")

    # housekeeping ------------------------------------------------------------

    async def _housekeeping(self) -> None:
        last_status = 0.0
        last_trim = 0.0
        last_disk = 0.0
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            try:
                assert self.lanes is not None
                await self.lanes.refresh()
                self._check_disk()
                if now - last_trim >= 1.0:
                    last_trim = now
                    await self._quietly("trim of forwarded data", self._trim_forwarded())
                    await self._quietly("lane budget trim", self._enforce_budgets())
                if now - last_disk >= 5.0:
                    last_disk = now
                    self.disk_used_bytes = await asyncio.to_thread(_dir_size, self.config.log_dir)
                if now - last_status >= self.config.admin.status_interval_ms / 1000:
                    last_status = now
                    await self.refresh_status()
                    await self._quietly("status file", asyncio.to_thread(self._write_status_file))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("housekeeping round failed; retrying")

    def _check_disk(self) -> None:
        """Below local.min_free_bytes, or with a write failed for lack of
        space, every lane acts as full (its when_full policy) at the size it
        has: block lanes hold new records (MQTT acks withheld, produce
        requests waiting), drop-oldest lanes drop their oldest. One line when
        it starts, one when it ends."""
        assert self.broker is not None and self.lanes is not None
        disk = self.broker.engine.disk
        floor = self.config.local.min_free_bytes
        low = [
            f"{kind} directory {disk.dirs[kind]} has {n} bytes free, below "
            f"local.min_free_bytes={floor}"
            for kind, n in sorted(disk.free.items())
            if n < floor
        ]
        reason = disk.reason or "; ".join(low) or None
        if (reason is None) == (self.disk_low is None):
            self.disk_low = reason
            return
        self.disk_low = reason
        for lane in self.lanes.by_name.values():
            lane.disk_cap = lane.usage if reason is not None else None
            lane.wake()
        if reason is not None:
            self.disk_low_events += 1
            log.error("data directory low on space, lanes act as full: %s", reason)
        else:
            log.warning("data directory has space again: lanes back to their budgets")

    async def _quietly(self, what: str, op: Awaitable[Any]) -> None:
        """A write the gateway can do without for a while (status file,
        progress): failing for lack of space it logs once per episode, not
        once per round."""
        try:
            await op
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            n = self._write_failures.get(what, 0)
            self._write_failures[what] = n + 1
            if n == 0:
                log.error("%s not written: disk full (retrying quietly): %s", what, exc)
            return
        if self._write_failures.pop(what, 0):
            log.warning("%s written again: disk has space", what)

    def _forwarders_of(self, topic: str, partition: int) -> list[Forwarder]:
        out = []
        for up in self.uplinks:
            fw = up.forwarders.get((topic, partition))
            if fw is not None:
                out.append(fw)
        return out

    async def _trim_forwarded(self) -> None:
        """Give back what every uplink has delivered (and persisted)."""
        broker = self.broker
        assert broker is not None
        retention = self.config.local.local_retention_ms
        for topic in broker.topics.all():
            forwarding = [u for u in self.uplinks if u.cfg.forwards(topic.name)]
            if not forwarding:
                continue
            for part in topic.partitions:
                fws = self._forwarders_of(topic.name, part.partition)
                if len(fws) < len(forwarding):
                    continue
                point = min(fw.saved for fw in fws)
                start, end = await broker.engine.bounds(part.stream_id)
                point = min(point, end)
                if retention > 0 and point > start:
                    cutoff = int(time.time() * 1000) - retention
                    found = await broker.engine.offset_for_timestamp(part.stream_id, cutoff)
                    if found is not None:
                        point = min(point, found[0])
                if point > start:
                    await broker.engine.trim(part.stream_id, point)

    async def _enforce_budgets(self) -> None:
        """drop-oldest lanes over budget lose their oldest records (counted).
        The cut is placed inside a range where needed, at the record the
        budget calls for, estimated from the range's bytes per record."""
        broker = self.broker
        lanes = self.lanes
        assert broker is not None and lanes is not None
        for lane in lanes.by_name.values():
            if lane.cfg.when_full != "drop-oldest" or lane.limit <= 0:
                continue
            if lane.usage <= lane.limit:
                continue
            excess = lane.usage - int(lane.limit * 0.9)
            # (max timestamp, topic, partition, stream, live start, end, bytes per record)
            candidates: list[tuple[int, str, int, int, int, int, float]] = []
            for topic_name, partition, sid in lanes.streams_of(lane):
                start, end = await broker.engine.bounds(sid)
                for r in await broker.meta.load_ranges(sid, start):
                    lo, hi = max(start, r.start_offset), min(end, r.end_offset)
                    if hi > lo:
                        bpr = r.size / max(r.end_offset - r.start_offset, 1)
                        candidates.append(
                            (r.max_timestamp, topic_name, partition, sid, lo, hi, bpr)
                        )
            candidates.sort(key=lambda c: (c[0], c[4]))
            cut: dict[tuple[str, int, int], tuple[int, int]] = {}  # -> new start, bytes
            freed = 0
            next_of: dict[int, int] = {}
            for _ts, topic_name, partition, sid, lo, hi, bpr in candidates:
                if freed >= excess:
                    break
                if next_of.get(sid, lo) != lo:
                    continue  # only a prefix of a partition can go
                n = min(hi - lo, max(1, -(-(excess - freed) // max(int(bpr), 1))))
                next_of[sid] = lo + n
                k = (topic_name, partition, sid)
                cut[k] = (lo + n, cut.get(k, (0, 0))[1] + int(n * bpr))
                freed += int(n * bpr)
            for (topic_name, partition, sid), (new_start, nbytes) in cut.items():
                old_start, _ = await broker.engine.bounds(sid)
                await broker.engine.trim(sid, new_start)
                lost = 0
                for up in self.uplinks:
                    if not up.cfg.forwards(topic_name):
                        continue
                    fw = up.forwarders.get((topic_name, partition))
                    if fw is not None:
                        lost = max(lost, fw.trimmed(new_start))
                    else:
                        done = up.progress.get((up.cfg.name, topic_name, partition), 0)
                        lost = max(lost, new_start - max(old_start, done))
                if not any(up.cfg.forwards(topic_name) for up in self.uplinks):
                    lost = new_start - old_start
                span = max(new_start - old_start, 1)
                reason = "disk-budget" if lane.disk_cap is None else "low-disk"
                lane.count_drop(reason, lost, nbytes * min(lost, span) // span)
                log.warning(
                    "lane %s over its %d-byte %s: dropped %s-%d up to offset %d "
                    "(%d unsent records)",
                    lane.name,
                    lane.limit,
                    "budget" if lane.disk_cap is None else "share while disk space is low",
                    topic_name,
                    partition,
                    new_start,
                    lost,
                )
            lane.used_bytes -= freed

    # ingest over HTTP ----------------------------------------------------------

    async def _ingest_http(self, req: Request) -> Response:
        cfg = self.config.http
        assert cfg is not None and self.locallog is not None and self.lanes is not None
        if req.path == "/healthz":
            return Response(200, b"ok\n")
        if not req.path.startswith("/topics/"):
            return Response(404, b"POST /topics/<topic>\n")
        if req.method != "POST":
            return Response(405, b"use POST\n", headers={"Allow": "POST"})
        topic = req.path[len("/topics/") :]
        if cfg.topics and topic not in cfg.topics:
            return Response(404, f"topic {topic!r} is not open to HTTP ingest\n".encode())
        ctype = req.headers.get("content-type", "application/octet-stream").split(";")[0].strip()
        key_s = req.param("key") or req.headers.get("x-shoal-key")
        key = key_s.encode() if key_s is not None else None
        headers: list[tuple[str, bytes | None]] = [("content-type", ctype.encode())]
        for name, value in req.headers.items():
            if name.startswith("x-shoal-header-"):
                headers.append((name[len("x-shoal-header-") :], value.encode()))
        values: list[bytes] = []
        if ctype == "application/json":
            try:
                json.loads(req.body)
            except ValueError as exc:
                return Response(400, f"invalid JSON: {exc}\n".encode())
            values = [req.body]
        elif ctype == "application/x-ndjson":
            for i, line in enumerate(req.body.splitlines()):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except ValueError as exc:
                    return Response(400, f"line {i + 1}: invalid JSON: {exc}\n".encode())
                values.append(line)
        else:
            values = [req.body]
        if not values:
            return Response(400, b"no records in the body\n")
        lane = self.lanes.lane_of(topic)
        size = sum(len(v) for v in values)
        if not await lane.wait_room(size, cfg.block_timeout_ms / 1000):
            return Response(
                503, f"lane {lane.name} is full\n".encode(), headers={"Retry-After": "5"}
            )
        now = int(time.time() * 1000)
        try:
            futs = [self.locallog.submit(topic, now, key, v, headers) for v in values]
            await asyncio.gather(*futs)
        except IngestRejected as exc:
            return Response(503, f"{exc}\n".encode())
        except (StorageError, OSError) as exc:
            return Response(503, f"not stored: {exc}\n".encode())
        self.http_records += len(values)
        return Response(
            200, json.dumps({"records": len(values)}).encode() + b"\n", "application/json"
        )

    # status ------------------------------------------------------------------

    async def _admin_http(self, req: Request) -> Response:
        if req.path == "/status":
            await self.refresh_status()
            return Response(
                200,
                json.dumps(self.status_snapshot, indent=2).encode() + b"\n",
                "application/json",
            )
        if req.path == "/metrics":
            from shoal.edge.metrics import render

            body, ctype = render(self)
            return Response(200, body, ctype)
        if req.path == "/healthz":
            return Response(200, b"ok\n")
        return Response(404, b"GET /status, /metrics or /healthz\n")

    async def _oldest_unsent(self, fw: Forwarder) -> int | None:
        if fw.pending:
            return fw.pending[0].timestamp
        if fw.backlog_records <= 0:
            return None
        k = (fw.stream_id, fw.acked)
        if k in self._head_ts:
            return self._head_ts[k]
        ts = None
        assert self.broker is not None
        with contextlib.suppress(StorageError):
            res = await self.broker.engine.read(fw.stream_id, fw.acked, 1)
            if res.chunks:
                ts = read_header(res.chunks[0]).base_timestamp
        if len(self._head_ts) > 10_000:
            self._head_ts.clear()
        self._head_ts[k] = ts
        return ts

    def _rate(self, up: Uplink) -> tuple[float, float]:
        now = time.monotonic()
        samples = self._rates.setdefault(up.cfg.name, [])
        samples.append((now, up.sent_records, up.sent_bytes))
        while len(samples) > 2 and now - samples[0][0] > 10:
            samples.pop(0)
        t0, r0, b0 = samples[0]
        dt = now - t0
        if dt <= 0:
            return 0.0, 0.0
        return (up.sent_records - r0) / dt, (up.sent_bytes - b0) / dt

    async def refresh_status(self, final: bool = False) -> dict[str, Any]:
        cfg = self.config
        lanes = self.lanes
        if self.broker is not None and not final:
            for up in self.uplinks:
                await up.discover()
                for fw in up.forwarders.values():
                    # the forwarder only reads while its uplink is up
                    with contextlib.suppress(StorageError):
                        fw.start_offset, fw.end_offset = await self.broker.engine.bounds(
                            fw.stream_id
                        )
        now = time.time()
        now_ms = int(now * 1000)
        lane_rows = []
        if lanes is not None:
            for lane in sorted(lanes.by_name.values(), key=lambda x: (x.cfg.priority, x.name)):
                per_up: dict[str, Any] = {}
                for up in self.uplinks:
                    recs = 0
                    nbytes = 0
                    oldest: int | None = None
                    for fw in up.forwarders.values():
                        if fw.lane is not lane:
                            continue
                        n = fw.backlog_records
                        recs += n
                        total = max(fw.end_offset - fw.start_offset, 1)
                        nbytes += lanes.stream_bytes.get(fw.stream_id, 0) * min(n, total) // total
                        ts = None if final else await self._oldest_unsent(fw)
                        if ts is not None and (oldest is None or ts < oldest):
                            oldest = ts
                    per_up[up.cfg.name] = {
                        "backlog_records": recs,
                        "backlog_bytes": nbytes,
                        "oldest_unsent_age_s": (
                            round(max(0, now_ms - oldest) / 1000, 3) if oldest else 0.0
                        ),
                    }
                lane_rows.append(
                    {
                        "name": lane.name,
                        "priority": lane.cfg.priority,
                        "topics": sorted(
                            {t for t, _p, _s in lanes.streams_of(lane)} | set(lane.cfg.topics)
                        ),
                        "ttl_ms": lane.cfg.ttl_ms,
                        "when_full": lane.cfg.when_full,
                        "disk_used_bytes": lane.usage,
                        "disk_budget_bytes": lane.budget,
                        "blocked": lane.blocked,
                        "disk_capped": lane.disk_cap is not None,
                        "blocked_seconds": round(lane.blocked_total_s, 3),
                        "drops": {
                            reason: {"records": v[0], "bytes": v[1]}
                            for reason, v in sorted(lane.drops.items())
                        },
                        "uplinks": per_up,
                    }
                )
        up_rows = []
        for up in self.uplinks:
            rrate, brate = self._rate(up)
            up_rows.append(
                {
                    "name": up.cfg.name,
                    "bootstrap": up.cfg.bootstrap,
                    "state": "stopped" if final else up.current_state(),
                    "down": False if final else up.down,
                    "last_success_age_s": (
                        round(now - up.last_success_wall, 3) if up.last_success_wall else None
                    ),
                    "rate_records_per_s": round(rrate, 1),
                    "rate_bytes_per_s": round(brate, 1),
                    "sent_records": up.sent_records,
                    "sent_bytes": up.sent_bytes,
                    "inflight_records": up.inflight_records,
                    "reconnects": up.reconnects,
                    "failures": up.failures,
                    "retry_in_s": (
                        round(max(0.0, up.retry_at - now), 3) if up.state == "backoff" else None
                    ),
                    "last_error": up.last_error,
                    "last_error_kind": up.last_error_kind,
                    "mode": "exactly-once" if up.eos else "at-least-once",
                    "transactions": (
                        {
                            "transactional_id": up.cfg.transactional_id,
                            "offsets_topic": up.cfg.offsets_topic,
                            "positions_loaded": up.positions_loaded,
                            "open": up.txn_open,
                            "records_in_open": up.txn_records,
                            "committed": up.txn.committed,
                            "aborted": up.txn.aborted,
                            "init_timeouts": up.txn.init_timeouts,
                            "last_abort_reason": up.txn.last_abort_reason,
                            "commit_latency_ms_p50": up.txn.percentile(0.5),
                            "commit_latency_ms_p99": up.txn.percentile(0.99),
                            "commit_seconds_total": round(up.txn.latency_sum_s, 3),
                        }
                        if up.eos
                        else None
                    ),
                    "partitions": [
                        {
                            "topic": fw.topic,
                            "partition": fw.partition,
                            "central_topic": fw.central_topic,
                            "acked": fw.acked,
                            "end": fw.end_offset,
                            "backlog_records": fw.backlog_records,
                            "error": fw.error,
                            "error_kind": fw.error_kind,
                        }
                        for fw in sorted(up.forwarders.values(), key=lambda f: f.key)
                    ],
                }
            )
        mq = self.mqtt
        self.status_snapshot = {
            "site": cfg.site,
            "pid": os.getpid(),
            "time": now,
            "uptime_s": round(now - self.started, 1),
            "running": not final,
            "local": {
                "listen": cfg.local.listen,
                "disk_low": self.disk_low,
                "disk_low_events": self.disk_low_events,
                "free_bytes": dict(self.broker.engine.disk.free) if self.broker else {},
                "min_free_bytes": cfg.local.min_free_bytes,
                "records_in": self.locallog.records_in if self.locallog else 0,
                "disk_used_bytes": self.disk_used_bytes,
                "kafka_produce_requests": self.kafka_produce_requests,
                "http_records": self.http_records,
            },
            "integrity": self.integrity.as_dict() if self.integrity else None,
            "mqtt": (
                {
                    "connected": mq.connected,
                    "received": mq.received,
                    "acked": mq.acked,
                    "pending_acks": mq.pending_acks,
                    "unrouted": mq.unrouted,
                    "oversize": mq.oversize,
                    "read_pauses": mq.pauses,
                    "connects": mq.connects,
                    "last_error": mq.last_error,
                }
                if mq is not None
                else None
            ),
            "lanes": lane_rows,
            "uplinks": up_rows,
        }
        return self.status_snapshot

    def _write_status_file(self) -> None:
        path = self.config.status_path
        # One temporary file per writing thread: start() and housekeeping may
        # write at once, and a shared name let one os.replace lose the file
        # the other renamed (ENOENT: "cannot start" under load).
        tmp = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(self.status_snapshot, indent=2))
        os.replace(tmp, path)


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(root) / f).stat().st_size
    return total


async def run_gateway(config: EdgeConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM; print one ready line like `shoal serve`."""
    gw = Gateway(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gw.start()
        rep = gw.integrity
        print(
            f"shoal edge: ready, site {config.site}, kafka on {config.local.listen}"
            + (f", admin on {config.admin.listen}" if config.admin.listen else "")
            + (
                f", integrity: {len(rep.findings)} findings, {rep.records_lost} records lost"
                if rep is not None and rep.findings
                else ", integrity: ok"
            ),
            flush=True,
        )
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await gw.stop()
        flush_summaries()  # what the rate limiter held back, as `shoal serve` does
