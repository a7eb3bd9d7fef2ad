"""One client connection: read frames, dispatch, answer in request order.

Requests are dispatched in the order they arrive, so a producer's pipelined
batches are appended in its order. Handlers that must wait (produce commits,
long-poll fetches) return a Deferred; the connection moves on to the next
request and a writer task sends responses strictly in request order.
A malformed frame closes this connection only, with one log line.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shoal.broker.broker import Broker
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

log = logging.getLogger("shoal.connection")

MAX_INFLIGHT = 64  # responses queued per connection before reading pauses
_CLOSE = None


class Connection:
    def __init__(
        self,
        broker: Broker,
        handlers: dict[int, Handler],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.broker = broker
        self.handlers = handlers
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.client = Client(self.peer, None)
        self._queue: asyncio.Queue[tuple[RequestHeader, Any] | None] = asyncio.Queue(MAX_INFLIGHT)
        self.max_frame = int(broker.config["socket.request.max.bytes"])

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
        except Exception:
            log.exception("closing connection from %s: unexpected error", self.client)
        await self._queue.put(_CLOSE)
        try:
            await asyncio.wait_for(sender, timeout=5)
        except (TimeoutError, Exception):
            sender.cancel()
        self.writer.close()

    async def _read_loop(self) -> None:
        while True:
            prefix = await self.reader.readexactly(SIZE_PREFIX)
            size = decode_size(prefix, self.max_frame)
            frame = await self.reader.readexactly(size)
            header = peek_header(frame)
            if header.client_id != self.client.client_id:
                self.client = Client(self.peer, header.client_id)
            if not is_supported(header.api_key, header.api_version):
                if header.api_key == API_VERSIONS:
                    # The client guessed too high: answer in v0 with our ranges.
                    await self._queue.put((header, unsupported_version_response()))
                    continue
                raise FrameError(
                    f"unsupported request {api_name(header.api_key)} "
                    f"(key {header.api_key}) v{header.api_version}"
                )
            request = decode_request(frame)
            result = await self.handlers[header.api_key](
                self.broker, self.client, request.header, request.body
            )
            if result is None:
                continue  # acks=0
            await self._queue.put((request.header, result))

    async def _send_loop(self) -> None:
        transport = self.writer.transport
        while True:
            item = await self._queue.get()
            if item is _CLOSE:
                return
            header, result = item
            if isinstance(result, Deferred):
                try:
                    result = await result.result
                except Exception:
                    log.exception(
                        "request %s v%d from %s failed",
                        api_name(header.api_key),
                        header.api_version,
                        self.client,
                    )
                    self.writer.close()
                    return
            self.writer.write(encode_response(header, result))
            if transport.get_write_buffer_size() > 4 * 1024 * 1024:
                await self.writer.drain()
