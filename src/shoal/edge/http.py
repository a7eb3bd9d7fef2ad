"""A small HTTP/1.1 server on asyncio streams, for the gateway's ingest and
admin endpoints.

The standard library has no asyncio HTTP server and aiohttp is not among the
project's dependencies; what the gateway needs (a handful of routes, request
bodies with Content-Length, keep-alive) fits in this module, so no new
dependency is taken for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("shoal.edge.http")

MAX_HEADER_BYTES = 16 * 1024
REASONS = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


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


class HttpServer:
    """Limits against slow or hostile clients: `max_body` per request,
    `request_timeout` to receive a whole request (request line, headers and
    body: a client that stalls half-way is closed), `idle_timeout` between
    keep-alive requests, and at most `max_connections` at once."""

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
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._server = await asyncio.start_server(
            self._serve, host, int(port), reuse_address=True, limit=MAX_HEADER_BYTES
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._conns) >= self.max_connections:
            self.refused += 1
            log.warning(
                "refusing HTTP connection from %s: %d connections open",
                _peer(writer),
                len(self._conns),
            )
            writer.transport.abort()
            return
        self._conns.add(task)
        try:
            while True:
                keep = await self._one(reader, writer)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ValueError:
            pass  # a line over the limit
        except TimeoutError:
            log.info("closing HTTP connection from %s: request not received in time", _peer(writer))
        finally:
            self._conns.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        async with asyncio.timeout(self.idle_timeout):
            line = await reader.readline()
        if not line:
            return False
        async with asyncio.timeout(self.request_timeout):
            req = await self._read_request(line, reader, writer)
        if req is None:
            return False
        try:
            resp = await self.handler(req)
        except Exception:
            log.exception("HTTP %s %s failed", req.method, req.path)
            resp = Response(500, b"internal error\n")
        keep = req.keep_alive
        async with asyncio.timeout(self.request_timeout):  # a client that does not read
            await self._write(writer, resp, keep)
        return keep

    async def _read_request(
        self, line: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Request | None:
        """The rest of one request, or None when it was answered with an error."""
        try:
            method, target, version = line.decode("latin-1").strip().split(" ", 2)
        except ValueError:
            await self._write(writer, Response(400, b"bad request line\n"), False)
            return None
        headers: dict[str, str] = {}
        size = 0
        while True:
            h = await reader.readline()
            size += len(h)
            if size > MAX_HEADER_BYTES:
                await self._write(writer, Response(400, b"headers too large\n"), False)
                return None
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        body = b""
        if "transfer-encoding" in headers:
            await self._write(writer, Response(411, b"send a Content-Length\n"), False)
            return None
        length = headers.get("content-length")
        if length is not None:
            n = int(length) if length.isdigit() else -1
            if n < 0:
                await self._write(writer, Response(400, b"bad Content-Length\n"), False)
                return None
            if n > self.max_body:
                await self._write(
                    writer, Response(413, f"body over {self.max_body} bytes\n".encode()), False
                )
                return None
            body = await reader.readexactly(n)
        parts = urlsplit(target)
        return Request(
            method.upper(), unquote(parts.path), parse_qs(parts.query), headers, body, keep
        )

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, resp: Response, keep: bool) -> None:
        head = [
            f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Unknown')}",
            f"Content-Type: {resp.content_type}",
            f"Content-Length: {len(resp.body)}",
            f"Connection: {'keep-alive' if keep else 'close'}",
            *(f"{k}: {v}" for k, v in resp.headers.items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body)
        await writer.drain()


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
