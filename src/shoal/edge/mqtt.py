"""MQTT ingest: subscribe to the configured filters and append every message
to the local log; acknowledge QoS 1 only once the record is durable.

Why paho-mqtt and not aiomqtt: acknowledging after the local commit needs
manual acknowledgements. paho-mqtt 2 has them (`manual_ack=True`, `ack()`);
aiomqtt 2.x, which wraps paho, does not expose them (aiomqtt issue 345), and
reaching into its private client would break on any release. So the gateway
drives paho directly on the asyncio loop, as aiomqtt does internally: the
socket is watched with add_reader/add_writer and nothing blocks the loop
(connect and TLS set-up, which may block, run in a worker thread).

The session is persistent (clean start off, a session expiry interval), so
messages published while the gateway is down or restarting are kept by the
MQTT broker and delivered on reconnect; anything delivered but not yet
acknowledged is delivered again (at least once). PUBACKs go out in the order
the PUBLISH packets arrived, as MQTT requires.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from shoal.edge.config import MqttConfig, Route
from shoal.edge.locallog import IngestRejected, LocalLog
from shoal.edge.pacing import Backoff
from shoal.protocol.batches import Header

log = logging.getLogger("shoal.edge.mqtt")


def route_for(routes: tuple[Route, ...], topic: str) -> Route | None:
    for r in routes:
        if paho.topic_matches_sub(r.filter, topic):
            return r
    return None


def record_of(msg: paho.MQTTMessage, topic: str, route: Route) -> tuple[bytes | None, list[Header]]:
    """Key and headers of the record for one MQTT message: the device id from
    the configured topic level, the MQTT topic, the MQTT 5 user properties (and
    content type), and a flag on redeliveries so they can be told apart."""
    key: bytes | None = None
    if route.key_level >= 0:
        levels = topic.split("/")
        if route.key_level < len(levels):
            key = levels[route.key_level].encode()
    headers: list[Header] = [("mqtt.topic", topic.encode())]
    props = getattr(msg, "properties", None)
    if props is not None:
        ct = getattr(props, "ContentType", None)
        if ct:
            headers.append(("content-type", str(ct).encode()))
        for name, value in getattr(props, "UserProperty", None) or ():
            headers.append((str(name), str(value).encode()))
    if msg.dup:
        headers.append(("mqtt.dup", b"1"))
    if msg.retain:
        headers.append(("mqtt.retain", b"1"))
    return key, headers


class MqttIngest:
    def __init__(self, cfg: MqttConfig, locallog: LocalLog) -> None:
        self.cfg = cfg
        self.log = locallog
        self.connected = False
        self.received = 0
        self.acked = 0
        self.unrouted = 0
        self.oversize = 0  # payloads over max_payload_bytes: acknowledged, counted, not stored
        self.failed = 0
        self.connects = 0
        self.last_error: str | None = None
        self._acks: collections.deque[tuple[int, int, asyncio.Future[None] | None]] = (
            collections.deque()
        )
        self._client: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._disconnected: asyncio.Event = asyncio.Event()
        self._route_cache: dict[str, Route | None] = {}
        self._stopping = False
        self._now_ms = 0
        self._paused: tuple[paho.Client, Any] | None = None
        self.pauses = 0

    @property
    def pending_acks(self) -> int:
        return len(self._acks)

    async def run(self) -> None:
        """Connect, and reconnect with backoff (full jitter) until cancelled."""
        self._loop = asyncio.get_running_loop()
        backoff = Backoff(self.cfg.reconnect_initial_ms, self.cfg.reconnect_max_ms)
        while not self._stopping:
            try:
                await self._session()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("MQTT %s:%d: %s", self.cfg.host, self.cfg.port, self.last_error)
            finally:
                self._teardown()
            if self._stopping:
                return
            await asyncio.sleep(backoff.next_delay())

    def _make_client(self) -> paho.Client:
        v5 = self.cfg.protocol == "5"
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.cfg.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else self.cfg.clean_start,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        if self.cfg.username is not None:
            client.username_pw_set(self.cfg.username, self.cfg.password)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        client = self._make_client()
        self._client = client
        self._disconnected = asyncio.Event()
        self._connack: asyncio.Future[None] = loop.create_future()
        if self.cfg.tls:
            await asyncio.to_thread(
                client.tls_set,
                ca_certs=self.cfg.ca_file,
                certfile=self.cfg.cert_file,
                keyfile=self.cfg.key_file,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            if self.cfg.tls_insecure:
                client.tls_insecure_set(True)
        kwargs: dict[str, Any] = {}
        if self.cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            props.ReceiveMaximum = self.cfg.receive_maximum
            # The broker then never sends us more than this (topic, properties
            # and payload); our own check below counts what gets through.
            props.MaximumPacketSize = self.cfg.max_payload_bytes + 64 * 1024
            kwargs["properties"] = props
            kwargs["clean_start"] = self.cfg.clean_start
        # connect() resolves and opens a TCP socket: blocking, so off the loop
        await asyncio.to_thread(
            client.connect, self.cfg.host, self.cfg.port, self.cfg.keepalive_s, **kwargs
        )
        misc = asyncio.create_task(self._misc_loop(client))
        try:
            await asyncio.wait_for(asyncio.shield(self._connack), timeout=30)
            await self._disconnected.wait()
        finally:
            misc.cancel()
        raise ConnectionError(self.last_error or "disconnected")

    async def _misc_loop(self, client: paho.Client) -> None:
        """Keep-alive pings and retries, as paho's own loop would do."""
        while True:
            await asyncio.sleep(1)
            if client.loop_misc() != paho.MQTT_ERR_SUCCESS:
                self._disconnected.set()
                return

    def _teardown(self) -> None:
        self.connected = False
        self._paused = None
        client = self._client
        self._client = None
        if client is not None:
            sock = client.socket()
            if sock is not None and self._loop is not None:
                self._unwatch(sock)
            try:
                client.disconnect()
            except Exception:
                pass
        # Messages delivered but not acknowledged are the broker's to send again.
        self._acks.clear()

    async def stop(self) -> None:
        """Stop taking messages; those not yet acknowledged stay with the broker."""
        self._stopping = True
        if self._client is not None:
            self._client.disconnect()
        self._disconnected.set()

    # paho callbacks (all on the event loop, except socket open during connect)

    def _on_socket_open(self, client: paho.Client, _ud: Any, sock: Any) -> None:
        assert self._loop is not None
        loop = self._loop

        def watch() -> None:
            loop.add_reader(sock, self._readable, client)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            watch()
        else:
            loop.call_soon_threadsafe(watch)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _unwatch(self, sock: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        except (ValueError, OSError):
            pass

    def _on_socket_close(self, _client: paho.Client, _ud: Any, sock: Any) -> None:
        if self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._unwatch(sock)
        else:
            self._loop.call_soon_threadsafe(self._unwatch, sock)

    def _on_register_write(self, client: paho.Client, _ud: Any, sock: Any) -> None:
        assert self._loop is not None
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.add_writer(sock, self._writable, client)
        else:
            loop.call_soon_threadsafe(loop.add_writer, sock, self._writable, client)

    def _on_unregister_write(self, _client: paho.Client, _ud: Any, sock: Any) -> None:
        assert self._loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._loop.remove_writer(sock)
        else:
            self._loop.call_soon_threadsafe(self._loop.remove_writer, sock)

    def _readable(self, client: paho.Client) -> None:
        # paho reads one packet per call: keep reading while messages come in,
        # so one wake-up of the loop drains what the socket holds.
        self._now_ms = int(time.time() * 1000)
        if len(self._acks) >= self.cfg.receive_maximum:
            self._pause(client)
            return
        for _ in range(256):
            before = self.received
            rc = client.loop_read()
            if rc != paho.MQTT_ERR_SUCCESS:
                self._disconnected.set()
                return
            if self.received == before:
                return
            if len(self._acks) >= self.cfg.receive_maximum:
                self._pause(client)
                return

    def _pause(self, client: paho.Client) -> None:
        """Too many messages wait for their local commit: stop reading the
        socket, so TCP pushes back on the broker. Memory is bounded by
        receive_maximum even with a broker that ignores MQTT 5's Receive
        Maximum (or with MQTT 3.1.1, which has none)."""
        sock = client.socket()
        if sock is None or self._loop is None or self._paused is not None:
            return
        self._loop.remove_reader(sock)
        self._paused = (client, sock)
        self.pauses += 1

    def _resume(self) -> None:
        if self._paused is None or self._loop is None:
            return
        client, sock = self._paused
        self._paused = None
        current: Any = client.socket()
        if client is self._client and current is sock:
            self._loop.add_reader(current, self._readable, client)
            self._loop.call_soon(self._readable, client)

    def _writable(self, client: paho.Client) -> None:
        if client.loop_write() != paho.MQTT_ERR_SUCCESS:
            self._disconnected.set()

    def _on_connect(
        self, client: paho.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if getattr(reason, "is_failure", False):
            self.last_error = f"connection refused: {reason}"
            if not self._connack.done():
                self._connack.set_exception(ConnectionError(self.last_error))
            self._disconnected.set()
            return
        self.connects += 1
        self.last_error = None
        log.info("MQTT connected to %s:%d as %s", self.cfg.host, self.cfg.port, self.cfg.client_id)
        client.subscribe([(r.filter, r.qos) for r in self.cfg.routes])
        if not self._connack.done():
            self._connack.set_result(None)

    def _on_subscribe(
        self, _client: paho.Client, _ud: Any, _mid: Any, reasons: Any, _props: Any
    ) -> None:
        """ "Connected" in status means ingest is live: the broker has
        acknowledged the subscriptions, not merely the connection."""
        failed = [r for r in reasons or () if getattr(r, "is_failure", False)]
        if failed:
            self.last_error = f"subscription refused: {failed}"
            log.warning(
                "MQTT subscription refused by %s:%d: %s", self.cfg.host, self.cfg.port, failed
            )
            return
        self.connected = True

    def _on_disconnect(
        self, _client: paho.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self.connected = False
        if not self._stopping:
            self.last_error = f"disconnected: {reason}"
        self._disconnected.set()

    def _on_message(self, client: paho.Client, _ud: Any, msg: paho.MQTTMessage) -> None:
        self.received += 1
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = None
        route = None
        if topic is not None:
            route = self._route_cache.get(topic)
            if route is None and topic not in self._route_cache:
                if len(self._route_cache) > 100_000:
                    self._route_cache.clear()
                route = self._route_cache[topic] = route_for(self.cfg.routes, topic)
        if route is None or topic is None:
            # Nothing maps it: acknowledge, or the broker would resend it forever.
            self.unrouted += 1
            self._acks.append((msg.mid, msg.qos, None))
            self._drain_acks()
            return
        if len(msg.payload) > self.cfg.max_payload_bytes:
            # Stored, it would be a record no uplink can forward: count it,
            # say so (rate-limited), and acknowledge so it is not resent forever.
            self.oversize += 1
            log.warning(
                "MQTT message on %s dropped: %d-byte payload exceeds mqtt.max_payload_bytes=%d",
                topic,
                len(msg.payload),
                self.cfg.max_payload_bytes,
            )
            self._acks.append((msg.mid, msg.qos, None))
            self._drain_acks()
            return
        key, headers = record_of(msg, topic, route)
        try:
            fut = self.log.submit(
                route.topic,
                self._now_ms or int(time.time() * 1000),
                key,
                bytes(msg.payload),
                headers,
            )
        except IngestRejected:
            self._disconnected.set()  # stopping: leave it with the broker
            return
        self._acks.append((msg.mid, msg.qos, fut))
        fut.add_done_callback(self._on_durable)

    def _on_durable(self, _fut: asyncio.Future[None]) -> None:
        self._drain_acks()

    def _drain_acks(self) -> None:
        client = self._client
        acks = self._acks
        while acks:
            mid, qos, fut = acks[0]
            if fut is not None:
                if not fut.done():
                    return
                if fut.cancelled() or fut.exception() is not None:
                    # Not durable: never acknowledge. Reconnecting makes the
                    # broker deliver it (and everything after it) again.
                    self.failed += 1
                    self.last_error = f"local append failed: {fut.exception()!r}"
                    acks.clear()
                    self._disconnected.set()
                    return
            acks.popleft()
            if qos > 0 and client is not None:
                client.ack(mid, qos)
                self.acked += 1
        if self._paused is not None and len(acks) < self.cfg.receive_maximum // 2:
            self._resume()
