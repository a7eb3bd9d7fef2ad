"""Run the broker: open state, listen, stop gracefully on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from shoal.broker import gc_policy, memdebug
from shoal.broker.broker import Broker
from shoal.broker.handlers import Handler, registry
from shoal.broker.listener import ConnectionLimiter, KafkaListener, ListenerLimits, RequestBudget
from shoal.broker.maintenance import Maintenance
from shoal.broker.metrics import start_metrics
from shoal.broker.secure import Security
from shoal.config import BrokerConfig
from shoal.logs import flush_summaries

log = logging.getLogger("shoal.server")


async def start_listeners(broker: Broker, handlers: dict[int, Handler]) -> list[KafkaListener]:
    """One socket per configured listener, the first first, sharing the
    broker's request budget and connection limits, each authenticating its
    own way. Used by `shoal serve` and the edge gateway's local listener. A
    port in use is raised naming its listener; what started is closed."""
    limits = ListenerLimits.from_config(broker.config)
    budget = RequestBudget(limits.queued_max_request_bytes, limits.max_frame)
    limiter = ConnectionLimiter(limits)
    security = Security(broker.config, broker.listeners, broker.audit)
    servers: list[KafkaListener] = []
    try:
        for lst in broker.listeners:
            server = KafkaListener(
                broker,
                handlers,
                limits=limits,
                budget=budget,
                limiter=limiter,
                name=lst.name,
                on_connection=functools.partial(security.on_connection, lst),
                on_tls_failure=functools.partial(security.tls_failed, lst),
            )
            try:
                await server.start(
                    lst.host,
                    lst.port,
                    security.ssl_context(lst),
                    str(broker.config["ssl.engine"]),
                )
            except OSError as exc:  # named by listener for the one-line error
                raise OSError(exc.errno, exc.strerror, str(lst)) from None
            servers.append(server)
    except BaseException:
        for server in servers:
            await server.close()
        raise
    return servers


class Service(Protocol):
    """Something that runs inside the broker beside it (migration links, the
    web console)."""

    async def stop(self) -> None: ...


async def serve(
    config: BrokerConfig,
    ready: asyncio.Event | None = None,
    services: Sequence[Callable[[Broker], Awaitable[Service | None]]] = (),
) -> None:
    """Run the broker; `services` start with it and stop before it closes
    (they use the broker as a library, so broker/ does not import them)."""
    probe = memdebug.start_tracing()  # off unless SHOAL_MEMDEBUG_DIR is set
    broker = await Broker.open(config)
    if probe is not None:
        memdebug.install(broker, probe)
    maintenance = Maintenance(broker)
    maintenance.start()
    running: list[Service] = []
    try:
        for start in services:
            svc = await start(broker)
            if svc is not None:  # None: not configured
                running.append(svc)
    except BaseException:
        for svc in running:
            await svc.stop()
        await maintenance.stop()
        await broker.close()
        raise
    handlers = registry()
    try:
        servers = await start_listeners(broker, handlers)
    except BaseException:
        for svc in running:
            await svc.stop()
        await maintenance.stop()
        await broker.close()
        raise
    metrics = start_metrics(broker)
    listener = servers[0]
    host, port = broker.listeners[0].host, listener.port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    adv_host, adv_port = config.advertised
    gc_policy.settle()
    print(
        f"shoal: ready on {host}:{port} (advertised {adv_host}:{adv_port}, node "
        f"{broker.node.node_id}, cluster {broker.cluster_id}, objects {config.objects_url}"
        + ", listeners "
        + " ".join(
            f"{lst.name}{'' if lst.name == lst.protocol else f'({lst.protocol})'}"
            f"://{lst.host}:{srv.port}"
            for lst, srv in zip(broker.listeners, servers, strict=True)
        )
        + ")",
        flush=True,
    )
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("stopping: committing pending data")
        for svc in running:
            await svc.stop()
        await maintenance.stop()
        if metrics is not None:
            metrics.shutdown()
        # Closing the sockets ends each connection's loop the way a client
        # disconnect does; in-flight produce requests still get committed below.
        for server in servers:
            await server.close()
        await broker.close()
        log.info("stopped")
        flush_summaries()
