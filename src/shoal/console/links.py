"""The console's migration-link pages: every link, and per link its mirror
topics partition by partition, the consumer groups it syncs and the copy
back to the source after `promote --reverse`.

Read through shoal.link.status, the reader `shoal link status` prints, so
the console and the CLI never disagree; the console adds what only a
running broker knows: bytes per second (sampled from the bytes copied) and
the synced groups' lag here.
"""

from __future__ import annotations

from typing import Any

from shoal.broker.broker import Broker
from shoal.console.data import NotFound, OffsetRates, end_offsets
from shoal.link.spec import matches, patterns
from shoal.link.status import link_summaries
from shoal.meta.links import LinkNotFound, LinkStore


async def links_view(broker: Broker) -> list[dict[str, Any]]:
    """Every link: source, state, mirror topics, total lag, errors."""
    rows = await link_summaries(LinkStore(broker.meta))
    return [
        {**{k: v for k, v in r.items() if k != "mirrors"}, "mirror_topics": _names(r)} for r in rows
    ]


def _names(link: dict[str, Any]) -> list[str]:
    return [m["mirror"] for m in link["mirrors"]]


async def link_view(broker: Broker, name: str, rates: OffsetRates) -> dict[str, Any]:
    """One link with its mirrors' partitions (bytes/s added) and synced groups."""
    try:
        [link] = await link_summaries(LinkStore(broker.meta), name)
    except LinkNotFound:
        raise NotFound(f"no link {name!r}") from None
    for m in link["mirrors"]:
        total = 0.0
        for p in m["partitions"]:
            key = f"{name}\0{m['mirror']}\0{p['partition']}"
            p["bytes_per_s"] = round(rates.sample(key, p["bytes"]), 1)
            total += p["bytes_per_s"]
        m["bytes_per_s"] = round(total, 1)
    link["synced_groups"] = await synced_groups(broker, link["groups"], set(_names(link)))
    return link


async def synced_groups(
    broker: Broker, group_patterns: str, mirrors: set[str]
) -> list[dict[str, Any]]:
    """Groups matching the link's --groups that have offsets on its mirror
    topics here (what the link's sync copied, or consumers committed since),
    with their lag on those topics. In a cluster: the groups this broker
    coordinates."""
    pats = patterns(group_patterns)
    if not pats or not mirrors:
        return []
    coord = broker.groups
    ids = {g for g, *_ in coord.list_groups()} | coord.offsets.group_ids()
    out = []
    for gid in sorted(g for g in ids if matches(pats, g)):
        committed = {k: c for k, c in coord.committed(gid).items() if k[0] in mirrors}
        if not committed:
            continue
        ends = await end_offsets(broker, list(committed))
        summary = coord.describe(gid)
        out.append(
            {
                "group": gid,
                "state": summary.state,
                "members": len(summary.members),
                "partitions": len(committed),
                "lag": sum(max(0, ends[k] - c.offset) for k, c in committed.items() if k in ends),
            }
        )
    return out
