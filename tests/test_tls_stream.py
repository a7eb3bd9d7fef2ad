"""TlsStream: TLS decrypted and encrypted in worker threads, over real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from harness import eventually
from security_helpers import Certs, client_ssl_context, make_certs, server_ssl_context
from shoal.broker.frame_stream import STAGING
from shoal.broker.tls_stream import CIPHER_HIGH, OUT_HIGH, TlsStream
from shoal.config import ConfigError, load_config
from shoal.security.principal import PrincipalMapper, subject_dn


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


@pytest.fixture(scope="module")
def tls(certs: Certs) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return server_ssl_context(certs), client_ssl_context(certs)


def run(coro: Awaitable[None]) -> None:
    uvloop.run(asyncio.wait_for(coro, 60))


async def serve(
    reader: Callable[[TlsStream], Awaitable[None]],
    ctx: ssl.SSLContext,
    handshake_timeout: float = 10.0,
) -> tuple[asyncio.Server, int, asyncio.Future[TlsStream]]:
    """A server whose one connection runs `reader`; the future gets its stream
    once the handshake is done."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[TlsStream] = loop.create_future()

    async def on_connect(stream: TlsStream) -> None:
        got.set_result(stream)
        await reader(stream)

    server = await loop.create_server(
        lambda: TlsStream(on_connect, ctx, handshake_timeout=handshake_timeout, listener="SSL"),
        "127.0.0.1",
        0,
    )
    return server, server.sockets[0].getsockname()[1], got


async def echo_frames(stream: TlsStream, big: int = 64 * 1024) -> None:
    """Each size-prefixed frame (large ones read in chunks, as the broker
    does) is answered with itself, until EOF; then the stream is closed."""
    while True:
        try:
            size = struct.unpack(">i", await stream.readexactly(4))[0]
        except asyncio.IncompleteReadError:
            break
        buf = bytearray(size)
        view = memoryview(buf)
        for start in range(0, size, big):
            await stream.read_into(view[start : start + big])
        stream.writelines([struct.pack(">i", size), bytes(buf)])
        if stream.write_buffer_size() > 4 * 1024 * 1024:
            await stream.drain()
    stream.close()


async def read_to_end(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before closing (nothing if it reset)."""
    try:
        return await reader.read()
    except ConnectionError:
        return b""


def test_frames_cut_anywhere_arrive_whole_and_are_answered_in_order(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    sizes = [0, 1, 3, 4095, 4096, 16 * 1024 - 1, 16 * 1024, 70_000, 1_000_000, 5, 300_001]
    frames = [os.urandom(n) for n in sizes]
    wire = b"".join(struct.pack(">i", len(f)) + f for f in frames)

    async def main() -> None:
        server, port, _ = await serve(echo_frames, tls[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls[1])
        # writes of every size: one byte, odd pieces, a whole frame and more
        pos = 0
        for step in (1, 1, 2, 7, 4093, 65_537, 1, 1_500_000):
            writer.write(wire[pos : pos + step])
            await writer.drain()
            pos += step
        writer.write(wire[pos:])
        await writer.drain()
        answers = [await reader.readexactly(len(f) + 4) for f in frames]
        assert answers == [struct.pack(">i", len(f)) + f for f in frames]
        writer.close()
        server.close()

    run(main())


async def read_when_client_leaves(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], leave: Callable[[asyncio.StreamWriter], None]
) -> BaseException:
    """A reader waits for a 100,000-byte frame; the client sends 40,000
    bytes and then `leave`s: what the read raised."""
    seen: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def reader(stream: TlsStream) -> None:
        try:
            await stream.read_into(memoryview(bytearray(100_000)))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            seen.set_result(exc)

    server, port, _ = await serve(reader, tls[0])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls[1])
    writer.write(b"x" * 40_000)
    await writer.drain()
    leave(writer)
    try:
        return await seen
    finally:
        server.close()


def test_a_client_that_stops_mid_frame_gives_what_came(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    async def main() -> None:
        exc = await read_when_client_leaves(tls, lambda writer: writer.close())
        assert isinstance(exc, asyncio.IncompleteReadError)
        assert (len(exc.partial), exc.expected) == (40_000, 100_000)

    run(main())


def test_a_client_that_resets_mid_frame_ends_the_read(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    def reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST

    async def main() -> None:
        exc = await read_when_client_leaves(tls, reset)
        if isinstance(exc, asyncio.IncompleteReadError):
            assert len(exc.partial) <= 40_000 and exc.expected == 100_000

    run(main())


def test_a_client_nobody_reads_fills_only_bounded_buffers(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Staging fills, then a bounded amount of ciphertext, then the socket is
    no longer read: the rest waits in the network, not in the broker."""
    payload = os.urandom(8 * 1024 * 1024)

    async def main() -> None:
        go = asyncio.Event()
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def reader(stream: TlsStream) -> None:
            await go.wait()
            buf = bytearray(len(payload))
            await stream.read_into(memoryview(buf))
            done.set_result(bytes(buf))

        server, port, got = await serve(reader, tls[0])
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls[1])
        writer.write(payload)
        stream = await got
        await eventually(
            lambda: stream._read_paused and stream._stalled and not stream._running,
            "reading paused, staging full",
        )
        assert stream._end - stream._start == STAGING == len(stream._staging)
        # ciphertext held: below the mark plus one socket read (256 KiB)
        assert stream._inbox_bytes + stream._bio_backlog <= CIPHER_HIGH + 256 * 1024
        go.set()
        assert await done == payload
        writer.close()
        server.close()

    run(main())


