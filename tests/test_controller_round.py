"""The controller's round at a fleet's size: it reads the counts per broker
and the partitions no live broker owns, and every partition only when a
reassignment waits or balancing is due; a broker's per-partition load is
reported once a balance interval and parsed only when balancing reads it."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import event

from shoal.cluster.controller import BalanceConfig, Controller
from shoal.cluster.traffic import TrafficMeter
from shoal.meta.cluster import BrokerLoad, ClusterStore, Move
from shoal.meta.store import MetaStore


@pytest.fixture
def store(meta: MetaStore) -> ClusterStore:
    """On each engine (conftest's `meta`)."""
    return ClusterStore(meta)


async def _owned(store: ClusterStore, name: str, owners: list[int | None]) -> int:
    """A topic whose partition i is owned by owners[i]; its id."""
    topic = await store.meta.create_topic(name, len(owners), {})
    moves = [
        Move(topic.id, p.partition, p.stream_id, None, owner)
        for p, owner in zip(topic.partitions, owners, strict=True)
        if owner is not None
    ]
    assert len(await store.apply_moves(moves)) == len(moves)
    return topic.id


class _Selects:
    """The SELECTs sent to the database while it is entered."""

    def __init__(self, store: ClusterStore) -> None:
        self._engine = store.meta.engine.sync_engine
        self.seen: list[str] = []

    def _record(self, _conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            self.seen.append(" ".join(statement.split()))

    def __enter__(self) -> _Selects:
        event.listen(self._engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self._engine, "before_cursor_execute", self._record)


def _reads_every_partition(selects: list[str]) -> bool:
    """A SELECT of partition rows with no condition on their owner."""
    return any(
        "FROM partitions" in q and "GROUP BY" not in q and "owner_node IS NULL" not in q
        for q in selects
    )


async def test_owner_counts_and_orphans(store: ClusterStore) -> None:
    await _owned(store, "b-topic", [1, 2, None, 1])
    await _owned(store, "a-topic", [3, 1])
    assert await store.owner_counts() == {1: 3, 2: 1, 3: 1, None: 1}
    orphans = await store.owners(not_owned_by=[1, 3])
    # by topic name, then partition, as the whole list is
    assert [(o.topic, o.partition, o.owner) for o in orphans] == [
        ("b-topic", 1, 2),
        ("b-topic", 2, None),
    ]
    assert [(o.topic, o.partition) for o in await store.owners()] == [
        ("a-topic", 0),
        ("a-topic", 1),
        ("b-topic", 0),
        ("b-topic", 1),
        ("b-topic", 2),
        ("b-topic", 3),
    ]


async def test_a_round_with_nothing_waiting_reads_only_the_orphans(store: ClusterStore) -> None:
    await store.register(1, "127.0.0.1", 9001, None, 60_000)
    await store.register(2, "127.0.0.1", 9002, None, 60_000)
    tid = await _owned(store, "fleet", [1] * 150 + [2] * 149 + [None])
    controller = Controller(store, BalanceConfig(enable=False))
    with _Selects(store) as selects:
        moves = await controller.round()
    assert not _reads_every_partition(selects.seen), selects.seen
    # the orphan goes to the broker with fewer partitions
    assert [(m.topic_id, m.partition, m.old_owner, m.new_owner) for m in moves] == [
        (tid, 299, None, 2)
    ]
    assert await store.owner_counts() == {1: 150, 2: 150}
    with _Selects(store) as selects:
        assert await controller.round() == []
    assert not _reads_every_partition(selects.seen), selects.seen


async def test_a_dead_brokers_partitions_are_handed_on(store: ClusterStore) -> None:
    await store.register(1, "127.0.0.1", 9001, None, 60_000)
    await _owned(store, "fleet", [1, 1, 7, 7])  # broker 7 never registered
    moves = await Controller(store, BalanceConfig(enable=False)).round()
    assert sorted((m.partition, m.old_owner, m.new_owner) for m in moves) == [(2, 7, 1), (3, 7, 1)]
    assert await store.owner_counts() == {1: 4}


async def test_a_waiting_reassignment_and_due_balancing_still_read_everything(
    store: ClusterStore,
) -> None:
    await store.register(1, "127.0.0.1", 9001, None, 60_000)
    await store.register(2, "127.0.0.1", 9002, None, 60_000)
    await _owned(store, "fleet", [1, 1, 1, 1])
    await store.request_move("fleet", 0, 2)
    controller = Controller(store, BalanceConfig(enable=True, interval_ms=3_600_000))
    with _Selects(store) as selects:
        moves = await controller.round()
    assert _reads_every_partition(selects.seen)
    assert [(m.partition, m.new_owner) for m in moves] == [(0, 2)]
    # balancing was due too, but a round with moves leaves it for the next
    moves = await controller.round()
    assert len(moves) == 1 and moves[0].old_owner == 1 and moves[0].new_owner == 2
    assert await store.owner_counts() == {1: 2, 2: 2}
    # and within the interval it is not due again: no whole read
    with _Selects(store) as selects:
        assert await controller.round() == []
    assert not _reads_every_partition(selects.seen), selects.seen


async def test_a_broker_load_is_kept_until_reported_again(store: ClusterStore) -> None:
    incarnation = await store.register(1, "127.0.0.1", 9001, None, 60_000)
    assert await store.renew(1, incarnation, 60_000, 10, 20, '{"5:0": [10, 20]}')
    [row] = await store.live_brokers()
    assert isinstance(row.load, BrokerLoad)
    assert dict(row.load) == {"5:0": [10, 20]}
    assert (row.bytes_in, row.bytes_out) == (10, 20)
    # a heartbeat without the partitions' rates leaves the last ones
    assert await store.renew(1, incarnation, 60_000, 30, 40, None)
    [row] = await store.live_brokers()
    assert dict(row.load) == {"5:0": [10, 20]}
    assert (row.bytes_in, row.bytes_out) == (30, 40)


def test_a_load_that_is_not_a_json_object_reads_as_none() -> None:
    assert dict(BrokerLoad("not json")) == {}
    assert dict(BrokerLoad("[1, 2]")) == {}
    assert dict(BrokerLoad(None)) == {}
    assert BrokerLoad('{"1:2": [3, 4]}')["1:2"] == [3, 4]


def test_the_meter_reports_totals_every_call_and_partitions_once_a_window() -> None:
    meter = TrafficMeter(window_s=10.0, now=100.0)
    meter.record(1, 0, 1000, 0)
    meter.record(1, 1, 500, 2000)
    assert meter.rates(now=101.0) == (1500, 2000, None)
    meter.record(1, 0, 3000, 0)
    assert meter.rates(now=103.0) == (1500, 0, None)
    meter.record(2, 0, 0, 700)
    rate_in, rate_out, window = meter.rates(now=110.0)
    assert (rate_in, rate_out) == (0, 100)
    assert window is not None
    # over the whole window: partition 1:0 took 4,000 bytes in 10 s
    assert window.as_dict() == {"1:0": [400, 0], "1:1": [50, 200], "2:0": [0, 70]}
    assert json.loads(window.to_json()) == window.as_dict()
    assert meter.rates(now=111.0) == (0, 0, None)
