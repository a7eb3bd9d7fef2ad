"""A TLS client connection decrypted and encrypted off the event loop.

The broker is one event loop on one core. Under uvloop's own TLS, every TLS
record is decrypted on that core (one SSLObject.read per record, in Python),
which made TLS produce cost about twice the CPU of plaintext. OpenSSL releases
the GIL inside SSL_read/SSL_write/SSL_do_handshake, so this protocol takes
the plain TCP socket and does that work in a small shared pool of worker
threads, on the other cores:

- ciphertext from the socket is queued and one *job* per connection at a time
  (strictly serialized: an SSLObject is not thread-safe) feeds it to the
  SSLObject's incoming BIO, runs the handshake, decrypts, encrypts the queued
  answers in order, and sends close_notify when asked;
- plaintext is decrypted straight into the frame buffer the reader waits on
  (`read_into`, as FrameStream), or into a bounded staging buffer otherwise;
  the reader and the worker share those buffers under one lock, held by the
  worker for one record at a time;
- results come back with one call_soon_threadsafe per job (plus one when a
  frame buffer fills mid-job, so the reader can hand over the next).

Bounds, as FrameStream's: a client nobody reads fills the staging buffer,
then at most CIPHER_HIGH of ciphertext before the socket stops being read;
answers wait for `drain` while more than OUT_HIGH of plaintext is queued for
encryption or the transport is over its high-water mark. A TLS error (bad
record, plaintext on the TLS port, failed client certificate) closes the
connection with one log line naming the peer and the reason.

Interface: the one Connection uses on FrameStream, so the two are
interchangeable per listener (`ssl.engine`).

Measured (docs/BENCHMARKS.md "TLS off the event loop"): with nothing else on
the event loop this halves the loop's TLS read cost, but in a busy broker it
costs more than it saves: a worker needs the GIL back after every record
(librdkafka's are ~2 KiB) while the loop holds it, and each socket read is a
job. Hence `ssl.engine=loop` by default; this engine is the A/B alternative.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import ssl
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from shoal.broker.frame_stream import DIRECT, STAGING, STAGING_FIRST, FrameReader, peer_name
from shoal.broker.tls_accept import OnFailure, handshake_failure

log = logging.getLogger("shoal.tls")

#: Ciphertext received but not yet decrypted, at most, before the socket
#: stops being read (uvloop hands over up to 256 KiB per read).
CIPHER_HIGH = 512 * 1024
#: Plaintext answers queued for encryption beyond which `drain` waits.
OUT_HIGH = 1024 * 1024


class _Pool:
    """Daemon threads running jobs from one queue (a job is a bound method
    that never raises)."""

    def __init__(self, threads: int) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        for i in range(threads):
            threading.Thread(target=self._run, name=f"shoal-tls-{i}", daemon=True).start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            self._jobs.get()()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def worker_pool() -> _Pool:
    """The process's TLS workers: as many as cores, at most 4 (the event loop
    keeps one core busy; more threads only contend for the GIL)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _Pool(max(2, min(4, os.cpu_count() or 2)))
        return _pool


@dataclass(slots=True)
class _Done:
    """What one job did, handed to the event loop in one call."""

    fed: int = 0  # ciphertext bytes taken from the inbox
    encrypted: int = 0  # plaintext bytes taken from the outbox
    cipher: bytes = b""  # to send
    backlog: int = 0  # ciphertext left in the incoming BIO
    handshake_done: bool = False
    stalled: bool = False  # staging full: plaintext left in the SSLObject
    peer_closed: bool = False  # close_notify received
    close_sent: bool = False
    error: BaseException | None = None


