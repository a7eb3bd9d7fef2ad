"""The gateway's ingest and admin endpoints over HTTP, served by aiohttp (the
framework the console uses): aiohttp parses HTTP; this module adds the
limits a gateway on a plant network needs and keeps the gateway's handlers
free of aiohttp (they take a `Request` and return a `Response`).

aiohttp's low-level server (`aiohttp.web.Server`) is used rather than an
`Application`: the gateway's two handlers do their own routing, with
answers that name the routes they offer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("shoal.edge.http")

MAX_HEADER_BYTES = 16 * 1024


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    keep_alive: bool = False

    def param(self, name: str) -> str | None:
        v = self.query.get(name)
        return v[0] if v else None


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


class _Connection(RequestHandler):
    """aiohttp's per-connection protocol, plus a deadline for receiving a
    whole request: aiohttp closes idle connections (its keep-alive timeout)
    but not one that sends half a request and stalls."""

    def __init__(self, manager: _Server, **kw: Any) -> None:
        super().__init__(manager, **kw)
        self.shoal_timeout = manager.request_timeout
        self.shoal_watch: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self.shoal_watch is None and data:
            self.shoal_watch = self._loop.call_later(self.shoal_timeout, self._stalled)
        super().data_received(data)

    def received(self) -> None:
        """The handler has the whole request: its deadline is met."""
        if self.shoal_watch is not None:
            self.shoal_watch.cancel()
            self.shoal_watch = None

    def _stalled(self) -> None:
        self.shoal_watch = None
        t = self.transport
        peer = t.get_extra_info("peername") if t is not None else None
        log.info("closing HTTP connection from %s: request not received in time", _peer(peer))
        self.force_close()
        if t is not None:
            t.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.received()
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp reports a request it cannot parse with a traceback; a bad
        client is one line here."""
        exc = kw.get("exc_info")
        log.info("bad HTTP request: %s", str(exc).replace("\n", " ") if exc else args)


class _Server(web.Server):
    """Caps the connections open at once."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        request_timeout: float,
        max_connections: int,
        **kw: Any,
    ) -> None:
        super().__init__(handler, **kw)
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.refused = 0

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if len(self._connections) >= self.max_connections:
            self.refused += 1
            log.warning(
                "refusing HTTP connection from %s: %d connections open",
                _peer(transport.get_extra_info("peername")),
                len(self._connections),
            )
            transport.abort()
            return
        super().connection_made(handler, transport)


class HttpServer:
    """Limits against slow or hostile clients: `max_body` per request (413
    before reading it), `request_timeout` to receive a whole request
    (request line, headers and body: a client that stalls half-way is
    closed), `idle_timeout` between keep-alive requests, and at most
    `max_connections` at once. Chunked request bodies are refused (411):
    clients send a Content-Length."""

    def __init__(
        self,
        handler: Handler,
        max_body: int = 1024 * 1024,
        *,
        request_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        max_connections: int = 1024,
    ) -> None:
        self.handler = handler
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._web: _Server | None = None
        self._server: asyncio.Server | None = None

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._web = _Server(
            self._serve,
            request_timeout=self.request_timeout,
            max_connections=self.max_connections,
            keepalive_timeout=self.idle_timeout,
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            access_log=None,
            lingering_time=0,  # an unread body is not drained: the answer closes
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._web, host, int(port), reuse_address=True)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def refused(self) -> int:
        """Connections refused because `max_connections` were open."""
        return self._web.refused if self._web is not None else 0

    @property
    def open_connections(self) -> int:
        return len(self._web.connections) if self._web is not None else 0

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._web is not None:
            await self._web.shutdown(1.0)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, req: web.BaseRequest) -> web.StreamResponse:
        conn = req.protocol
        keep = req.keep_alive
        early = self._refuse(req)
        if early is not None:
            if isinstance(conn, _Connection):
                conn.received()
            return _answer(early, keep=False)
        try:
            async with asyncio.timeout(self.request_timeout):
                body = await req.read()
        except (TimeoutError, ConnectionError) as exc:  # the deadline closed it, or the client
            log.info("HTTP %s %s: body not received: %r", req.method, req.path, exc)
            return _answer(Response(408, b"request not received in time\n"), keep=False)
        if isinstance(conn, _Connection):
            conn.received()
        request = Request(
            req.method.upper(),
            req.path,
            parse_qs(req.query_string),
            {k.lower(): v for k, v in req.headers.items()},
            body,
            keep,
        )
        try:
            resp = await self.handler(request)
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            resp = Response(500, b"internal error\n")
        return _answer(resp, keep=keep)

    def _refuse(self, req: web.BaseRequest) -> Response | None:
        """An answer given without reading the body, which closes the
        connection (the unread body cannot be skipped safely)."""
        if "Transfer-Encoding" in req.headers:
            return Response(411, b"send a Content-Length\n")
        n = req.content_length
        if n is not None and n > self.max_body:
            return Response(413, f"body over {self.max_body} bytes\n".encode())
        return None


def _answer(resp: Response, *, keep: bool) -> web.Response:
    out = web.Response(
        status=resp.status,
        body=resp.body,
        headers={
            "Content-Type": resp.content_type,
            "Connection": "keep-alive" if keep else "close",
            **resp.headers,
        },
    )
    if not keep:
        out.force_close()
    return out


def _peer(peer: object) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
