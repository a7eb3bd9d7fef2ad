"""What the console pages and /api show, gathered from the broker it runs
in: the cluster (meta/cluster.py), topics (catalog, stream bounds, stored
sizes), consumer groups (the coordinator and committed offsets).

Plain dicts, so one function feeds both the HTML page and its JSON twin.
"""

from __future__ import annotations

import collections
import struct
import time
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers.configs import topic_config_entries
from shoal.broker.handlers.log_dirs import stream_sizes
from shoal.broker.topics import Topic
from shoal.meta.cluster import ClusterStore
from shoal.meta.store import PartitionRecord, now_ms


async def bounds(broker: Broker, part: PartitionRecord) -> tuple[int, int]:
    """(log start, end) of a partition without taking it: the engine's
    bounds open a stream for writing (an epoch bump that would fence the
    owner), so a partition another broker owns is read from the store."""
    if broker.owns(part):
        return await broker.engine.bounds(part.stream_id)
    rec = await broker.meta.read_stream(part.stream_id)
    return rec.start_offset, rec.end_offset


class NotFound(LookupError):
    """An unknown topic, group or site: the page answers 404 naming it."""


class OffsetRates:
    """Records per second per topic, from end offsets sampled at most every
    `min_interval` seconds (the catalog has no counters of its own)."""

    def __init__(self, min_interval: float = 2.0) -> None:
        self.min_interval = min_interval
        self._last: dict[str, tuple[float, int]] = {}
        self.rates: dict[str, float] = {}

    def sample(self, topic: str, end_sum: int, now: float | None = None) -> float:
        t = time.monotonic() if now is None else now
        prev = self._last.get(topic)
        if prev is None:
            self._last[topic] = (t, end_sum)
            return 0.0
        dt = t - prev[0]
        if dt >= self.min_interval:
            self.rates[topic] = max(0.0, (end_sum - prev[1]) / dt)
            self._last[topic] = (t, end_sum)
        return self.rates.get(topic, 0.0)


class LagHistory:
    """Total lag of every group over time (sampled by the console every few
    seconds), for the group page's chart."""

    def __init__(self, points: int = 720) -> None:
        self.points = points
        self.groups: dict[str, collections.deque[tuple[float, int]]] = {}

    def add(self, now: float, lags: dict[str, int]) -> None:
        for gid, lag in lags.items():
            hist = self.groups.get(gid)
            if hist is None:
                hist = self.groups[gid] = collections.deque(maxlen=self.points)
            hist.append((now, lag))
        for gone in set(self.groups) - set(lags):
            del self.groups[gone]

    def of(self, gid: str) -> list[tuple[float, int]]:
        return list(self.groups.get(gid, ()))


async def cluster_view(broker: Broker) -> dict[str, Any]:
    """Brokers with leases, partitions and traffic; the controller; moves."""
    cluster = broker.cluster
    counts: dict[int | None, int] = {}
    for t in broker.topics.all():
        for p in t.partitions:
            owner = broker.node.node_id if cluster is None else p.owner
            counts[owner] = counts.get(owner, 0) + 1
    if cluster is None:
        n = broker.node
        return {
            "cluster_mode": False,
            "cluster_id": broker.cluster_id,
            "controller": n.node_id,
            "this_node": n.node_id,
            "brokers": [
                {
                    "node_id": n.node_id,
                    "address": f"{n.host}:{n.port}",
                    "rack": n.rack,
                    "state": "alive",
                    "lease_ms_left": None,
                    "draining": False,
                    "partitions": counts.get(n.node_id, 0),
                    "bytes_in_per_s": None,
                    "bytes_out_per_s": None,
                }
            ],
            "reassignments": [],
        }
    store = ClusterStore(broker.meta)
    now = now_ms()
    brokers = await store.brokers()
    ctrl = await store.controller()
    moves = await store.reassignments()
    return {
        "cluster_mode": True,
        "cluster_id": broker.cluster_id,
        "controller": ctrl.node_id if ctrl and ctrl.lease_expiry_ms >= now else None,
        "this_node": broker.node.node_id,
        "brokers": [
            {
                "node_id": b.node_id,
                "address": f"{b.host}:{b.port}",
                "rack": b.rack,
                "state": (
                    ("draining" if b.draining else "alive")
                    if b.lease_expiry_ms >= now
                    else "expired"
                ),
                "lease_ms_left": b.lease_expiry_ms - now,
                "draining": b.draining,
                "partitions": counts.get(b.node_id, 0),
                "bytes_in_per_s": b.bytes_in,
                "bytes_out_per_s": b.bytes_out,
            }
            for b in brokers
        ],
        "reassignments": [
            {
                "topic": r.topic,
                "partition": r.partition,
                "from": r.source_node,
                "to": r.target_node,
                "moved": r.moved_ms is not None,
            }
            for r in moves
        ],
    }


def _owner(broker: Broker, owner: int | None) -> int | None:
    return broker.node.node_id if broker.cluster is None else owner


