"""A cluster broker's catalog refresh reads the topics only when the store's
catalog changed (MetaStore.topics_if_changed): on PostgreSQL the server
digests the rows; every change another broker makes must still be seen."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event

from shoal.broker.topics import TopicCatalog
from shoal.config import load_config
from shoal.meta.cluster import ClusterStore, Move
from shoal.meta.store import MetaStore, PartitionRecord


def _loads(meta: MetaStore) -> tuple[list[str], Callable[[], None]]:
    """The statements that read the partitions table, and a way to stop counting."""
    seen: list[str] = []

    def on(_conn: Any, _cursor: Any, statement: str, *_a: Any) -> None:
        if "FROM partitions" in statement and "md5" not in statement:
            seen.append(statement)

    event.listen(meta.engine.sync_engine, "before_cursor_execute", on)
    return seen, lambda: event.remove(meta.engine.sync_engine, "before_cursor_execute", on)


async def test_an_unchanged_catalog_is_not_read_again(
    two_stores: tuple[MetaStore, MetaStore],
) -> None:
    ours, theirs = two_stores
    await theirs.create_topic("t1", 3, {"retention.ms": "60000"})
    catalog = TopicCatalog(ours, load_config())
    await catalog.refresh()
    before = catalog.get("t1")
    assert before is not None and len(before.partitions) == 3
    loads, stop = _loads(ours)
    try:
        for _ in range(3):
            assert await catalog.refresh() == []
    finally:
        stop()
    assert loads == []
    assert catalog.get("t1") is before  # the same objects: nothing rebuilt


async def _seen_after(
    catalog: TopicCatalog, change: Awaitable[Any], check: Callable[[TopicCatalog], bool]
) -> None:
    assert not check(catalog)
    await change
    await catalog.refresh()
    assert check(catalog)


async def test_every_kind_of_change_is_seen(two_stores: tuple[MetaStore, MetaStore]) -> None:
    ours, theirs = two_stores
    await theirs.create_topic("t1", 2, {"cleanup.policy": "delete"})
    catalog = TopicCatalog(ours, load_config())
    await catalog.refresh()

    def overrides(c: TopicCatalog) -> dict[str, str]:
        t = c.get("t1")
        assert t is not None
        return t.overrides

    await _seen_after(catalog, theirs.create_topic("t2", 1, {}), lambda c: c.get("t2") is not None)
    # a value of the same length, then a key added and removed again
    await _seen_after(
        catalog,
        theirs.set_topic_configs("t1", {"cleanup.policy": "compact"[:6]}),
        lambda c: overrides(c).get("cleanup.policy") == "compac",
    )
    await _seen_after(
        catalog,
        theirs.set_topic_configs("t1", {"retention.ms": "1000"}),
        lambda c: "retention.ms" in overrides(c),
    )
    await _seen_after(
        catalog,
        theirs.set_topic_configs("t1", {}, remove=["retention.ms"]),
        lambda c: "retention.ms" not in overrides(c),
    )
    t1 = catalog.get("t1")
    assert t1 is not None
    cluster = ClusterStore(theirs)
    p0 = t1.partitions[0]
    await _seen_after(
        catalog,
        cluster.apply_moves([Move(t1.id, 0, p0.stream_id, None, 7)]),
        lambda c: _owner(c, "t1", 0) == 7,
    )
    await _seen_after(
        catalog,
        cluster.apply_moves([Move(t1.id, 0, p0.stream_id, 7, 8)]),
        lambda c: _owner(c, "t1", 0) == 8,
    )
    await _seen_after(
        catalog,
        theirs.add_partitions("t1", 4),
        lambda c: len(c.get("t1").partitions) == 4,  # type: ignore[union-attr]
    )
    gone_before = catalog.get("t2")
    await theirs.delete_topic("t2")
    assert await catalog.refresh() == [gone_before]
    assert catalog.get("t2") is None


def _loaded(monkeypatch: pytest.MonkeyPatch, meta: MetaStore) -> list[list[str] | None]:
    """The names each catalog read loads (None: every topic)."""
    real = meta._load_topics
    seen: list[list[str] | None] = []

    async def load(conn: Any, names: Any) -> Any:
        seen.append(None if names is None else sorted(names))
        return await real(conn, names)

    monkeypatch.setattr(meta, "_load_topics", load)
    return seen


async def test_a_refresh_reads_only_the_topics_that_changed(
    two_stores: tuple[MetaStore, MetaStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While topics are being made, each change of the catalog's digest
    read every topic again (50 ms of the event loop for 10,000 partitions,
    up to 4 times a second); now only the topics whose own digest changed
    are read, and the rest stay the same objects."""
    ours, theirs = two_stores
    for name in ("t1", "t2", "t3", "t4", "t5"):
        await theirs.create_topic(name, 2, {})
    catalog = TopicCatalog(ours, load_config())
    loaded = _loaded(monkeypatch, ours)
    await catalog.refresh()
    assert loaded == [None]  # the first read: every topic
    before = {t.name: t for t in catalog.all()}
    await theirs.set_topic_configs("t2", {"retention.ms": "1000"})
    t3 = before["t3"]
    await ClusterStore(theirs).apply_moves([Move(t3.id, 1, t3.partitions[1].stream_id, None, 7)])
    await theirs.delete_topic("t4")
    await theirs.create_topic("t6", 1, {})
    await theirs.delete_topic("t5")
    await theirs.create_topic("t5", 3, {})  # the name again, a new topic
    gone = await catalog.refresh()
    assert loaded[1:] == [["t2", "t3", "t5", "t6"]]
    assert sorted(t.name for t in gone) == ["t4", "t5"]
    assert gone[0] is before["t4"] or gone[1] is before["t4"]
    assert catalog.get("t1") is before["t1"]  # unchanged: not rebuilt
    assert catalog.get("t4") is None
    assert catalog.get("t2").overrides == {"retention.ms": "1000"}  # type: ignore[union-attr]
    assert _owner(catalog, "t3", 1) == 7 and _owner(catalog, "t3", 0) is None
    assert len(catalog.get("t5").partitions) == 3  # type: ignore[union-attr]
    assert catalog.get("t6") is not None
    assert {t.name: t.id for t in catalog.all()} == {
        t.name: t.id for t in await theirs.list_topics()
    }
    assert await catalog.refresh() == [] and len(loaded) == 2  # nothing changed: nothing read
    for t in catalog.all():
        await theirs.delete_topic(t.name)
    assert len(await catalog.refresh()) == 5 and catalog.all() == []  # none left at all


