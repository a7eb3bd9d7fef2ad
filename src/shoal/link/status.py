"""What `shoal link status` prints and the console's link pages show, read
from the link tables: per mirror topic its state, lag, bytes copied, errors
and reverse copy; per link the same summed up. One reader for both, so the
CLI and the console never disagree."""

from __future__ import annotations

import time
from typing import Any

from shoal.link.spec import matches, patterns, redact
from shoal.meta.links import LinkNotFound, LinkRow, LinkStore, Progress, ReverseProgress


async def status_data(store: LinkStore, name: str | None) -> list[dict[str, Any]]:
    """One dict per mirror topic (of link `name`, or of every link);
    LinkNotFound names an unknown link."""
    _v, links, mirrors = await store.load()
    if name is not None and name not in {row.name for row in links}:
        raise LinkNotFound(f"no link named {name!r}")
    progress: dict[str, list[Progress]] = {}
    for p in await store.progress():
        progress.setdefault(p.mirror, []).append(p)
    reverse = {r.mirror: r for r in await store.reverse()}
    back: dict[str, list[ReverseProgress]] = {}
    for rp in await store.reverse_progress():
        back.setdefault(rp.mirror, []).append(rp)
    pats = {row.name: patterns(row.groups) for row in links}
    synced = [m.mirror for m in mirrors if pats[m.link] and name in (None, m.link)]
    # mirror topic -> group -> partition -> committed offset
    offsets: dict[str, dict[str, dict[int, int]]] = {}
    for group, topic, partition, offset in await store.committed_on(synced):
        offsets.setdefault(topic, {}).setdefault(group, {})[partition] = offset
    out = []
    now = int(time.time() * 1000)
    for m in mirrors:
        if name is not None and m.link != name:
            continue
        parts = progress.get(m.mirror, [])
        mine = {g: c for g, c in offsets.get(m.mirror, {}).items() if matches(pats[m.link], g)}
        seconds = [p.lag_seconds(now) for p in parts]
        out.append(
            {
                "link": m.link,
                "mirror": m.mirror,
                "source_topic": m.source_topic,
                "state": m.state,
                "lag_records": sum(p.lag for p in parts),
                # None: some partition has not yet caught up once
                "lag_seconds": (
                    None if None in seconds else max((x or 0.0 for x in seconds), default=0.0)
                ),
                "bytes": sum(p.bytes for p in parts),
                "partitions": [
                    {
                        "partition": p.partition,
                        "source_start": p.source_start,
                        "source_end": p.source_end,
                        "mirror_end": p.mirror_end,
                        "lag": p.lag,
                        "lag_seconds": p.lag_seconds(now),
                        "bytes": p.bytes,
                        "promoted": p.promoted,
                        "error": p.error,
                        "updated_ms": p.updated_ms,
                    }
                    for p in parts
                ],
                "errors": sorted({p.error for p in parts if p.error}),
                "groups": _groups_dict(mine, {p.partition: p.mirror_end for p in parts}),
                "reverse": _reverse_dict(reverse[m.mirror].state, back.get(m.mirror, []))
                if m.mirror in reverse
                else None,
            }
        )
    return out


def _groups_dict(by_group: dict[str, dict[int, int]], ends: dict[int, int]) -> list[dict[str, Any]]:
    """The link's groups with offsets on a mirror topic (copied by the
    group sync, or committed here since): their lag against the mirror's end
    as the link last saved it."""
    return [
        {
            "group": gid,
            "committed": dict(sorted(parts.items())),
            "lag": sum(max(0, ends.get(p, off) - off) for p, off in parts.items()),
        }
        for gid, parts in sorted(by_group.items())
    ]


def _reverse_dict(state: str, parts: list[ReverseProgress]) -> dict[str, Any]:
    """A reversed topic's copy back to the source, for status."""
    return {
        "state": state,
        "lag_records": sum(p.lag for p in parts),
        "bytes": sum(p.bytes for p in parts),
        "recovered": sum(p.recovered for p in parts),
        "partitions": [
            {
                "partition": p.partition,
                "shoal_end": p.shoal_end,
                "copied_to": p.copied_to,
                "source_end": p.source_end,
                "lag": p.lag,
                "recovered": p.recovered,
                "stopped": p.stopped,
                "error": p.error,
                "updated_ms": p.updated_ms,
            }
            for p in parts
        ],
        "errors": sorted({p.error for p in parts if p.error}),
    }


def link_dict(row: LinkRow, reverse: dict[str, str]) -> dict[str, Any]:
    """A link's settings (passwords hidden), as `shoal link list` prints them."""
    return {
        "name": row.name,
        "source": row.source,
        "settings": redact(row.settings),
        "topics": row.topics,
        "groups": row.groups,
        "prefix": row.prefix,
        "state": "paused" if row.paused else "active",
        "write_through": row.write_through,
        "reverse": reverse,  # promoted topic -> reverse copy state
    }


async def link_summaries(store: LinkStore, name: str | None = None) -> list[dict[str, Any]]:
    """Per link (or link `name`): its settings (link_dict) with its mirror
    topics' status (status_data) under "mirrors", and their lag and errors
    summed up."""
    _v, links, _m = await store.load()
    if name is not None and name not in {row.name for row in links}:
        raise LinkNotFound(f"no link named {name!r}")
    mirrors = await status_data(store, name)
    out = []
    for row in links:
        if name is not None and row.name != name:
            continue
        mine = [m for m in mirrors if m["link"] == row.name]
        seconds = [m["lag_seconds"] for m in mine]
        errors = {e for m in mine for e in m["errors"]}
        errors |= {e for m in mine if m["reverse"] for e in m["reverse"]["errors"]}
        reverse = {m["mirror"]: m["reverse"]["state"] for m in mine if m["reverse"]}
        out.append(
            {
                **link_dict(row, reverse),
                "created_ms": row.created_ms,
                "mirror_count": len(mine),
                "lag_records": sum(m["lag_records"] for m in mine),
                "lag_seconds": None if None in seconds else max(seconds, default=0.0),
                "bytes": sum(m["bytes"] for m in mine),
                "errors": sorted(errors),
                "mirrors": mine,
            }
        )
    return out
