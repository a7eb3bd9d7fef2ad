"""A Kafka listener: accept connections within the broker's resource limits.

Every limit here exists because one hostile or broken client must not be able
to take memory, sockets or log space from the others (Kafka's names):
`max.connections`, `max.connections.per.ip` (with overrides), the idle timeout
`connections.max.idle.ms`, and `queued.max.request.bytes`, one memory budget
for the request bytes being read or handled across every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shoal.broker.frame_stream import FrameStream
from shoal.broker.tls_accept import OnFailure, TlsAccept
from shoal.broker.tls_stream import TlsStream
from shoal.config import BrokerConfig, parse_ip_overrides
from shoal.logs import sweep_summaries

if TYPE_CHECKING:
    from shoal.broker.broker import Broker
    from shoal.broker.connection import Connection
    from shoal.broker.handlers import Handler

log = logging.getLogger("shoal.listener")

HANDSHAKE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    max_connections: int
    max_connections_per_ip: int
    per_ip_overrides: dict[str, int]
    idle_ms: int
    max_frame: int
    pre_auth_max_frame: int
    max_inflight: int
    queued_max_request_bytes: int  # -1: unbounded

    @classmethod
    def from_config(cls, config: BrokerConfig) -> ListenerLimits:
        return cls(
            max_connections=int(config["max.connections"]),
            max_connections_per_ip=int(config["max.connections.per.ip"]),
            per_ip_overrides=parse_ip_overrides(str(config["max.connections.per.ip.overrides"])),
            idle_ms=int(config["connections.max.idle.ms"]),
            max_frame=int(config["socket.request.max.bytes"]),
            pre_auth_max_frame=int(config["sasl.server.max.receive.size"]),
            max_inflight=int(config["connection.max.inflight.requests"]),
            queued_max_request_bytes=int(config["queued.max.request.bytes"]),
        )


class RequestBudget:
    """queued.max.request.bytes: bytes of requests being read or handled,
    across every connection. Readers wait for room instead of growing, so a
    crowd of clients announcing large frames cannot exhaust memory.

    Bytes are taken as they arrive (not as announced), so clients that trickle
    large frames hold only what they actually sent. Frames read in chunks
    (large ones) may fill the budget only up to `limit - reserve`: the reserve
    keeps small requests (metadata, heartbeats, a device's small produce)
    moving while large frames from stalled or hostile clients hold the rest.
    """

    def __init__(self, limit: int, max_frame: int = 0) -> None:
        self.limit = limit
        self.reserve = max(0, min(limit // 4, limit - max_frame)) if limit > 0 else 0
        self.in_use = 0
        self.large_in_use = 0
        self.peak = 0
        self._small: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._large: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def bounded(self) -> bool:
        return self.limit > 0

    def _fits(self, n: int, large: bool) -> bool:
        if large:
            return (
                self.in_use + n <= self.limit and self.large_in_use + n <= self.limit - self.reserve
            )
        return self.in_use + n <= self.limit

    async def acquire(self, n: int, large: bool = False) -> None:
        if not self.bounded:
            return
        queue = self._large if large else self._small
        if not queue and self._fits(n, large):
            self._take(n, large)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        queue.append(entry)
        try:
            await fut
        except BaseException:
            if entry in queue:
                queue.remove(entry)
            elif fut.done() and not fut.cancelled():
                self.release(n, large)  # granted while we were being cancelled
            raise

    def release(self, n: int, large: bool = False) -> None:
        if not self.bounded or n <= 0:
            return
        self.in_use -= n
        if large:
            self.large_in_use -= n
        # Small requests first (they are what the reserve is for), each queue
        # first come, first served.
        for queue, is_large in ((self._small, False), (self._large, True)):
            while queue:
                size, fut = queue[0]
                if fut.done():
                    queue.popleft()
                    continue
                if not self._fits(size, is_large):
                    break
                queue.popleft()
                self._take(size, is_large)
                fut.set_result(None)

    def _take(self, n: int, large: bool) -> None:
        self.in_use += n
        if large:
            self.large_in_use += n
        self.peak = max(self.peak, self.in_use)


class ConnectionLimiter:
    """max.connections and max.connections.per.ip, shared by a broker's listeners."""

    def __init__(self, limits: ListenerLimits) -> None:
        self.limits = limits
        self.total = 0
        self.per_ip: Counter[str] = Counter()
        self.refused = 0

    def admit(self, ip: str) -> str | None:
        """Count a new connection, or say why it is refused."""
        if self.total >= self.limits.max_connections:
            self.refused += 1
            return f"max.connections={self.limits.max_connections} reached"
        cap = self.limits.per_ip_overrides.get(ip, self.limits.max_connections_per_ip)
        if self.per_ip[ip] >= cap:
            self.refused += 1
            return f"max.connections.per.ip={cap} reached for {ip}"
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]


