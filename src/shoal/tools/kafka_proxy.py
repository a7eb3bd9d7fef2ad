"""A Kafka-aware TCP proxy that can cut every connection on demand.

Why Kafka-aware: clients bootstrap once, then connect to the addresses the
cluster advertises in Metadata and FindCoordinator responses. A plain TCP proxy
would only carry the bootstrap connection, and a cut would never reach the
producer's real connection. This proxy rewrites those addresses to listeners of
its own (one per broker, opened on demand), so all traffic of a client that
bootstraps through it flows through it, against any cluster, unmodified.

It runs its own event loop in a daemon thread, so synchronous code (the
scorecard, librdkafka clients) can use it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import struct
import threading
from typing import Any

from kio.index import load_response_schema
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i32

from shoal.protocol.headers import skip_tagged_fields

__all__ = ["KafkaProxy"]

_METADATA = 3
_FIND_COORDINATOR = 10
_API_VERSIONS = 18
_MAX_FRAME = 200 * 1024 * 1024


class KafkaProxy:
    """Proxy for the cluster at `bootstrap`; clients use `address` instead."""

    def __init__(self, bootstrap: str, host: str = "127.0.0.1") -> None:
        thost, _, tport = bootstrap.rpartition(":")
        self.bootstrap_target = (thost, int(tport))
        self.host = host
        self.connections = 0
        self.cuts = 0
        self.rewrites = 0
        self._listeners: dict[tuple[str, int], int] = {}
        self._servers: list[asyncio.Server] = []
        self._transports: set[asyncio.WriteTransport] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 10.0) -> KafkaProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._listen(self.bootstrap_target), self._loop)
        self.port = fut.result(timeout_s)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        async def close() -> None:
            for s in self._servers:
                s.close()
            for t in list(self._transports):
                t.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout_s)

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout_s)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout_s)

    def __enter__(self) -> KafkaProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cut(self) -> int:
        """Abort every open connection, both sides; returns how many were cut."""

        async def abort() -> int:
            n = len(self._transports)
            for t in list(self._transports):
                t.abort()
            self._transports.clear()
            return n

        n = asyncio.run_coroutine_threadsafe(abort(), self._loop).result(5.0)
        self.cuts += 1
        return n

    # ------------------------------------------------------------------ loop side

    async def _listen(self, target: tuple[str, int]) -> int:
        if target in self._listeners:
            return self._listeners[target]

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                await self._serve(target, r, w)
            except asyncio.CancelledError:  # stop(): nothing to report
                pass

        server = await asyncio.start_server(handle, self.host, 0)
        self._servers.append(server)
        port = int(server.sockets[0].getsockname()[1])
        self._listeners[target] = port
        return port

    async def _serve(
        self, target: tuple[str, int], cr: asyncio.StreamReader, cw: asyncio.StreamWriter
    ) -> None:
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(*target), 10.0)
        except (OSError, TimeoutError):
            cw.transport.abort()
            return
        self.connections += 1
        self._transports.update((cw.transport, uw.transport))
        inflight: dict[int, tuple[int, int]] = {}

        async def upstream() -> None:
            while frame := await _read_frame(cr):
                if len(frame) >= 8:
                    key, ver, corr = struct.unpack_from(">hhi", frame)
                    if key in (_METADATA, _FIND_COORDINATOR):
                        inflight[corr] = (key, ver)
                uw.write(struct.pack(">i", len(frame)) + frame)
                await uw.drain()

        async def downstream() -> None:
            while frame := await _read_frame(ur):
                if len(frame) >= 4:
                    (corr,) = struct.unpack_from(">i", frame)
                    req = inflight.pop(corr, None)
                    if req is not None:
                        frame = await self._rewrite(req[0], req[1], frame)
                cw.write(struct.pack(">i", len(frame)) + frame)
                await cw.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for tr in (cw.transport, uw.transport):
                tr.abort()
                self._transports.discard(tr)

    async def _rewrite(self, key: int, version: int, frame: bytes) -> bytes:
        """Point every advertised broker address at a listener of this proxy."""
        try:
            schema = load_response_schema(key, version)
            pos = 4
            if schema.__flexible__ and key != _API_VERSIONS:
                pos = skip_tagged_fields(frame, pos)
            body, _ = entity_reader(schema)(frame, pos)
            body = await self._redirect(key, version, body)
            out = io.BytesIO()
            entity_writer(schema)(out, body)
        except Exception:  # an answer we cannot parse passes through untouched
            return frame
        self.rewrites += 1
        return frame[:pos] + out.getvalue()

    async def _redirect(self, key: int, version: int, body: Any) -> Any:
        async def moved(entry: Any) -> Any:
            if entry.port < 0 or not entry.host:
                return entry
            port = await self._listen((entry.host, int(entry.port)))
            return dataclasses.replace(entry, host=self.host, port=i32(port))

        if key == _METADATA:
            brokers = tuple([await moved(b) for b in body.brokers])
            return dataclasses.replace(body, brokers=brokers)
        if version >= 4:
            coordinators = tuple([await moved(c) for c in body.coordinators])
            return dataclasses.replace(body, coordinators=coordinators)
        return await moved(body)


async def _read_frame(r: asyncio.StreamReader) -> bytes:
    """One size-prefixed frame, or b"" at end of stream."""
    try:
        head = await r.readexactly(4)
        (size,) = struct.unpack(">i", head)
        if not 0 <= size <= _MAX_FRAME:
            return b""
        return await r.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        return b""
