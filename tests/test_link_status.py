"""`shoal link status`'s reader (shoal.link.status) on a SQLite metadata
store, no broker: the link's groups on each mirror topic and their lag."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.link.status import status_data
from shoal.meta.groups import GroupRepository, OffsetRow, UpsertOffsets
from shoal.meta.links import LinkRow, LinkStore, Progress
from shoal.meta.store import MetaStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LinkStore]:
    meta = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    yield LinkStore(meta)
    await meta.close()


async def test_groups_matching_the_link_with_their_lag_per_mirror(store: LinkStore) -> None:
    await store.create(LinkRow("L", "src:9092", {}, "*", groups="billing*"))
    await store.create(LinkRow("M", "other:9092", {}, "*"))  # syncs no groups
    await store.add_mirror("orders", "L", "orders")
    await store.add_mirror("audit", "L", "audit")
    await store.add_mirror("logs", "M", "logs")
    await store.save_progress(
        [Progress("orders", 0, mirror_end=20), Progress("orders", 1, mirror_end=20)]
    )

    def off(group: str, topic: str, partition: int, offset: int) -> OffsetRow:
        return OffsetRow(group, topic, partition, offset, -1, "", 0)

    await GroupRepository(store.meta).apply(
        [
            UpsertOffsets(
                [
                    off("billing", "orders", 0, 5),
                    off("billing", "orders", 1, 7),
                    off("billing-eu", "orders", 1, 20),
                    off("shipping", "orders", 0, 1),  # not the link's --groups
                    off("billing", "logs", 0, 3),  # on link M's mirror: M syncs none
                    off("billing", "elsewhere", 0, 3),  # not a mirror topic
                ]
            )
        ]
    )
    rows = {r["mirror"]: r["groups"] for r in await status_data(store, None)}
    assert rows == {
        "audit": [],
        "orders": [
            {"group": "billing", "committed": {0: 5, 1: 7}, "lag": 15 + 13},
            {"group": "billing-eu", "committed": {1: 20}, "lag": 0},
        ],
        "logs": [],
    }
    assert [r["mirror"] for r in await status_data(store, "M")] == ["logs"]


async def test_rollback_reads_only_its_mirror_topics_offsets(store: LinkStore) -> None:
    """The groups a rollback moves back come from the mirror topics' offsets
    (by the topic index), with their metadata: not from every committed
    offset of every group here."""
    from typing import Any

    from sqlalchemy import event

    from shoal.link.rollback import _groups_here
    from shoal.link.spec import patterns

    await store.create(LinkRow("L", "src:9092", {}, "*", groups="billing*"))
    await store.add_mirror("orders", "L", "orders")
    await store.add_mirror("audit", "L", "audit")
    await GroupRepository(store.meta).apply(
        [
            UpsertOffsets(
                [
                    OffsetRow("billing", "orders", 0, 5, -1, "m0", 0),
                    OffsetRow("billing", "orders", 1, 7, 3, "", 0),
                    OffsetRow("billing", "audit", 0, -1, -1, "", 0),  # no offset: skipped
                    OffsetRow("shipping", "orders", 0, 1, -1, "", 0),  # not the groups asked
                    OffsetRow("billing", "elsewhere", 0, 3, -1, "x", 0),  # not a mirror topic
                ]
            )
        ]
    )
    _v, _links, mirrors = await store.load()
    seen: list[tuple[str, Any]] = []

    def hook(_conn: Any, _cursor: Any, statement: str, params: Any, *_rest: Any) -> None:
        seen.append((statement, params))

    engine = store.meta.engine.sync_engine
    event.listen(engine, "before_cursor_execute", hook)
    try:
        got = await _groups_here(store, patterns("billing*"), {m.mirror: m for m in mirrors})
    finally:
        event.remove(engine, "before_cursor_execute", hook)
    assert got == {"billing": {("orders", 0): (5, "m0"), ("orders", 1): (7, "")}}
    reads = [params for statement, params in seen if "group_offsets" in statement]
    assert reads, seen
    assert all(set(params) >= {"orders", "audit"} for params in reads), seen
    assert not [st for st, _p in seen if "consumer_groups" in st], "every group's row read"