async def topics_view(broker: Broker, rates: OffsetRates) -> list[dict[str, Any]]:
    topics = sorted(broker.topics.all(), key=lambda t: t.name)
    sizes = await stream_sizes(broker, [p.stream_id for t in topics for p in t.partitions])
    out = []
    for t in topics:
        ends = 0
        records = 0
        for p in t.partitions:
            start, end = await bounds(broker, p)
            ends += end
            records += end - start
        out.append(
            {
                "name": t.name,
                "partitions": len(t.partitions),
                "records": records,
                "size_bytes": sum(sizes.get(p.stream_id, 0) for p in t.partitions),
                "rate_records_per_s": round(rates.sample(t.name, ends), 1),
                "overrides": dict(t.overrides),
            }
        )
    return out


def get_topic(broker: Broker, name: str) -> Topic:
    topic = broker.topics.get(name)
    if topic is None:
        raise NotFound(f"no topic {name!r}")
    return topic


async def topic_view(broker: Broker, name: str, rates: OffsetRates) -> dict[str, Any]:
    topic = get_topic(broker, name)
    sizes = await stream_sizes(broker, [p.stream_id for p in topic.partitions])
    parts = []
    ends = 0
    for p in topic.partitions:
        start, end = await bounds(broker, p)
        ends += end
        parts.append(
            {
                "partition": p.partition,
                "owner": _owner(broker, p.owner),
                "leader_epoch": p.leader_epoch,
                "start_offset": start,
                "end_offset": end,
                "size_bytes": sizes.get(p.stream_id, 0),
            }
        )
    configs = [
        {"name": e.name, "value": e.value, "override": e.name in topic.overrides}
        for e in topic_config_entries(broker, topic)
    ]
    return {
        "name": topic.name,
        "topic_id": str(topic.topic_uuid),
        "partitions": parts,
        "configs": configs,
        "rate_records_per_s": round(rates.sample(topic.name, ends), 1),
    }


def decode_assignment(data: bytes) -> list[tuple[str, int]]:
    """The consumer protocol's assignment (version, [topic, [partition]]);
    [] for another protocol's bytes."""
    try:
        pos = 2
        (n,) = struct.unpack_from(">i", data, pos)
        pos += 4
        out: list[tuple[str, int]] = []
        for _ in range(max(n, 0)):
            (ln,) = struct.unpack_from(">h", data, pos)
            pos += 2
            topic = data[pos : pos + ln].decode()
            pos += ln
            (k,) = struct.unpack_from(">i", data, pos)
            pos += 4
            for _ in range(max(k, 0)):
                (p,) = struct.unpack_from(">i", data, pos)
                pos += 4
                out.append((topic, p))
        return sorted(out)
    except (struct.error, UnicodeDecodeError):
        return []


async def end_offsets(broker: Broker, keys: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    out = {}
    for t, p in keys:
        topic = broker.topics.get(t)
        if topic is None or not 0 <= p < len(topic.partitions):
            continue
        _start, end = await bounds(broker, topic.partitions[p])
        out[(t, p)] = end
    return out


async def groups_view(broker: Broker) -> list[dict[str, Any]]:
    """Groups this broker coordinates (every group on a single node)."""
    coord = broker.groups
    ids = {g for g, *_ in coord.list_groups()} | coord.offsets.group_ids()
    out = []
    for gid in sorted(ids):
        summary = coord.describe(gid)
        committed = coord.committed(gid)
        ends = await end_offsets(broker, list(committed))
        lag = sum(max(0, ends[k] - c.offset) for k, c in committed.items() if k in ends)
        out.append(
            {
                "group": gid,
                "state": summary.state,
                "members": len(summary.members),
                "partitions": len(committed),
                "lag": lag,
            }
        )
    return out


async def group_view(broker: Broker, gid: str) -> dict[str, Any]:
    coord = broker.groups
    summary = coord.describe(gid)
    committed = coord.committed(gid)
    if not committed and not summary.members and gid not in coord.offsets.group_ids():
        if summary.state.lower() == "dead":
            raise NotFound(f"no group {gid!r}")
    members = []
    assigned: dict[tuple[str, int], str] = {}
    for m in summary.members:
        parts = decode_assignment(m.assignment)
        for k in parts:
            assigned[k] = m.member_id
        members.append(
            {
                "member_id": m.member_id,
                "client_id": m.client_id,
                "host": m.client_host,
                "assignment": [f"{t}-{p}" for t, p in parts],
            }
        )
    keys = sorted(set(committed) | set(assigned))
    ends = await end_offsets(broker, keys)
    rows = []
    for k in keys:
        c = committed.get(k)
        end = ends.get(k)
        rows.append(
            {
                "topic": k[0],
                "partition": k[1],
                "committed": None if c is None else c.offset,
                "end_offset": end,
                "lag": None if c is None or end is None else max(0, end - c.offset),
                "member": assigned.get(k),
            }
        )
    return {
        "group": gid,
        "state": summary.state,
        "protocol": summary.protocol_data,
        "members": members,
        "offsets": rows,
        "lag": sum(r["lag"] or 0 for r in rows),
    }