def _owner(catalog: TopicCatalog, topic: str, partition: int) -> int | None:
    t = catalog.get(topic)
    assert t is not None
    return t.partitions[partition].owner


async def test_a_name_reused_by_a_new_topic_is_a_new_topic(
    two_stores: tuple[MetaStore, MetaStore],
) -> None:
    ours, theirs = two_stores
    name = f"t{uuid.uuid4().hex[:6]}"
    await theirs.create_topic(name, 1, {})
    catalog = TopicCatalog(ours, load_config())
    await catalog.refresh()
    old = catalog.get(name)
    await theirs.delete_topic(name)
    await theirs.create_topic(name, 1, {})
    assert await catalog.refresh() == [old]
    new = catalog.get(name)
    assert new is not None and old is not None and new.id != old.id


async def test_sqlite_has_no_digest_and_always_reads(tmp_path: Any) -> None:
    meta = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    try:
        await meta.create_topic("t1", 1, {})
        read = await meta.topics_if_changed(None)
        assert read is not None and read.digest is None and not read.partial
        assert [t.name for t in read.topics] == ["t1"]
        again = await meta.topics_if_changed(read.digest, {1: "anything"})
        assert again is not None and [t.name for t in again.topics] == ["t1"]
    finally:
        await meta.close()


def _paused_after_read(
    monkeypatch: pytest.MonkeyPatch, meta: MetaStore
) -> tuple[asyncio.Event, asyncio.Event]:
    """The next catalog read stops after reading until `go` is set."""
    real = meta.topics_if_changed
    read, go = asyncio.Event(), asyncio.Event()

    async def paused(digest: str | None, known: Any = None) -> Any:
        out = await real(digest, known)
        if not read.is_set():
            read.set()
            await go.wait()
        return out

    monkeypatch.setattr(meta, "topics_if_changed", paused)
    return read, go