class TlsStream(FrameReader, asyncio.Protocol):
    """One TLS connection's bytes, decrypted by the worker pool into the
    buffers `read_into` is given."""

    def __init__(
        self,
        on_connect: Callable[[TlsStream], Coroutine[Any, Any, None]],
        context: ssl.SSLContext,
        *,
        handshake_timeout: float,
        listener: str = "",
        staging: int = STAGING,
        on_failure: OnFailure | None = None,
    ) -> None:
        self._on_connect = on_connect
        self._on_failure = on_failure
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._listener = listener
        self._loop: asyncio.AbstractEventLoop | None = None
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self._peer = "?"
        # The worker's side: only ever touched by the one running job.
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl: ssl.SSLObject | None = None
        self._handshaking = True
        # Shared under _mu: the queues and the plaintext buffers.
        self._mu = threading.Lock()
        self._inbox: list[bytes] = []
        self._outbox: list[bytes | bytearray | memoryview] = []
        self._most = staging
        self._staging = bytearray(min(STAGING_FIRST, staging))
        self._view = memoryview(self._staging)
        self._start = 0  # unread staged plaintext is _staging[_start:_end]
        self._end = 0
        self._target: memoryview | None = None  # the reader's buffer, filled directly
        self._filled = 0
        self._close_wanted = False
        # The event loop's side.
        self._running = False  # a job is queued or running
        self._hold = False  # no job while the connection is being set up
        self._connected = False  # handshake done
        self._inbox_bytes = 0
        self._bio_backlog = 0
        self._stalled = False
        self._out_pending = 0
        self._close_sent = False
        self._cipher_eof = False  # no more ciphertext will come
        self._peer_closed = False
        self._eof = False  # the reader has everything there will be
        self._lost: BaseException | None = None
        self._closed = False  # transport gone
        self._dead = False  # aborted: results of a running job are dropped
        self._read_paused = False
        self._write_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- the event loop's side ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._peer = peer_name(transport.get_extra_info("peername"))
        self._timer = self._loop.call_later(self._handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        if self._dead or self._peer_closed or self._close_sent:
            return
        with self._mu:
            self._inbox.append(data)
        self._inbox_bytes += len(data)
        self._flow()
        self._kick()

    def eof_received(self) -> bool:
        """Keep the socket open to answer what was read (the connection
        closes it once the answers are out); before the handshake, close."""
        self._cipher_eof = True
        self._maybe_eof()
        return self._connected

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._cipher_eof = True
        self._lost = exc
        if self._timer is not None:
            self._timer.cancel()
        self._maybe_eof()
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- the reader's side ---------------------------------------------------------

    async def read_into(self, buf: memoryview) -> None:
        """Fill `buf` exactly. Raises IncompleteReadError (with what came) if
        the client closes first, ConnectionError if the connection breaks."""
        want = len(buf)
        got = 0
        while True:
            direct = False
            with self._mu:
                staged = self._end - self._start
                if staged:
                    n = min(staged, want - got)
                    buf[got : got + n] = self._view[self._start : self._start + n]
                    got += n
                    self._start += n
                    if self._start == self._end:
                        self._start = self._end = 0
                if got < want and not self._eof and want - got >= DIRECT:
                    if self._start == self._end:
                        self._target = buf[got:]
                        self._filled = 0
                        direct = True
            self._kick()  # room again, or a buffer to fill
            if got == want:
                return
            if direct:
                try:
                    while self._target is not None and not self._eof:
                        await self._wait()
                finally:
                    with self._mu:
                        filled, self._target = self._filled, None
                got += filled
                if got == want:
                    self._kick()
                    return
                raise self._incomplete(buf, got)
            if self._eof:
                raise self._incomplete(buf, got)
            await self._wait()

    async def drain(self) -> None:
        """Wait until the answers queued for encryption and the transport's
        buffer are below their high-water marks."""
        while not self._closed and (self._write_paused or self._out_pending > OUT_HIGH):
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._closed:
            raise ConnectionResetError("connection lost")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writelines([data])

    def writelines(self, data: list[bytes] | list[bytes | bytearray | memoryview]) -> None:
        if self._close_wanted or self._closed or self._dead:
            return
        with self._mu:
            self._outbox.extend(data)
        self._out_pending += sum(len(d) for d in data)
        self._kick()

    def close(self) -> None:
        """close_notify after the queued answers, then close the socket."""
        if self._close_wanted or self.transport is None:
            return
        with self._mu:
            self._close_wanted = True
        if not self._connected or self._closed:
            self.transport.close()
            return
        self._kick()

    def abort(self) -> None:
        self._dead = True
        self._close_wanted = True
        if self.transport is not None:
            self.transport.abort()
        self._maybe_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._ssl if self._connected else default
        if name == "sslcontext":
            return self._context
        if name == "peercert":
            return self._ssl.getpeercert() if self._connected and self._ssl else default
        if self.transport is None:
            return default
        return self.transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return (
            self._close_wanted
            or self._closed
            or self.transport is None
            or self.transport.is_closing()
        )

    def write_buffer_size(self) -> int:
        transport = 0 if self.transport is None else self.transport.get_write_buffer_size()
        return self._out_pending + transport

    # -- scheduling (event loop) ------------------------------------------------------

    def _kick(self) -> None:
        """Queue a job if there is work and none is queued or running."""
        if self._running or self._hold or self._dead:
            return
        if not (
            self._inbox
            or self._outbox
            or (self._close_wanted and not self._close_sent)
            or (self._stalled and self._room())
        ):
            return
        self._running = True
        worker_pool().submit(self._job)

    def _room(self) -> bool:
        return self._target is not None or self._end - self._start < self._most

    def _job_done(self, done: _Done) -> None:
        self._running = False
        if self._dead:
            self._maybe_eof()
            return
        self._inbox_bytes -= done.fed
        self._bio_backlog = done.backlog
        self._out_pending -= done.encrypted
        self._stalled = done.stalled
        assert self.transport is not None
        if done.cipher and not self.transport.is_closing():
            self.transport.write(done.cipher)
        if done.error is not None:
            self._fail(done.error)
            return
        if done.peer_closed:
            self._peer_closed = True
        if done.handshake_done:  # even if the peer is gone: it reads what came
            self._connected = True
            if self._timer is not None:
                self._timer.cancel()
            # The connection's first step (Connection() and the listener's
            # on_connection, which reads the peer certificate from the
            # SSLObject) runs before the next job: nothing else uses the
            # SSLObject meanwhile.
            self._hold = True
            assert self._loop is not None
            self.task = self._loop.create_task(self._on_connect(self))
            self._loop.call_soon(self._unhold)
        if done.close_sent:
            self._close_sent = True
            self.transport.close()
        self._maybe_eof()
        self._wake()
        self._wake_drain()
        self._flow()
        self._kick()

    def _unhold(self) -> None:
        self._hold = False
        self._kick()

    def _fail(self, exc: BaseException) -> None:
        """A TLS error: one line naming the peer and the reason; the alert
        OpenSSL wrote (if any) goes out, then the socket closes."""
        reason = handshake_failure(exc)
        if not self._connected and self._on_failure is not None and isinstance(exc, ssl.SSLError):
            self._on_failure(self._peer, reason)  # logs (and audits) it
        else:
            stage = "TLS connection" if self._connected else "TLS handshake"
            log.info("closing %s from %s on %s: %s", stage, self._peer, self._listener, reason)
        self._dead = True
        self._close_wanted = True
        if self._lost is None:
            self._lost = ConnectionResetError(f"TLS error: {reason}")
        if self.transport is not None:
            self.transport.close()
        self._maybe_eof()

    def _handshake_expired(self) -> None:
        if self._connected or self._closed or self._dead:
            return
        log.info(
            "closing TLS connection from %s on %s: no TLS handshake within %.1f s",
            self._peer,
            self._listener,
            self._handshake_timeout,
        )
        self.abort()

    def _flow(self) -> None:
        """Stop reading the socket while too much ciphertext waits."""
        if self.transport is None or self._closed:
            return
        backlog = self._inbox_bytes + self._bio_backlog
        if not self._read_paused and backlog > CIPHER_HIGH:
            self._read_paused = True
            self.transport.pause_reading()
        elif self._read_paused and backlog <= CIPHER_HIGH // 2:
            self._read_paused = False
            self.transport.resume_reading()

    def _maybe_eof(self) -> None:
        """The reader sees the end once every byte that came is decrypted."""
        if self._eof:
            return
        drained = self._cipher_eof and not self._running and not self._inbox
        if self._dead or self._peer_closed or (drained and not self._stalled):
            self._eof = True
            self._wake()

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- the worker's side ---------------------------------------------------------------

    def _job(self) -> None:
        done = _Done()
        try:
            self._work(done)
        except Exception as exc:  # TLS errors, and anything else: the connection ends
            done.error = exc
            if self._out.pending:
                done.cipher = self._out.read()  # the alert
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._job_done, done)
        except RuntimeError:
            pass  # the loop is closed: the process is stopping

    def _work(self, done: _Done) -> None:
        with self._mu:
            inbox, self._inbox = self._inbox, []
            outbox, self._outbox = self._outbox, []
            close = self._close_wanted
        sslobj = self._ssl
        if sslobj is None:
            sslobj = self._ssl = self._context.wrap_bio(self._in, self._out, server_side=True)
        for chunk in inbox:
            self._in.write(chunk)
            done.fed += len(chunk)
        if self._handshaking:
            try:
                sslobj.do_handshake()
            except ssl.SSLWantReadError:
                done.cipher = self._out.read()
                done.backlog = self._in.pending
                return
            self._handshaking = False
            done.handshake_done = True
        self._decrypt(sslobj, done)
        for data in outbox:
            view = memoryview(data)
            while view:
                view = view[sslobj.write(view) :]
            done.encrypted += len(data)
        if close:
            try:
                sslobj.unwrap()  # writes close_notify; the peer's is not awaited
            except ssl.SSLError:
                pass
            done.close_sent = True
        if self._out.pending:
            done.cipher = self._out.read()
        done.backlog = self._in.pending

    def _decrypt(self, sslobj: ssl.SSLObject, done: _Done) -> None:
        """Plaintext into the reader's buffer or staging, one record per
        read, until the ciphertext runs out or staging is full."""
        mu = self._mu
        while True:
            with mu:
                target = self._target
                if target is not None:
                    dest = target[self._filled :]
                else:
                    if self._end == len(self._staging):
                        if self._start:
                            self._compact()
                        elif len(self._staging) < self._most:
                            self._grow()
                        else:
                            done.stalled = True
                            return
                    dest = self._view[self._end :]
                try:
                    n = cast(int, sslobj.read(len(dest), dest))  # into dest: a count
                except ssl.SSLWantReadError:
                    return
                if n == 0:
                    done.peer_closed = True
                    return
                if target is None:
                    self._end += n
                    continue
                self._filled += n
                if self._filled < len(target):
                    continue
                self._target = None
            # The reader's buffer is full: let it hand over the next now.
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:
                return
