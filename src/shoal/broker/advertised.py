"""Which address to give a client for a broker: the advertised address of the
listener the client connected on, as Kafka does (a client on the loopback
PLAINTEXT listener gets loopback addresses, one on SASL_SSL the public ones).

In cluster mode every broker publishes its per-listener addresses in the
metadata store before it registers; the others read them when they first see
it (and at most every few seconds after), so no extra round trip is paid per
request. A broker that has no listener of that name is given under its
registered address (its first listener).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from shoal.meta.security import SecurityStore
from shoal.meta.store import MetaStore
from shoal.security.listeners import Listener, advertised_map

if TYPE_CHECKING:
    from shoal.broker.broker import Node

log = logging.getLogger("shoal.advertised")

REFRESH_S = 5.0


class Advertised:
    def __init__(self, node_id: int, listeners: list[Listener], meta: MetaStore) -> None:
        self.node_id = node_id
        self.listeners = listeners
        self.own = advertised_map(listeners)
        self.store = SecurityStore(meta)
        self.others: dict[int, dict[str, tuple[str, int]]] = {node_id: self.own}
        self._loaded = 0.0

    async def publish(self) -> None:
        await self.store.set_listeners(self.node_id, self.own)

    async def _refresh(self, now: float) -> None:
        self._loaded = now
        try:
            found = await self.store.listeners()
        except Exception as exc:  # metadata store hiccup: keep what we know
            log.warning("cannot load brokers' listener addresses: %s", exc)
            return
        found[self.node_id] = self.own
        self.others = found

    async def nodes(self, nodes: list[Node], listener: str) -> list[Node]:
        """The nodes with their address on `listener`."""
        if len(nodes) == 1 and nodes[0].node_id == self.node_id:
            return [self.node(nodes[0], listener)]
        now = time.monotonic()
        unknown = any(n.node_id not in self.others for n in nodes)
        if (unknown and now - self._loaded > 0.5) or now - self._loaded > REFRESH_S:
            await self._refresh(now)
        return [self.node(n, listener) for n in nodes]

    def node(self, node: Node, listener: str) -> Node:
        addr = self.others.get(node.node_id, {}).get(listener)
        if addr is None:
            return node
        return replace(node, host=addr[0], port=addr[1])
