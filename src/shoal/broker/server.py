"""Run the broker: open state, listen, stop gracefully on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from shoal.broker.broker import Broker
from shoal.broker.connection import Connection
from shoal.broker.handlers import registry
from shoal.broker.maintenance import Maintenance
from shoal.broker.metrics import start_metrics
from shoal.config import BrokerConfig

log = logging.getLogger("shoal.server")


async def serve(config: BrokerConfig, ready: asyncio.Event | None = None) -> None:
    broker = await Broker.open(config)
    maintenance = Maintenance(broker)
    maintenance.start()
    metrics = start_metrics(broker)
    handlers = registry()
    connections: dict[Connection, asyncio.Task[None]] = {}

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = Connection(broker, handlers, reader, writer)
        connections[conn] = task
        try:
            await conn.run()
        finally:
            connections.pop(conn, None)

    host, _, port = str(config["listen"]).rpartition(":")
    server = await asyncio.start_server(
        on_connect, host, int(port), limit=1024 * 1024, backlog=1024, reuse_address=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    adv_host, adv_port = config.advertised
    print(
        f"shoal: ready on {host}:{port} (advertised {adv_host}:{adv_port}, node "
        f"{broker.node.node_id}, cluster {broker.cluster_id}, objects {config.objects_url})",
        flush=True,
    )
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("stopping: committing pending data")
        await maintenance.stop()
        if metrics is not None:
            metrics.shutdown()
        server.close()
        # Closing the sockets ends each connection's loop the way a client
        # disconnect does; in-flight produce requests still get committed below.
        for conn in list(connections):
            conn.writer.transport.abort()
        if connections:
            await asyncio.wait(list(connections.values()), timeout=5)
        await broker.close()
        await server.wait_closed()
        log.info("stopped")
