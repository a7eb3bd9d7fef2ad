"""A client socket as the broker reads it: bytes land in the frame's buffer.

asyncio's streams copy every byte four times on the way to a request: into a
bytes object per socket read (per TLS record, in a 256 KiB allocation, under
TLS), into the StreamReader's buffer, out of it by `readexactly`, and into
the frame when a large frame is read in chunks. This protocol is a
`BufferedProtocol`: the event loop reads the socket, or decrypts TLS, straight
into the buffer of the frame being read when much of it is still missing, and
into a small staging buffer otherwise (size prefixes, small requests, bytes
that arrive while nobody reads). The staging buffer is the connection's only
read-ahead: when it is full and nobody reads, reading pauses (as the
StreamReader's limit did), so a client cannot make a connection hold more
than that beyond the request budget.

Writes go to the transport; `drain` waits while the transport is over its
high-water mark, as StreamWriter.drain does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, cast

#: Bytes a connection reads ahead of its reader, at most (asyncio's
#: StreamReader buffered up to twice its 64 KiB limit). The staging buffer
#: starts small and grows to this only for a client that sends much: a fleet
#: of idle device connections should not cost 64 KiB each.
STAGING = 64 * 1024
STAGING_FIRST = 4 * 1024
#: A read missing at least this much goes straight into the reader's buffer;
#: less waits in staging, so small requests are not split into tiny reads.
DIRECT = 16 * 1024


def peer_name(peername: object) -> str:
    """A socket's `peername` as logs and audit lines name the client."""
    if isinstance(peername, tuple):
        return f"{peername[0]}:{peername[1]}"
    return str(peername)


class FrameReader:
    """The reader's side both connection kinds share (FrameStream here, and
    TlsStream, whose worker threads fill the buffers): waiting for bytes, and
    what a read that cannot complete raises."""

    _eof: bool
    _lost: BaseException | None
    _waiter: asyncio.Future[None] | None
    # The staging buffer: unread bytes are _staging[_start:_end], at most _most.
    _staging: bytearray
    _view: memoryview
    _start: int
    _end: int
    _most: int

    async def read_into(self, buf: memoryview) -> None:
        raise NotImplementedError

    async def readexactly(self, n: int) -> bytes:
        """`n` bytes as bytes (size prefixes and other small reads)."""
        buf = bytearray(n)
        await self.read_into(memoryview(buf))
        return bytes(buf)

    def _incomplete(self, buf: memoryview, got: int) -> BaseException:
        if self._lost is not None:
            return ConnectionResetError(f"connection lost: {self._lost}")
        return asyncio.IncompleteReadError(bytes(buf[:got]), len(buf))

    async def _wait(self) -> None:
        if self._eof:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _compact(self) -> None:
        """Move the unread staged bytes to the front of the staging buffer."""
        n = self._end - self._start
        self._view[:n] = self._view[self._start : self._end]
        self._start, self._end = 0, n

    def _grow(self) -> None:
        """A new, larger staging buffer (the old one may still be exported
        to the event loop, so it is replaced, not resized)."""
        bigger = bytearray(min(self._most, 2 * len(self._staging)))
        n = self._end - self._start
        bigger[:n] = self._view[self._start : self._end]
        self._staging, self._view = bigger, memoryview(bigger)
        self._start, self._end = 0, n


class FrameStream(FrameReader, asyncio.BufferedProtocol):
    """One connection's bytes, read into the buffers `read_into` is given."""

    def __init__(
        self, on_connect: Callable[[FrameStream], Coroutine[Any, Any, None]], staging: int = STAGING
    ) -> None:
        self._on_connect = on_connect
        self._most = staging
        self._staging = bytearray(min(STAGING_FIRST, staging))
        self._view = memoryview(self._staging)
        self._start = 0  # unread staged bytes are _staging[_start:_end]
        self._end = 0
        self._target: memoryview | None = None  # a reader's buffer, filled directly
        self._filled = 0
        self._waiter: asyncio.Future[None] | None = None
        self._eof = False
        self._lost: BaseException | None = None
        self._closed = False
        self._read_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    # -- the event loop's side ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        if self._read_paused:  # filled before it was handed over (tls_accept.py)
            self.transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(self._on_connect(self))

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._target is not None:
            return self._target[self._filled :]
        if self._end == len(self._staging):
            if self._start:
                self._compact()
            else:
                self._grow()
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._target is not None:
            self._filled += nbytes
            if self._filled == len(self._target):
                self._target = None
                self._wake()
            return
        self._end += nbytes
        if self._end == len(self._staging) == self._most and not self._start:
            self._pause()  # full, and nobody reading: the client waits
        self._wake()

    def eof_received(self) -> bool:
        """Keep a plain socket open to answer what was read (the connection
        closes it once the answers are out); TLS cannot half-close."""
        self._eof = True
        self._wake()
        return self.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._eof = True
        self._lost = exc
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- the reader's side ---------------------------------------------------------

    async def read_into(self, buf: memoryview) -> None:
        """Fill `buf` exactly. Raises IncompleteReadError (with what came) if
        the client closes first, ConnectionError if the connection breaks."""
        want = len(buf)
        got = 0
        while True:
            staged = self._end - self._start
            if staged:
                n = min(staged, want - got)
                buf[got : got + n] = self._view[self._start : self._start + n]
                got += n
                self._start += n
                if self._start == self._end:
                    self._start = self._end = 0
                self._resume()
            if got == want:
                return
            if self._eof:
                raise self._incomplete(buf, got)
            if want - got >= DIRECT and not self._staged():
                self._target = buf[got:]
                self._filled = 0
                self._resume()
                try:
                    await self._wait()
                finally:
                    filled, self._target = self._filled, None
                got += filled
                if got == want:
                    return
                raise self._incomplete(buf, got)
            self._resume()
            await self._wait()

    async def drain(self) -> None:
        """Wait until the transport is below its write high-water mark."""
        if self._closed:
            raise ConnectionResetError("connection lost")
        if not self._write_paused:
            return
        self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._drain_waiter
        finally:
            self._drain_waiter = None
        if self._closed:
            raise ConnectionResetError("connection lost")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def write_buffer_size(self) -> int:
        return 0 if self.transport is None else self.transport.get_write_buffer_size()

    # -- inside ------------------------------------------------------------------------

    def _staged(self) -> int:
        return self._end - self._start

    def _pause(self) -> None:
        if not self._read_paused and not self._closed:
            self._read_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def _resume(self) -> None:
        if self._read_paused and not self._closed and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