async def test_a_refresh_that_read_before_a_local_create_keeps_the_topic(
    two_stores: tuple[MetaStore, MetaStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cluster mode: a refresh that read the store before this broker
    created a topic dropped it again (and the broker the partitions it had
    just opened) until the next refresh."""
    ours, theirs = two_stores
    catalog = TopicCatalog(ours, load_config())
    await catalog.refresh()
    await theirs.create_topic("other", 1, {})  # so that the refresh reads the topics
    read, go = _paused_after_read(monkeypatch, ours)
    refreshing = asyncio.create_task(catalog.refresh())
    await read.wait()
    created = await catalog.create("late", 2, {})
    go.set()
    assert await refreshing == []
    assert catalog.get("late") is created and catalog.get("other") is not None
    loaded = _loaded(monkeypatch, ours)
    assert await catalog.refresh() == []  # read again: the store has it too
    assert catalog.get("late") is not None
    assert loaded == [["late"]]  # the topic changed here during the read, alone


async def test_a_refresh_that_read_before_owners_were_given_keeps_them(
    two_stores: tuple[MetaStore, MetaStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read saw the new topic without owners; the owners given here
    afterwards (ClusterMember.assign_new) stay."""
    ours, _theirs = two_stores
    catalog = TopicCatalog(ours, load_config())
    topic = await catalog.create("t1", 1, {})
    read, go = _paused_after_read(monkeypatch, ours)
    refreshing = asyncio.create_task(catalog.refresh())
    await read.wait()
    p0 = topic.partitions[0]
    await ClusterStore(ours).apply_moves([Move(topic.id, 0, p0.stream_id, None, 3)])
    topic.partitions = [PartitionRecord(0, p0.stream_id, p0.leader_epoch + 1, 3)]
    catalog.touch("t1")
    go.set()
    assert await refreshing == []
    assert _owner(catalog, "t1", 0) == 3
    await catalog.refresh()
    assert _owner(catalog, "t1", 0) == 3


async def test_a_refresh_that_read_before_a_local_delete_does_not_bring_it_back(
    two_stores: tuple[MetaStore, MetaStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, _theirs = two_stores
    catalog = TopicCatalog(ours, load_config())
    await catalog.create("t1", 1, {})
    read, go = _paused_after_read(monkeypatch, ours)
    refreshing = asyncio.create_task(catalog.refresh())
    await read.wait()
    await catalog.delete("t1")
    go.set()
    await refreshing
    assert catalog.get("t1") is None


async def test_a_stream_finds_its_partitions_current_record(
    two_stores: tuple[MetaStore, MetaStore],
) -> None:
    """by_stream (the marker poller's lookup) gives the record a topic holds
    now: owners and epochs change by replacing a topic's records, and a
    record cached from before would say the old owner."""
    ours, theirs = two_stores
    await theirs.create_topic("t1", 2, {})
    catalog = TopicCatalog(ours, load_config())
    await catalog.refresh()
    topic = catalog.get("t1")
    assert topic is not None
    first, second = topic.partitions
    assert catalog.by_stream(second.stream_id) == (topic, second)
    moved = PartitionRecord(second.partition, second.stream_id, second.leader_epoch + 1, 7)
    topic.partitions = [first, moved]
    assert catalog.by_stream(second.stream_id) == (topic, moved)
    assert catalog.by_stream(-1) is None
    await theirs.create_topic("t2", 1, {})
    await catalog.refresh()
    t2 = catalog.get("t2")
    assert t2 is not None
    assert catalog.by_stream(t2.partitions[0].stream_id) == (t2, t2.partitions[0])
    assert catalog.stream_label(t2.partitions[0].stream_id) == (
        f'{{"topic":"t2","partition":0,"id":"{t2.topic_uuid.hex}"}}'
    )
