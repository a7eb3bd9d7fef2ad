"""The cost of reading request frames off a socket, alone: asyncio streams
(what the broker used until FrameStream) against FrameStream, plain and TLS,
and TlsStream (TLS decrypted in worker threads, `ssl.engine=threaded`).

    .venv/bin/python bench/frame_read_bench.py [--frames 2000] [--size 300000] [--rounds 2]
        [--kinds streams,FrameStream,TlsStream] [--record-size 16384]

A client process writes `frames` size-prefixed frames of `size` bytes, in TLS
records of `--record-size` bytes (Python's ssl); the server reads each as the
broker does (frames over 64 KiB in 64 KiB chunks, joined) and nothing else.
Reported: MB/s and the server's CPU seconds per GB (process_time: every
thread of the server, not the client, another process), and the event loop
thread's own share (thread_time): for TlsStream the rest is its workers. The
client is Python, so MB/s under TLS is the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import struct
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from security_helpers import make_certs
from shoal.broker.frame_stream import FrameStream
from shoal.broker.tls_stream import TlsStream

CHUNK = 64 * 1024

CLIENT = """
import socket, ssl, struct, sys
port, tls, ca = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
size, n, rec = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
s = socket.create_connection(("127.0.0.1", port))
if tls:
    s = ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname="127.0.0.1")
msg = struct.pack(">i", size) + b"a" * size
view = memoryview(msg)
for _ in range(n):
    for i in range(0, len(msg), rec):  # one TLS record per piece
        s.sendall(view[i : i + rec])
s.recv(1)
"""


async def read_streams(r: asyncio.StreamReader, n: int) -> None:
    for _ in range(n):
        size = struct.unpack(">i", await r.readexactly(4))[0]
        parts = []
        got = 0
        while got < size:
            k = min(CHUNK, size - got)
            parts.append(await r.readexactly(k))
            got += k
        b"".join(parts)


async def read_frame_stream(st: FrameStream | TlsStream, n: int) -> None:
    for _ in range(n):
        size = struct.unpack(">i", await st.readexactly(4))[0]
        parts: list[bytearray] = []
        got = 0
        while got < size:
            k = min(CHUNK, size - got)
            parts.append(bytearray(k))
            await st.read_into(memoryview(parts[-1]))
            got += k
        b"".join(parts)


async def one(
    kind: str, ctx: ssl.SSLContext | None, ca: Path, size: int, n: int, record: int
) -> str:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    async def on_streams(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_streams(r, n)
        w.write(b"x")
        done.set_result(None)

    async def on_frame_stream(st: FrameStream | TlsStream) -> None:
        await read_frame_stream(st, n)
        st.write(b"x")
        done.set_result(None)

    if kind == "streams":
        server = await asyncio.start_server(on_streams, "127.0.0.1", 0, limit=CHUNK, ssl=ctx)
    elif kind == "TlsStream" and ctx is not None:
        tls = ctx
        server = await loop.create_server(
            lambda: TlsStream(on_frame_stream, tls, handshake_timeout=10), "127.0.0.1", 0
        )
    else:
        server = await loop.create_server(
            lambda: FrameStream(on_frame_stream), "127.0.0.1", 0, ssl=ctx
        )
    port = server.sockets[0].getsockname()[1]
    args = [str(port), "1" if ctx else "0", str(ca), str(size), str(n), str(record)]
    client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, *args)
    t0, c0, l0 = time.perf_counter(), time.process_time(), time.thread_time()
    await done
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    loop_cpu = time.thread_time() - l0
    await client.wait()
    server.close()
    gb = n * size / 1e9
    return (
        f"{gb / wall * 1000:.0f} MB/s, server CPU {cpu / gb:.2f} s/GB "
        f"(event loop {loop_cpu / gb:.2f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--size", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kinds", default="streams,FrameStream,TlsStream")
    ap.add_argument(
        "--record-size",
        type=int,
        default=16384,
        help="the client writes in pieces of this size: one TLS record each (librdkafka's "
        "produce records average about 2 KiB)",
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(Path(tmp) / "certs")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(certs.server_keystore))
        for r in range(a.rounds):
            for kind in a.kinds.split(","):
                for name, c in (("plain", None), ("TLS", ctx)):
                    if kind == "TlsStream" and c is None:
                        continue  # plain sockets are FrameStream's
                    res = uvloop.run(one(kind, c, certs.ca_file, a.size, a.frames, a.record_size))
                    print(
                        f"round {r + 1}: {kind:<11} {name:<5} {res}, load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
