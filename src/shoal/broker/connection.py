"""One client connection: read frames, dispatch, answer in request order.

Requests are dispatched in the order they arrive, so a producer's pipelined
batches are appended in its order. Handlers that must wait (produce commits,
long-poll fetches) return a Deferred; the connection moves on to the next
request and a writer task sends responses strictly in request order.
A malformed frame closes this connection only, with one log line.

Limits (see listener.py): a frame is read in chunks taken from the broker's
request budget as they arrive; until the connection has authenticated (or,
without SASL, sent one valid request) frames are capped at
`sasl.server.max.receive.size`; at most `connection.max.inflight.requests`
responses wait per connection before reading pauses.

Client quotas (security/quotas.py): a request's bytes and handling time, and a
Fetch answer's bytes, are measured here; a client over its quota gets the
throttle in `throttle_time` and nothing more is read from it until the time is
over (the channel is held, as Kafka mutes it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from shoal.broker.broker import Broker
from shoal.broker.frame_stream import peer_name
from shoal.broker.handlers import Client, Deferred, Handler
from shoal.broker.handlers.api_versions import unsupported_version_response
from shoal.protocol.apis import (
    API_VERSIONS,
    api_name,
    decode_request,
    encode_response,
    is_supported,
)
from shoal.protocol.errors import FrameError
from shoal.protocol.frames import SIZE_PREFIX, decode_size
from shoal.protocol.headers import RequestHeader, peek_header
from shoal.security.quotas import delays_response, request_throttle, response_throttle

if TYPE_CHECKING:
    from shoal.broker.frame_stream import FrameStream
    from shoal.broker.listener import ListenerLimits, RequestBudget
    from shoal.broker.tls_stream import TlsStream

log = logging.getLogger("shoal.connection")

CHUNK = 64 * 1024  # frames larger than this are read (and budgeted) in chunks
WRITE_BUFFER_HIGH = 4 * 1024 * 1024
_CLOSE = None


class Connection:
    def __init__(
        self,
        broker: Broker,
        handlers: dict[int, Handler],
        stream: FrameStream | TlsStream,
        *,
        limits: ListenerLimits,
        budget: RequestBudget,
    ) -> None:
        self.broker = broker
        self.handlers = handlers
        self.stream = stream
        self.limits = limits
        self.budget = budget
        self.peer = peer_name(stream.get_extra_info("peername"))
        self.client = Client(self.peer, None)
        self._queue: asyncio.Queue[tuple[RequestHeader, Any, int] | None] = asyncio.Queue(
            self.limits.max_inflight
        )
        self.max_frame = self.limits.max_frame
        #: Authenticated, or (on a listener without SASL) sent a valid request:
        #: until then frames are capped at sasl.server.max.receive.size.
        self.authenticated = False
        self.requires_sasl = False
        self._last_activity = time.monotonic()
        self._pending = 0  # requests read but not yet answered
        self._blocked_since: float | None = None  # writer waiting on a client that does not read
        #: client quotas hold the channel: no request is read before this (monotonic)
        self.throttle_until = 0.0
        #: responses ready but not yet written (sent together, see _send_all)
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_handle: asyncio.Handle | None = None

    # -- state the listener and the security layer use --------------------------

    def frame_limit(self) -> int:
        if self.authenticated:
            return self.max_frame
        return min(self.max_frame, self.limits.pre_auth_max_frame)

    def idle_for(self, now: float) -> float:
        """Seconds this connection has made no progress: nothing in flight and
        no frame completed, or a response stuck because the client stopped
        reading."""
        if self._blocked_since is not None:
            return now - self._blocked_since
        if self._pending:
            return 0.0
        return now - self._last_activity

    def abort(self) -> None:
        self.stream.abort()

    def _after_sasl(self) -> bool:
        """After each request on a SASL listener: take on the principal the
        session authenticated (or re-authenticated) as; True if the session
        says to close (failed or out-of-order authentication)."""
        session = self.client.session
        if session is None:
            return False
        if session.principal is not None and session.principal != self.client.principal:
            self.client = replace(self.client, principal=session.principal)
        self.authenticated = session.authenticated
        return bool(session.closing)

    # -- the loops ----------------------------------------------------------------

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        try:
            await self._read_loop()
        except FrameError as exc:
            log.warning("closing connection from %s: %s", self.client, exc)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                log.warning(
                    "closing connection from %s: frame cut off after %d bytes",
                    self.client,
                    len(exc.partial),
                )
        except asyncio.CancelledError:
            sender.cancel()
            raise
        except Exception as exc:
            log.error(
                "closing connection from %s: unexpected %s: %s",
                self.client,
                type(exc).__name__,
                exc,
                exc_info=True,  # a bug of ours: worth its traceback (rate-limited)
            )
        await self._queue.put(_CLOSE)
        try:
            await asyncio.wait_for(sender, timeout=5)
        except (TimeoutError, Exception):
            sender.cancel()
        self.stream.close()

    async def _read_frame(self, size: int) -> bytes:
        """The frame's bytes, taken from the request budget as they arrive.
        The socket is read straight into the frame's buffer, or into each
        chunk's for a large frame (a buffer the size the client announced
        would take memory for bytes it may never send). Either way the frame
        is handed on as bytes, the type every decoder and handler expects
        (a small frame's copy costs ~2 µs per 60 KB)."""
        budget = self.budget
        if size <= CHUNK:
            await budget.acquire(size)
            try:
                return await self.stream.readexactly(size)
            except BaseException:
                budget.release(size)
                raise
        parts: list[bytearray] = []
        got = 0
        try:
            while got < size:
                n = min(CHUNK, size - got)
                await budget.acquire(n, large=True)
                got += n
                parts.append(bytearray(n))
                await self.stream.read_into(memoryview(parts[-1]))
        except BaseException:
            budget.release(got, large=True)
            raise
        return b"".join(parts)

    def _release(self, size: int) -> None:
        self.budget.release(size, large=size > CHUNK)

    async def _read_loop(self) -> None:
        while True:
            await self._hold()
            prefix = await self.stream.readexactly(SIZE_PREFIX)
            size = decode_size(prefix, self.max_frame)
            if size > self.frame_limit():
                raise FrameError(
                    f"frame of {size} bytes before authentication exceeds "
                    f"sasl.server.max.receive.size={self.limits.pre_auth_max_frame}"
                )
            frame = await self._read_frame(size)
            try:
                await self._hold()  # a throttle set while this frame was read
                self._last_activity = time.monotonic()
                await self._dispatch(frame)
            finally:
                self._release(size)
            if self._after_sasl():
                return  # failed authentication: its answer goes out, then the socket closes

    async def _dispatch(self, frame: bytes) -> None:
        header = peek_header(frame)
        if header.client_id != self.client.client_id:
            self.client = replace(self.client, client_id=header.client_id)
        session = self.client.session
        if session is not None:
            refused = session.allows(header.api_key)
            if refused is not None:
                raise FrameError(f"{refused} ({api_name(header.api_key)})")
        if not is_supported(header.api_key, header.api_version):
            if header.api_key == API_VERSIONS:
                # The client guessed too high: answer in v0 with our ranges.
                await self._answer(header, unsupported_version_response())
                return
            raise FrameError(
                f"unsupported request {api_name(header.api_key)} "
                f"(key {header.api_key}) v{header.api_version}"
            )
        started = time.monotonic()
        request = decode_request(frame, header)
        if not self.requires_sasl:
            self.authenticated = True
        result = await self.handlers[header.api_key](
            self.broker, self.client, request.header, request.body
        )
        now = time.monotonic()
        throttle = request_throttle(
            self.broker.quotas,
            self.client.principal,
            header.client_id,
            header.api_key,
            len(frame),
            (now - started) * 1000,
            now,
        )
        if result is not None:  # None: acks=0, no response
            await self._answer(request.header, result, throttle)
        elif throttle:
            self._throttle(throttle)

    async def _answer(self, header: RequestHeader, result: Any, throttle: int = 0) -> None:
        self._pending += 1
        await self._queue.put((header, result, throttle))

    def _throttle(self, ms: int) -> None:
        """Hold the channel: read nothing more from this client for `ms`."""
        self.throttle_until = max(self.throttle_until, time.monotonic() + ms / 1000)
        log.debug("throttling %s for %d ms (client quota)", self.client, ms)

    async def _hold(self) -> None:
        delay = self.throttle_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _throttled(self, header: RequestHeader, result: Any, throttle: int) -> bytes:
        """The response's bytes with the quota throttle in `throttle_time`
        (a Fetch's own bytes count against the consumer byte rate); the
        channel is held for that time, and a client too old to back off by
        itself gets its response that much later."""
        data = encode_response(header, result)
        throttle = max(
            throttle,
            response_throttle(
                self.broker.quotas,
                self.client.principal,
                header.client_id,
                header.api_key,
                len(data),
                time.monotonic(),
            ),
        )
        if throttle <= 0:
            return data
        if hasattr(result, "throttle_time"):
            result = dataclasses.replace(
                result, throttle_time=datetime.timedelta(milliseconds=throttle)
            )
            data = encode_response(header, result)
        self._throttle(throttle)
        if delays_response(header.api_key, header.api_version):
            await asyncio.sleep(throttle / 1000)
        return data

    def _flush(self) -> None:
        """Send the responses gathered since the last flush in one write."""
        self._flush_handle = None
        out = self._out
        if not out:
            return
        self._out = []
        self._out_bytes = 0
        if not self.stream.is_closing():
            self.stream.writelines(out)  # one writev, no join: a Fetch answer can be MBs

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._send_all(loop)
        finally:
            self._flush()

    async def _send_all(self, loop: asyncio.AbstractEventLoop) -> None:
        """Responses are gathered and sent in one write per event-loop turn:
        a group commit completes many pipelined produce requests at once, and
        a socket write per response cost as much as the rest of the request
        (the loopback send is a system call that also delivers the data)."""
        stream = self.stream
        while True:
            item = await self._queue.get()
            if item is _CLOSE:
                return
            header, result, throttle = item
            if isinstance(result, Deferred):
                try:
                    result = await result.result
                except Exception as exc:
                    log.error(
                        "request %s v%d from %s failed: %s: %s",
                        api_name(header.api_key),
                        header.api_version,
                        self.client,
                        type(exc).__name__,
                        exc,
                        exc_info=True,
                    )
                    self._flush()  # the answers before it still go out
                    stream.close()
                    return
            data = await self._throttled(header, result, throttle)
            self._out.append(data)
            self._out_bytes += len(data)
            if self._flush_handle is None:
                self._flush_handle = loop.call_soon(self._flush)
            self._pending -= 1
            self._last_activity = time.monotonic()
            if stream.write_buffer_size() + self._out_bytes > WRITE_BUFFER_HIGH:
                self._flush()
                self._blocked_since = self._last_activity
                try:
                    await stream.drain()
                finally:
                    self._blocked_since = None
