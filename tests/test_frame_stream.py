"""FrameStream: the broker's socket reader, over real sockets (plain and TLS)."""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import uvloop

from harness import eventually
from security_helpers import client_ssl_context, make_certs, server_ssl_context
from shoal.broker.frame_stream import STAGING, STAGING_FIRST, FrameStream


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    certs = make_certs(Path(tmp_path_factory.mktemp("certs")))
    return server_ssl_context(certs), client_ssl_context(certs)


def run(coro: Awaitable[None]) -> None:
    uvloop.run(asyncio.wait_for(coro, 60))


async def serve(
    reader: Callable[[FrameStream], Awaitable[None]], server_ctx: ssl.SSLContext | None
) -> tuple[asyncio.Server, int, asyncio.Future[FrameStream]]:
    """A server whose one connection runs `reader`; the future gets its stream."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[FrameStream] = loop.create_future()

    async def on_connect(stream: FrameStream) -> None:
        got.set_result(stream)
        await reader(stream)

    server = await loop.create_server(
        lambda: FrameStream(on_connect), "127.0.0.1", 0, ssl=server_ctx
    )
    return server, server.sockets[0].getsockname()[1], got


async def read_frames(stream: FrameStream, out: list[bytes], big: int = 64 * 1024) -> None:
    """Size-prefixed frames until EOF, large ones in chunks as the broker does."""
    while True:
        try:
            size = struct.unpack(">i", await stream.readexactly(4))[0]
        except asyncio.IncompleteReadError:
            return
        buf = bytearray(size)
        view = memoryview(buf)
        for start in range(0, size, big):
            await stream.read_into(view[start : start + big])
        out.append(bytes(buf))


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls"])
def test_frames_cut_anywhere_arrive_whole_and_in_order(
    secure: bool, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    sizes = [0, 1, 3, 4095, 4096, 16 * 1024 - 1, 16 * 1024, 70_000, 1_000_000, 5, 300_001]
    frames = [os.urandom(n) for n in sizes]
    wire = b"".join(struct.pack(">i", len(f)) + f for f in frames)

    async def main() -> None:
        got: list[bytes] = []
        server, port, _ = await serve(lambda s: read_frames(s, got), tls[0] if secure else None)
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls[1] if secure else None)
        # writes of every size: one byte, odd pieces, a whole frame and more
        pos = 0
        for step in (1, 1, 2, 7, 4093, 65_537, 1, 1_500_000):
            writer.write(wire[pos : pos + step])
            await writer.drain()
            pos += step
        writer.write(wire[pos:])
        await writer.drain()
        writer.close()
        await eventually(lambda: len(got) == len(frames), "every frame")
        assert got == frames
        server.close()

    run(main())


def test_a_client_that_stops_mid_frame_gives_what_came() -> None:
    async def main() -> None:
        seen: asyncio.Future[asyncio.IncompleteReadError] = (
            asyncio.get_running_loop().create_future()
        )

        async def reader(stream: FrameStream) -> None:
            buf = bytearray(100_000)
            try:
                await stream.read_into(memoryview(buf))
            except asyncio.IncompleteReadError as exc:
                seen.set_result(exc)

        server, port, _ = await serve(reader, None)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 40_000)
        await writer.drain()
        writer.close()
        exc = await seen
        assert (len(exc.partial), exc.expected) == (40_000, 100_000)
        server.close()

    run(main())


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls"])
def test_a_client_nobody_reads_fills_only_the_staging_buffer(
    secure: bool, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """Reading pauses when the staging buffer is full: what a client sends
    beyond it waits in the network, not in the broker's memory."""
    payload = os.urandom(8 * 1024 * 1024)

    async def main() -> None:
        go = asyncio.Event()
        done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def reader(stream: FrameStream) -> None:
            await go.wait()
            buf = bytearray(len(payload))
            await stream.read_into(memoryview(buf))
            done.set_result(bytes(buf))

        server, port, got = await serve(reader, tls[0] if secure else None)
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls[1] if secure else None)
        writer.write(payload)
        stream = await got
        # the staging buffer fills, and the client is held back
        await eventually(lambda: stream._staged() >= STAGING, "a full staging buffer")
        assert stream._staged() == STAGING and len(stream._staging) == STAGING
        go.set()
        assert await done == payload
        writer.close()
        server.close()

    run(main())


def test_a_connection_of_small_requests_keeps_a_small_buffer() -> None:
    async def main() -> None:
        got: list[bytes] = []
        server, port, stream_f = await serve(lambda s: read_frames(s, got), None)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(50):
            body = b"%d" % i * 20
            writer.write(struct.pack(">i", len(body)) + body)
            await writer.drain()
        stream = await stream_f
        await eventually(lambda: len(got) == 50, "50 frames")
        assert len(stream._staging) == STAGING_FIRST
        assert got[7] == b"7" * 20
        writer.close()
        server.close()

    run(main())
