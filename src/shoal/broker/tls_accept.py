"""A TLS connection on the event loop, from accept to the end of its handshake.

`create_server(ssl=...)` closes a connection whose handshake fails without a
word: uvloop treats the SSLError as an OSError and logs it only in debug
mode, so an expired or untrusted client certificate, or plain text sent to a
TLS port, left no log line and no audit record. This protocol takes the
plain socket and runs the handshake with `loop.start_tls` itself, so a
failure is seen with the client's address and handed to `on_failure` (which
logs and audits it, see secure.py); a connection that completes it goes on
as a `FrameStream` over uvloop's TLS, as before.

uvloop starts reading a new socket right after `connection_made`, so the
client's first bytes (its ClientHello) can reach this protocol before
`start_tls` takes the socket over; they are kept and handed to the TLS
protocol before it reads anything else (`_hand_over`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, cast

from shoal.broker.frame_stream import FrameStream, peer_name

log = logging.getLogger(__name__)

#: (peer "host:port", reason): a handshake that failed on the client's side of it.
OnFailure = Callable[[str, str], None]


def handshake_failure(exc: BaseException) -> str:
    """What a log line says about a failed TLS handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"client certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or exc)
    return f"{type(exc).__name__}: {exc}"


class TlsAccept(asyncio.Protocol):
    """The socket's protocol until `start_tls` takes it over."""

    def __init__(
        self,
        on_connect: Callable[[FrameStream], Coroutine[Any, Any, None]],
        context: ssl.SSLContext,
        handshake_timeout: float,
        on_failure: OnFailure,
        listener: str,
    ) -> None:
        self._on_connect = on_connect
        self._context = context
        self._timeout = handshake_timeout
        self._on_failure = on_failure
        self._listener = listener
        self.task: asyncio.Task[None] | None = None
        self._early: list[bytes] = []
        self._tcp: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = tcp = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._handshake(tcp))
        # Runs after the task's first step, in which start_tls puts its
        # protocol in place and pauses reading until that protocol starts.
        loop.call_soon(self._hand_over)

    def data_received(self, data: bytes) -> None:
        self._early.append(data)
        if self._tcp is not None:
            self._tcp.pause_reading()  # one chunk early at most; start_tls resumes

    def connection_lost(self, exc: Exception | None) -> None:
        """Before start_tls took over: the handshake task sees it fail."""

    def _hand_over(self) -> None:
        early, self._early = self._early, []
        if not early or self._tcp is None or self._tcp.is_closing():
            return
        proto = self._tcp.get_protocol()
        if proto is self:  # start_tls did not take the socket (it failed at once)
            return
        tls = cast(asyncio.BufferedProtocol, proto)
        data = memoryview(b"".join(early))
        while data:
            buf = memoryview(tls.get_buffer(len(data)))
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            tls.buffer_updated(n)
            data = data[n:]

    async def _handshake(self, tcp: asyncio.Transport) -> None:
        who = peer_name(tcp.get_extra_info("peername"))
        stream = FrameStream(self._on_connect)
        try:
            tls = await asyncio.get_running_loop().start_tls(
                tcp, stream, self._context, server_side=True, ssl_handshake_timeout=self._timeout
            )
        except ssl.SSLError as exc:
            tcp.abort()
            self._on_failure(who, handshake_failure(exc))
            return
        except (TimeoutError, ConnectionAbortedError):
            # uvloop ends a handshake past its timeout with ConnectionAbortedError
            tcp.abort()
            log.info(
                "closing TLS connection from %s on %s: no TLS handshake within %.1f s",
                who,
                self._listener,
                self._timeout,
            )
            return
        except (OSError, RuntimeError) as exc:
            # The client left during the handshake (a port probe, a client
            # that gave up): nothing to authenticate, so nothing to audit.
            tcp.abort()
            log.debug("TLS handshake from %s on %s ended: %s", who, self._listener, exc)
            return
        if tls is None:  # the transport closed as the handshake completed
            return
        stream.connection_made(tls)