def test_a_client_that_never_reads_its_answers_is_bounded(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """Answers wait in drain: the broker holds a bounded amount of them, and
    all of them arrive, in order, once the client reads."""
    chunk = 256 * 1024
    total = 64 * 1024 * 1024
    high = 4 * 1024 * 1024

    async def main() -> None:
        state = {"written": 0, "draining": False, "most": 0}

        async def writer_side(stream: TlsStream) -> None:
            for i in range(total // chunk):
                stream.write(bytes([i % 251]) * chunk)
                state["written"] += chunk
                state["most"] = max(state["most"], stream.write_buffer_size())
                if stream.write_buffer_size() > high:
                    state["draining"] = True
                    await stream.drain()
                    state["draining"] = False

        server, port, got = await serve(writer_side, tls[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls[1])
        stream = await got
        await eventually(
            lambda: state["draining"] and stream._write_paused, "the writer waiting on drain"
        )
        held = state["written"]
        assert held < total  # held back, not everything queued
        assert state["most"] <= high + chunk + OUT_HIGH
        data = await reader.readexactly(total)
        for i in range(0, total, chunk):
            assert data[i : i + chunk] == bytes([(i // chunk) % 251]) * chunk
        writer.close()
        server.close()

    run(main())


def test_a_silent_client_is_closed_after_the_handshake_timeout(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        server, port, got = await serve(echo_frames, tls[0], handshake_timeout=0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await read_to_end(reader) == b""  # closed by the server
        assert not got.done()
        writer.close()
        server.close()

    with caplog.at_level(logging.INFO, logger="shoal.tls"):
        run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "shoal.tls"]
    assert len(lines) == 1 and "no TLS handshake within 0.3 s" in lines[0], lines
    assert "127.0.0.1:" in lines[0]


def test_plaintext_on_the_tls_port_is_refused_with_one_line(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        server, port, got = await serve(echo_frames, tls[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # an ApiVersions v3 request, in the clear
        writer.write(struct.pack(">ihhih", 12, 18, 3, 1, 2) + b"t1")
        await read_to_end(reader)  # an alert at most, then the end
        assert not got.done()
        writer.close()
        server.close()

    with caplog.at_level(logging.INFO, logger="shoal.tls"):
        run(main())
    records = [r for r in caplog.records if r.name == "shoal.tls"]
    assert len(records) == 1, [r.getMessage() for r in records]
    line = records[0].getMessage()
    assert line.startswith("closing TLS handshake from 127.0.0.1:") and "on SSL" in line
    assert "WRONG_VERSION_NUMBER" in line
    assert records[0].exc_info is None


def test_the_client_certificate_maps_to_its_principal(certs: Certs) -> None:
    server_ctx = server_ssl_context(certs)
    server_ctx.load_verify_locations(cafile=str(certs.ca_file))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = client_ssl_context(certs, certs.client("plant-7"))
    mapper = PrincipalMapper.parse("RULE:^CN=([^,]+),OU=sites.*$/$1/,DEFAULT")

    async def main() -> None:
        async def reader(stream: TlsStream) -> None:
            der = stream.get_extra_info("ssl_object").getpeercert(binary_form=True)
            name = mapper.name(subject_dn(der))
            await stream.readexactly(1)
            stream.write(name.encode())
            stream.close()

        server, port, _ = await serve(reader, server_ctx)
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        w.write(b"?")
        assert await r.read() == b"plant-7"
        w.close()
        server.close()

    run(main())


def test_ssl_engine_takes_threaded_or_loop_only() -> None:
    assert load_config(None, {}, {"ssl.engine": "threaded"})["ssl.engine"] == "threaded"
    assert load_config(None, {}, None)["ssl.engine"] == "loop"
    with pytest.raises(ConfigError, match=r"ssl\.engine: 'fast' .* must be one of threaded, loop"):
        load_config(None, {}, {"ssl.engine": "fast"})
