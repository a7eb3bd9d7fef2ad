"""The gateway's HTTP server against slow and malformed clients: stalled
requests and idle keep-alive connections are closed, bad lengths are refused
with a status, connections are capped, and normal requests keep working."""

from __future__ import annotations

import asyncio
import time

from shoal.edge.http import HttpServer, Request, Response


async def echo(req: Request) -> Response:
    return Response(200, b"got %d\n" % len(req.body))


async def start(**kw: float | int) -> HttpServer:
    server = HttpServer(echo, 1000, **kw)  # type: ignore[arg-type]
    await server.start("127.0.0.1:0")
    return server


async def request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except TimeoutError:
        return False


async def test_stalled_request_is_closed_and_others_are_served() -> None:
    server = await start(request_timeout=0.5, idle_timeout=5)
    try:
        stalled = []
        for raw in (
            b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Le",
            b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nab",
        ):
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(raw)
            stalled.append((r, w))
        ok = await request(server.port, b"POST /x HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc")
        assert ok.startswith(b"HTTP/1.0 200") and ok.endswith(b"got 3\n")
        t0 = time.monotonic()
        for r, _w in stalled:
            assert await closed(r, 5)
        assert time.monotonic() - t0 < 4
    finally:
        await server.close()


async def test_idle_keep_alive_connection_is_closed() -> None:
    server = await start(request_timeout=5, idle_timeout=0.5)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n")
        first = await asyncio.wait_for(r.readuntil(b"got 0\n"), 5)
        assert b"keep-alive" in first
        assert await closed(r, 5)
        w.close()
    finally:
        await server.close()


async def test_bad_lengths_get_a_status() -> None:
    server = await start()
    try:
        for length, status in ((b"-5", b"400"), (b"abc", b"400"), (b"5000", b"413")):
            raw = b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: " + length + b"\r\n\r\n"
            resp = await request(server.port, raw)
            # aiohttp answers what it cannot parse as HTTP/1.0
            assert resp.startswith(b"HTTP/1.") and resp.split(b" ")[1] == status, resp
        resp = await request(server.port, b"NONSENSE\r\n\r\n")
        assert resp.startswith(b"HTTP/1.") and resp.split(b" ")[1] == b"400", resp
        resp = await request(
            server.port, b"GET / HTTP/1.1\r\nHost: gw\r\n" + b"X: " + b"y" * 20000 + b"\r\n\r\n"
        )
        assert resp == b"" or resp.split(b" ")[1] == b"400", resp
    finally:
        await server.close()


async def test_connections_are_capped() -> None:
    server = await start(max_connections=3, idle_timeout=10)
    try:
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        for _ in range(500):  # until the server has registered them (5 s at most)
            if server.open_connections >= 3:
                break
            await asyncio.sleep(0.01)
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        assert await closed(r, 5)
        assert server.refused == 1
        for _r, hw in held:
            hw.close()
        w.close()
    finally:
        await server.close()


async def test_chunked_is_refused_and_keep_alive_serves_a_second_request() -> None:
    server = await start()
    try:
        resp = await request(
            server.port,
            b"POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        )
        assert resp.startswith(b"HTTP/1.1 411") and b"Content-Length" in resp, resp
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        for body in (b"ab", b"abcd"):
            w.write(b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body))
            w.write(body)
            got = await asyncio.wait_for(r.readuntil(b"got %d\n" % len(body)), 5)
            assert got.startswith(b"HTTP/1.1 200"), got
        w.close()
    finally:
        await server.close()
