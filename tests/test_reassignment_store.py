"""A requested move ends (its reassignment row goes) whichever of the
controller's and the target's transactions comes first: the target may open
the partition as soon as the owner changes, before the controller's round is
over (CI once saw `shoal partitions move` wait its whole timeout for that)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cluster_harness import new_database
from shoal.cluster.controller import BalanceConfig, Controller
from shoal.meta.cluster import ClusterStore, Move
from shoal.meta.store import MetaStore


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ClusterStore]:
    url = f"sqlite:///{tmp_path}/meta.db" if request.param == "sqlite" else new_database()
    meta = await MetaStore.open(url)
    try:
        yield ClusterStore(meta)
    finally:
        await meta.close()


async def _topic(store: ClusterStore, owner: int) -> tuple[int, int]:
    """A one-partition topic owned by `owner`: (topic id, stream id)."""
    topic = await store.meta.create_topic(f"t{uuid.uuid4().hex[:8]}", 1, {})
    p = topic.partitions[0]
    moved = await store.apply_moves([Move(topic.id, 0, p.stream_id, None, owner)])
    assert len(moved) == 1
    return topic.id, p.stream_id


async def test_target_finishing_before_the_move_is_marked_ends_it(store: ClusterStore) -> None:
    tid, sid = await _topic(store, owner=1)
    topic = next(o.topic for o in await store.owners() if o.topic_id == tid)
    await store.request_move(topic, 0, 2)
    # The owner changes in one transaction, the target opens and finishes
    # before anything marks the request moved.
    assert len(await store.apply_moves([Move(tid, 0, sid, 1, 2)])) == 1
    await store.finish_moves(2, [(tid, 0)])
    assert await store.reassignments() == []


async def test_finishing_is_only_for_the_owner_it_was_moved_to(store: ClusterStore) -> None:
    tid, sid = await _topic(store, owner=1)
    topic = next(o.topic for o in await store.owners() if o.topic_id == tid)
    await store.request_move(topic, 0, 2)
    await store.finish_moves(2, [(tid, 0)])  # not its owner yet
    await store.finish_moves(1, [(tid, 0)])  # not the target
    [pending] = await store.reassignments()
    assert (pending.target_node, pending.moved_ms) == (2, None)
    moved = await store.apply_moves([Move(tid, 0, sid, 1, 2)], frozenset({(tid, 0)}))
    assert len(moved) == 1
    [marked] = await store.reassignments()
    assert marked.moved_ms is not None  # marked in the move's own transaction
    await store.finish_moves(2, [(tid, 0)])
    assert await store.reassignments() == []


async def test_a_move_to_the_current_owner_ends_in_the_controllers_round(
    store: ClusterStore,
) -> None:
    await store.register(1, "127.0.0.1", 9001, None, 60_000)
    tid, _sid = await _topic(store, owner=1)
    topic = next(o.topic for o in await store.owners() if o.topic_id == tid)
    await store.request_move(topic, 0, 1)
    assert await Controller(store, BalanceConfig(enable=False)).round() == []
    assert await store.reassignments() == []


async def test_finishing_many_opens_costs_statements_for_pending_moves_only(
    store: ClusterStore,
) -> None:
    """A broker that opens 10,000 partitions (its start, a lost lease) finishes
    their moves in one look-up plus a statement per pending move: a
    statement per partition made that reconcile take 4 s on PostgreSQL, and
    the lease lapsed."""
    from sqlalchemy import event

    tid, sid = await _topic(store, owner=1)
    topic = next(o.topic for o in await store.owners() if o.topic_id == tid)
    await store.request_move(topic, 0, 2)
    assert len(await store.apply_moves([Move(tid, 0, sid, 1, 2)])) == 1
    others = await store.meta.create_topic(f"t{uuid.uuid4().hex[:8]}", 200, {})
    opened = [(tid, 0)] + [(others.id, p.partition) for p in others.partitions]
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(store.meta.engine.sync_engine, "before_cursor_execute", seen)
    try:
        await store.finish_moves(2, opened)
    finally:
        event.remove(store.meta.engine.sync_engine, "before_cursor_execute", seen)
    assert await store.reassignments() == []
    work = [t for t in statements if t.split()[0] in ("SELECT", "DELETE")]
    assert len(work) == 2, work