class KafkaListener:
    """One listening socket speaking the Kafka protocol. The broker and the
    edge gateway's local listener both run through this."""

    def __init__(
        self,
        broker: Broker,
        handlers: dict[int, Handler],
        *,
        limits: ListenerLimits,
        budget: RequestBudget,
        limiter: ConnectionLimiter,
        name: str = "PLAINTEXT",
        on_connection: Callable[[Connection], None] | None = None,
        on_tls_failure: OnFailure | None = None,
    ) -> None:
        self.broker = broker
        self.handlers = handlers
        self.limits = limits
        self.budget = budget
        self.limiter = limiter
        self.name = name
        self.on_connection = on_connection
        self.on_tls_failure = on_tls_failure or self._tls_failed
        self.connections: dict[Connection, asyncio.Task[None]] = {}
        self.server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        ssl_engine: str = "loop",
    ) -> None:
        """Listen. TLS runs in the worker pool (`ssl_engine="threaded"`,
        tls_stream.py) or on the event loop in uvloop's TLS ("loop")."""
        loop = asyncio.get_running_loop()
        # A client that opens a TLS port and sends nothing would hold a
        # socket for asyncio's default 60 s, unseen by the idle sweeper.
        handshake_s = min(self.limits.idle_ms / 1000, HANDSHAKE_TIMEOUT_S)
        factory: Callable[[], asyncio.BaseProtocol]
        if ssl_context is None:
            factory = functools.partial(FrameStream, self._on_connect)
        elif ssl_engine == "threaded":
            factory = functools.partial(
                TlsStream,
                self._on_connect,
                ssl_context,
                handshake_timeout=handshake_s,
                listener=self.name,
                on_failure=self.on_tls_failure,
            )
        else:
            # The handshake through TlsAccept, not create_server(ssl=...),
            # which drops a failed one without a log line.
            factory = functools.partial(
                TlsAccept,
                self._on_connect,
                ssl_context,
                handshake_s,
                self.on_tls_failure,
                self.name,
            )
        self.server = await loop.create_server(
            factory, host, port, backlog=1024, reuse_address=True
        )
        self._sweeper = asyncio.create_task(self._sweep_idle(), name=f"idle-sweeper-{self.name}")

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def _tls_failed(self, peer: str, reason: str) -> None:
        log.info("TLS handshake from %s on %s failed: %s", peer, self.name, reason)

    async def _on_connect(self, stream: FrameStream | TlsStream) -> None:
        from shoal.broker.connection import Connection

        peer = stream.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        refused = self.limiter.admit(ip)
        if refused is not None:
            log.warning("refusing connection from %s on %s: %s", ip, self.name, refused)
            stream.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        conn = Connection(
            self.broker, self.handlers, stream, limits=self.limits, budget=self.budget
        )
        self.connections[conn] = task
        if self.on_connection is not None:
            self.on_connection(conn)
        try:
            await conn.run()
        finally:
            self.connections.pop(conn, None)
            self.limiter.release(ip)

    async def _sweep_idle(self) -> None:
        """Close connections idle for connections.max.idle.ms: no request in
        flight and no frame completed (a client that sent part of a frame and
        stalled is idle too), or a response it does not read."""
        idle_s = self.limits.idle_ms / 1000
        period = min(max(idle_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            sweep_summaries()
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.idle_for(now) > idle_s:
                    log.info(
                        "closing connection from %s: idle for over connections.max.idle.ms=%d",
                        conn.client,
                        self.limits.idle_ms,
                    )
                    conn.abort()

    async def stop_accepting(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self.server is not None:
            self.server.close()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting and end every connection the way a client disconnect
        does; in-flight produce requests still get committed by the caller."""
        await self.stop_accepting()
        for conn in list(self.connections):
            conn.abort()
        if self.connections:
            await asyncio.wait(list(self.connections.values()), timeout=timeout)
        if self.server is not None:
            await self.server.wait_closed()
