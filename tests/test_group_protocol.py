"""The group coordinator: its state machine without sockets, then the Kafka error
codes of every bad input over the raw protocol (kio requests, no client library
to paper over an answer).

State-machine tests run the coordinator on a throwaway SQLite file with short
timeouts; waits are bounded polls, never sleeps that assume a speed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
import struct
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader

from harness import BrokerProcess, eventually
from shoal.group.coordinator import (
    GroupConfig,
    GroupCoordinator,
    JoinRequest,
    JoinResult,
    State,
    SyncResult,
)
from shoal.group.offsets import CommittedOffset
from shoal.meta.store import MetaStore
from wire import RawClient, request_frame

WAIT = 10.0

# --------------------------------------------------------------------------- unit


def subscription(*topics: str) -> bytes:
    """ConsumerProtocolSubscription v0: version, topics, user data."""
    out = struct.pack(">hi", 0, len(topics))
    for t in topics:
        out += struct.pack(">h", len(t)) + t.encode()
    return out + struct.pack(">i", -1)


def join_req(
    group: str,
    member_id: str = "",
    *,
    instance: str | None = None,
    session_ms: int = 10_000,
    rebalance_ms: int = 10_000,
    protocols: tuple[tuple[str, bytes], ...] = (("range", b"m"),),
    protocol_type: str = "consumer",
    known_id: bool = False,
    client: str = "c",
) -> JoinRequest:
    return JoinRequest(
        group_id=group,
        member_id=member_id,
        group_instance_id=instance,
        client_id=client,
        client_host="/127.0.0.1",
        session_timeout_ms=session_ms,
        rebalance_timeout_ms=rebalance_ms,
        protocol_type=protocol_type,
        protocols=protocols,
        require_known_member_id=known_id,
    )


async def result(fut: asyncio.Future[Any]) -> Any:
    return await asyncio.wait_for(fut, WAIT)


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[GroupCoordinator]:
    meta = await MetaStore.open(f"sqlite:///{tmp_path / 'meta.db'}")
    c = await GroupCoordinator.open(
        meta, GroupConfig(min_session_timeout_ms=10, initial_rebalance_delay_ms=0)
    )
    yield c
    await c.close()
    await meta.close()


async def stable_group(c: GroupCoordinator, group: str, n: int, **kw: Any) -> list[JoinResult]:
    """n members joined at once and synced; returns their join results."""
    futs = [c.join(join_req(group, client=f"c{i}", **kw)) for i in range(n)]
    first = await result(futs[0])
    if n > 1:
        # The first join completed alone (no delay); everyone joins the next generation.
        rejoin = c.join(join_req(group, first.member_id, client="c0", **kw))
        joins = [await result(rejoin)] + [await result(f) for f in futs[1:]]
    else:
        joins = [first]
    leader = next(j for j in joins if j.member_id == j.leader)
    assignments = {j.member_id: f"a-{j.member_id}".encode() for j in joins}
    syncs = [
        c.sync(
            group, j.generation, j.member_id, None, None, None, assignments if j is leader else {}
        )
        for j in joins
    ]
    for j, s in zip(joins, syncs, strict=True):
        r: SyncResult = await result(s)
        assert r.error == ErrorCode.none
        assert r.assignment == f"a-{j.member_id}".encode()
    assert c.groups[group].state is State.STABLE
    return joins


async def test_join_sync_stable(coordinator: GroupCoordinator) -> None:
    """Three members: one generation, one leader who alone sees the member list,
    each gets the assignment the leader made for it."""
    joins = await stable_group(coordinator, "g1", 3)
    assert len({j.generation for j in joins}) == 1
    leaders = [j for j in joins if j.member_id == j.leader]
    assert len(leaders) == 1 and len(leaders[0].members) == 3
    assert all(not j.members for j in joins if j is not leaders[0])
    assert all(j.protocol_name == "range" for j in joins)


async def test_member_id_required_round_trip(coordinator: GroupCoordinator) -> None:
    """KIP-394: an empty member id gets MEMBER_ID_REQUIRED and an id, which
    joins on the second try."""
    first = await result(coordinator.join(join_req("g2", known_id=True)))
    assert first.error == ErrorCode.member_id_required and first.member_id
    assert "g2" not in coordinator.groups or not coordinator.groups["g2"].members
    second = await result(coordinator.join(join_req("g2", first.member_id, known_id=True)))
    assert second.error == ErrorCode.none
    assert second.member_id == first.member_id == second.leader


async def test_protocol_selection(coordinator: GroupCoordinator) -> None:
    """The common protocol most members prefer wins; an incompatible one is refused."""
    rr_first = (("roundrobin", b"1"), ("range", b"1"))
    a = coordinator.join(join_req("g3", protocols=rr_first))
    first = await result(a)
    assert first.protocol_name == "roundrobin"  # alone, it gets its first choice
    futs = [
        coordinator.join(join_req("g3", protocols=(("range", b"2"), ("roundrobin", b"2")))),
        coordinator.join(join_req("g3", protocols=(("range", b"3"), ("sticky", b"3")))),
        coordinator.join(join_req("g3", first.member_id, protocols=rr_first)),
    ]
    results = [await result(f) for f in futs]
    assert {r.protocol_name for r in results} == {"range"}
    bad = await result(coordinator.join(join_req("g3", protocols=(("other", b""),))))
    assert bad.error == ErrorCode.inconsistent_group_protocol
    wrong_type = await result(coordinator.join(join_req("g3", protocol_type="connect")))
    assert wrong_type.error == ErrorCode.inconsistent_group_protocol


async def test_session_expiry_rebalances(coordinator: GroupCoordinator) -> None:
    """A member that stops heartbeating is removed after its session timeout; the
    survivor is told to rejoin and ends up alone in the next generation."""
    joins = await stable_group(coordinator, "g4", 2, session_ms=300)
    live, dead = joins
    group = coordinator.groups["g4"]
    gen = group.generation

    async def keep_alive() -> ErrorCode:
        while True:
            code = coordinator.heartbeat("g4", gen, live.member_id, None)
            if code != ErrorCode.none:
                return code
            await asyncio.sleep(0.05)

    code = await asyncio.wait_for(keep_alive(), WAIT)
    assert code == ErrorCode.rebalance_in_progress
    assert dead.member_id not in group.members
    again = await result(coordinator.join(join_req("g4", live.member_id, session_ms=300)))
    assert again.error == ErrorCode.none and again.generation == gen + 1
    assert [m.member_id for m in again.members] == [live.member_id]
    assert coordinator.heartbeat("g4", gen, live.member_id, None) == ErrorCode.illegal_generation
    assert coordinator.heartbeat("g4", gen + 1, dead.member_id, None) == (
        ErrorCode.unknown_member_id
    )


async def test_rebalance_timeout_drops_laggards(coordinator: GroupCoordinator) -> None:
    """A member that does not rejoin within the rebalance timeout is dropped and
    the rebalance completes without it."""
    a, b = await stable_group(coordinator, "g5", 2, rebalance_ms=200, session_ms=60_000)
    # A rejoins with new protocols (a new subscription): the group rebalances, B never rejoins.
    fut = coordinator.join(
        join_req(
            "g5", a.member_id, rebalance_ms=200, session_ms=60_000, protocols=(("range", b"new"),)
        )
    )
    r = await result(fut)
    assert r.error == ErrorCode.none and r.generation == a.generation + 1
    assert b.member_id not in coordinator.groups["g5"].members


async def test_leader_leaves_during_sync(coordinator: GroupCoordinator) -> None:
    """If the leader leaves before sending assignments, followers waiting in
    SyncGroup get REBALANCE_IN_PROGRESS, not a hang."""
    first = await result(coordinator.join(join_req("g6")))
    # The newcomer first: a rejoin while the group still completes generation 1
    # with unchanged protocols would just be answered with generation 1 again.
    futs = [coordinator.join(join_req("g6")), coordinator.join(join_req("g6", first.member_id))]
    j1, j2 = [await result(f) for f in futs]
    leader, follower = (j1, j2) if j1.member_id == j1.leader else (j2, j1)
    waiting = coordinator.sync("g6", follower.generation, follower.member_id, None, None, None, {})
    assert not waiting.done()
    _, codes = coordinator.leave("g6", [(leader.member_id, None)])
    assert codes == [ErrorCode.none]
    assert (await result(waiting)).error == ErrorCode.rebalance_in_progress


async def test_static_member_restart_keeps_assignment(coordinator: GroupCoordinator) -> None:
    """KIP-345: a static member rejoining with an empty member id replaces its old
    identity in a stable group: same generation, same assignment, no rebalance of
    the others; the old member id is fenced."""
    futs = [coordinator.join(join_req("g7", instance=f"i{i}")) for i in range(2)]
    first = await result(futs[0])
    rejoin = coordinator.join(join_req("g7", first.member_id, instance="i0"))
    joins = [await result(rejoin), await result(futs[1])]
    leader = next(j for j in joins if j.member_id == j.leader)
    syncs = [
        coordinator.sync(
            "g7",
            j.generation,
            j.member_id,
            f"i{k}",
            None,
            None,
            {x.member_id: f"p{n}".encode() for n, x in enumerate(joins)} if j is leader else {},
        )
        for k, j in enumerate(joins)
    ]
    for s in syncs:
        assert (await result(s)).error == ErrorCode.none
    group = coordinator.groups["g7"]
    gen = group.generation
    old = joins[1]
    restarted = await result(coordinator.join(join_req("g7", instance="i1")))
    assert restarted.error == ErrorCode.none
    assert restarted.member_id != old.member_id and restarted.generation == gen
    assert restarted.leader != restarted.member_id or old.member_id == old.leader
    assert group.state is State.STABLE and group.generation == gen
    s = await result(coordinator.sync("g7", gen, restarted.member_id, "i1", None, None, {}))
    assert s.assignment == b"p1"
    other = joins[0]
    assert coordinator.heartbeat("g7", gen, other.member_id, "i0") == ErrorCode.none
    assert coordinator.heartbeat("g7", gen, old.member_id, "i1") == ErrorCode.fenced_instance_id


async def test_static_leader_restart_skips_assignment(coordinator: GroupCoordinator) -> None:
    """KIP-814 (JoinGroup v9): a restarted static leader is told it leads, with the
    member list, but to skip computing an assignment the stable group keeps."""
    first = await result(coordinator.join(join_req("g13", instance="lead")))
    s = coordinator.sync(
        "g13", first.generation, first.member_id, "lead", None, None, {first.member_id: b"mine"}
    )
    assert (await result(s)).assignment == b"mine"
    req = dataclasses.replace(join_req("g13", instance="lead"), supports_skip_assignment=True)
    again = await result(coordinator.join(req))
    assert again.error == ErrorCode.none and again.generation == first.generation
    assert again.skip_assignment and again.leader == again.member_id != first.member_id
    assert [m.member_id for m in again.members] == [again.member_id]
    s = coordinator.sync("g13", again.generation, again.member_id, "lead", None, None, {})
    assert (await result(s)).assignment == b"mine"


async def test_member_that_never_syncs_is_dropped(coordinator: GroupCoordinator) -> None:
    """A member that joins a generation but never sends SyncGroup is removed after
    the rebalance timeout, and the group rebalances without it."""
    first = await result(coordinator.join(join_req("g14", rebalance_ms=1000)))
    futs = [
        coordinator.join(join_req("g14", rebalance_ms=1000)),
        coordinator.join(join_req("g14", first.member_id, rebalance_ms=1000)),
    ]
    a, b = [await result(f) for f in futs]
    leader = a if a.member_id == a.leader else b
    silent = b if leader is a else a
    s = coordinator.sync("g14", leader.generation, leader.member_id, None, None, None, {})
    assert (await result(s)).error == ErrorCode.none
    group = coordinator.groups["g14"]
    await eventually(lambda: silent.member_id not in group.members, "the silent member to go", WAIT)
    again = await result(coordinator.join(join_req("g14", leader.member_id, rebalance_ms=1000)))
    assert again.error == ErrorCode.none and again.generation == leader.generation + 1
    assert [m.member_id for m in again.members] == [leader.member_id]


async def test_initial_rebalance_delay_gathers_members(tmp_path: Path) -> None:
    """With group.initial.rebalance.delay.ms, members arriving together land in
    the first generation instead of causing one rebalance each."""
    meta = await MetaStore.open(f"sqlite:///{tmp_path / 'meta.db'}")
    c = await GroupCoordinator.open(
        meta, GroupConfig(min_session_timeout_ms=10, initial_rebalance_delay_ms=100)
    )
    try:
        futs = [c.join(join_req("g8", client=f"c{i}")) for i in range(3)]
        results = [await result(f) for f in futs]
        assert {r.generation for r in results} == {1}
        assert sum(len(r.members) for r in results) == 3
    finally:
        await c.close()
        await meta.close()


async def test_group_max_size(tmp_path: Path) -> None:
    meta = await MetaStore.open(f"sqlite:///{tmp_path / 'meta.db'}")
    c = await GroupCoordinator.open(
        meta, GroupConfig(min_session_timeout_ms=10, initial_rebalance_delay_ms=0, max_size=1)
    )
    try:
        assert (await result(c.join(join_req("g9")))).error == ErrorCode.none
        assert (await result(c.join(join_req("g9")))).error == ErrorCode.group_max_size_reached
    finally:
        await c.close()
        await meta.close()


async def test_commit_checks(coordinator: GroupCoordinator) -> None:
    """Generation and member checks of OffsetCommit, as Kafka makes them."""
    (j,) = await stable_group(coordinator, "g10", 1)
    check = coordinator.check_commit
    assert check("g10", j.generation, j.member_id, None) == ErrorCode.none
    assert check("g10", j.generation + 1, j.member_id, None) == ErrorCode.illegal_generation
    assert check("g10", j.generation, "nobody", None) == ErrorCode.unknown_member_id
    assert check("g10", -1, "", None) == ErrorCode.unknown_member_id  # live group: members only
    assert check("nogroup", 3, "m", None) == ErrorCode.illegal_generation
    assert check("simple", -1, "", None) == ErrorCode.none
    assert coordinator.groups["simple"].state is State.EMPTY


async def test_offsets_persist_and_expire(tmp_path: Path) -> None:
    """Commits are durable across a coordinator restart; an empty group's offsets
    expire after the retention, taking the group with them; a live group's do not."""
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    cfg = GroupConfig(
        min_session_timeout_ms=10, initial_rebalance_delay_ms=0, offsets_retention_ms=60_000
    )
    meta = await MetaStore.open(url)
    c = await GroupCoordinator.open(meta, cfg)
    assert c.check_commit("simple", -1, "", None) == ErrorCode.none
    await c.commit("simple", {("t", 0): CommittedOffset(42, 3, "meta", 1_000)})
    await stable_group(c, "live", 1)
    await c.commit("live", {("t", 0): CommittedOffset(7, -1, "", 1_000)})
    await c.close()
    await meta.close()

    meta = await MetaStore.open(url)
    c = await GroupCoordinator.open(meta, cfg)
    try:
        assert c.committed("simple")[("t", 0)] == CommittedOffset(42, 3, "meta", 1_000)
        assert c.committed("live")[("t", 0)].offset == 7
        assert c.groups["live"].state is State.EMPTY  # members rejoin after a restart
        await stable_group(c, "live", 1)
        now = c.groups["simple"].state_ms + 60_000
        assert await c.expire_offsets(now) == 1
        assert "simple" not in c.groups and not c.committed("simple")
        assert c.committed("live")[("t", 0)].offset == 7
    finally:
        await c.close()
        await meta.close()


async def test_topic_deleted_forgets_offsets(coordinator: GroupCoordinator) -> None:
    await coordinator.commit(
        "g11", {("a", 0): CommittedOffset(1, -1, "", 1), ("b", 0): CommittedOffset(2, -1, "", 1)}
    )
    await coordinator.topic_deleted("a")
    assert dict(coordinator.committed("g11")) == {("b", 0): CommittedOffset(2, -1, "", 1)}


async def test_concurrent_commits_share_transactions(coordinator: GroupCoordinator) -> None:
    """Commits queued while a transaction runs are written together."""
    before = coordinator.offsets.transactions
    futs = [
        coordinator.commit("g12", {("t", i % 8): CommittedOffset(i, -1, "", 1)}) for i in range(500)
    ]
    await asyncio.wait_for(asyncio.gather(*futs), WAIT)
    assert coordinator.offsets.transactions - before < 500
    assert {k: v.offset for k, v in coordinator.committed("g12").items()} == {
        ("t", k): max(i for i in range(500) if i % 8 == k) for k in range(8)
    }


# --------------------------------------------------------------------------- wire

pytestmark_wire = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's own error paths"
)

ENV = {
    "SHOAL_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    "SHOAL_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
    "SHOAL_GROUP_MAX_SESSION_TIMEOUT_MS": "60000",
    "SHOAL_OFFSET_METADATA_MAX_BYTES": "100",
}


@pytest.fixture(scope="module")
def gbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("groups") / "data", env=ENV).start()
    yield b
    b.stop()


def send(c: RawClient, api: int, version: int, body: Any, cid: int = 1) -> None:
    c.send_raw(request_frame(api, version, body, cid))


def recv(c: RawClient, api: int, version: int) -> Any:
    frame = c.read_frame()
    resp = load_response_schema(api, version)
    pos = 4 + (1 if resp.__flexible__ else 0)
    return entity_reader(resp)(frame, pos)[0]


def _make(cls: Any, fields: dict[str, Any]) -> Any:
    """Build a kio entity from a superset of its fields (versions differ)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in fields.items() if k in names})


def req(api: int, version: int, **fields: Any) -> Any:
    return _make(load_request_schema(api, version), fields)


def nested(api: int, version: int, cls_name: str, **fields: Any) -> Any:
    module = sys.modules[load_request_schema(api, version).__module__]
    return _make(getattr(module, cls_name), fields)


def ms(n: int) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=n)


def create_topic(bootstrap: str, name: str, partitions: int = 2) -> None:
    from kio.schema.create_topics.v7 import request as ct

    body = ct.CreateTopicsRequest(
        topics=(
            ct.CreatableTopic(
                name=name,
                num_partitions=partitions,
                replication_factor=-1,
                assignments=(),
                configs=(),
            ),
        ),
        timeout=datetime.timedelta(seconds=10),
        validate_only=False,
    )
    with RawClient(bootstrap) as c:
        code = c.call(19, 7, body).topics[0].error_code
    assert code in (ErrorCode.none, ErrorCode.topic_already_exists)


def join(
    c: RawClient,
    group: str,
    member_id: str = "",
    *,
    version: int = 5,
    session: int = 10_000,
    topics: tuple[str, ...] = ("t",),
    instance: str | None = None,
) -> Any:
    protocols = (
        nested(
            11, version, "JoinGroupRequestProtocol", name="range", metadata=subscription(*topics)
        ),
    )
    body = req(
        11,
        version,
        group_id=group,
        session_timeout=ms(session),
        rebalance_timeout=ms(10_000),
        member_id=member_id,
        group_instance_id=instance,
        protocol_type="consumer",
        protocols=protocols,
        reason=None,
    )
    return c.call(11, version, body)


def sync(
    c: RawClient,
    group: str,
    generation: int,
    member_id: str,
    assignments: dict[str, bytes],
    version: int = 5,
) -> Any:
    body = req(
        14,
        version,
        group_id=group,
        generation_id=generation,
        member_id=member_id,
        group_instance_id=None,
        protocol_type="consumer",
        protocol_name="range",
        assignments=tuple(
            nested(14, version, "SyncGroupRequestAssignment", member_id=m, assignment=a)
            for m, a in assignments.items()
        ),
    )
    return c.call(14, version, body)


def heartbeat(c: RawClient, group: str, generation: int, member_id: str) -> ErrorCode:
    body = req(
        12, 4, group_id=group, generation_id=generation, member_id=member_id, group_instance_id=None
    )
    return ErrorCode(c.call(12, 4, body).error_code)


def commit(
    c: RawClient,
    group: str,
    generation: int,
    member_id: str,
    offsets: dict[tuple[str, int], int],
    metadata: str = "",
    version: int = 8,
) -> dict[tuple[str, int], ErrorCode]:
    by_topic: dict[str, list[Any]] = {}
    for (t, p), off in offsets.items():
        by_topic.setdefault(t, []).append(
            nested(
                8,
                version,
                "OffsetCommitRequestPartition",
                partition_index=p,
                committed_offset=off,
                committed_leader_epoch=-1,
                committed_metadata=metadata,
            )
        )
    body = req(
        8,
        version,
        group_id=group,
        generation_id_or_member_epoch=generation,
        member_id=member_id,
        group_instance_id=None,
        topics=tuple(
            nested(8, version, "OffsetCommitRequestTopic", name=t, partitions=tuple(ps))
            for t, ps in by_topic.items()
        ),
    )
    resp = c.call(8, version, body)
    return {
        (t.name, p.partition_index): ErrorCode(p.error_code)
        for t in resp.topics
        for p in t.partitions
    }


def fetch(
    c: RawClient, group: str, topics: dict[str, list[int]] | None, version: int = 7
) -> dict[tuple[str, int], tuple[int, str]]:
    tq = (
        None
        if topics is None
        else tuple(
            nested(9, version, "OffsetFetchRequestTopic", name=t, partition_indexes=tuple(ps))
            for t, ps in topics.items()
        )
    )
    body = req(9, version, group_id=group, topics=tq, require_stable=False)
    resp = c.call(9, version, body)
    return {
        (t.name, p.partition_index): (p.committed_offset, p.metadata)
        for t in resp.topics
        for p in t.partitions
    }


@pytestmark_wire
def test_wire_member_id_required_and_lifecycle(gbroker: BrokerProcess) -> None:
    """JoinGroup v4+ round trip, SyncGroup, Heartbeat, commits checked against the
    generation and member, LeaveGroup, DeleteGroups."""
    create_topic(gbroker.bootstrap, "t")
    g = f"g-{uuid.uuid4().hex[:8]}"
    with RawClient(gbroker.bootstrap) as c:
        first = join(c, g)
        assert first.error_code == ErrorCode.member_id_required and first.member_id
        j = join(c, g, first.member_id)
        assert j.error_code == ErrorCode.none and j.leader == j.member_id == first.member_id
        mid, gen = j.member_id, j.generation_id
        # Committing between JoinGroup and SyncGroup: the assignment is not known yet.
        assert commit(c, g, gen, mid, {("t", 0): 1}) == {("t", 0): ErrorCode.rebalance_in_progress}
        s = sync(c, g, gen, mid, {mid: b"assignment"})
        assert s.error_code == ErrorCode.none and s.assignment == b"assignment"
        assert heartbeat(c, g, gen, mid) == ErrorCode.none
        assert heartbeat(c, g, gen + 1, mid) == ErrorCode.illegal_generation
        assert heartbeat(c, g, gen, "nobody") == ErrorCode.unknown_member_id
        assert heartbeat(c, "no-such-group", 1, mid) == ErrorCode.unknown_member_id
        assert sync(c, g, gen + 5, mid, {}).error_code == ErrorCode.illegal_generation
        assert commit(c, g, gen, mid, {("t", 0): 5, ("t", 1): 6}) == {
            ("t", 0): ErrorCode.none,
            ("t", 1): ErrorCode.none,
        }
        assert commit(c, g, gen + 1, mid, {("t", 0): 9}) == {("t", 0): ErrorCode.illegal_generation}
        assert commit(c, g, gen, "nobody", {("t", 0): 9}) == {("t", 0): ErrorCode.unknown_member_id}
        assert commit(c, g, -1, "", {("t", 0): 9}) == {("t", 0): ErrorCode.unknown_member_id}
        assert commit(c, "no-such-group", 4, "m", {("t", 0): 9}) == {
            ("t", 0): ErrorCode.illegal_generation
        }
        assert fetch(c, g, {"t": [0, 1, 2]}) == {
            ("t", 0): (5, ""),
            ("t", 1): (6, ""),
            ("t", 2): (-1, ""),
        }
        dg = c.call(42, 2, req(42, 2, groups_names=(g, "no-such-group")))
        assert [(r.group_id, r.error_code) for r in dg.results] == [
            (g, ErrorCode.non_empty_group),
            ("no-such-group", ErrorCode.group_id_not_found),
        ]
        lv = c.call(
            13,
            3,
            req(
                13,
                3,
                group_id=g,
                members=(
                    nested(13, 3, "MemberIdentity", member_id=mid, group_instance_id=None),
                    nested(13, 3, "MemberIdentity", member_id="nobody", group_instance_id=None),
                ),
            ),
        )
        assert lv.error_code == ErrorCode.none
        assert [m.error_code for m in lv.members] == [ErrorCode.none, ErrorCode.unknown_member_id]
        # Empty now: simple commits are allowed again, and the group can be deleted.
        assert commit(c, g, -1, "", {("t", 0): 11}) == {("t", 0): ErrorCode.none}
        dg = c.call(42, 2, req(42, 2, groups_names=(g,)))
        assert [r.error_code for r in dg.results] == [ErrorCode.none]
        assert fetch(c, g, None) == {}


@pytestmark_wire
@pytest.mark.parametrize("session", [10, 999, 60_001])
def test_wire_invalid_session_timeout(gbroker: BrokerProcess, session: int) -> None:
    """Outside [group.min.session.timeout.ms, group.max.session.timeout.ms]."""
    with RawClient(gbroker.bootstrap) as c:
        r = join(c, f"g-{uuid.uuid4().hex[:8]}", session=session)
        assert r.error_code == ErrorCode.invalid_session_timeout


@pytestmark_wire
def test_wire_commit_bad_partitions_and_metadata(gbroker: BrokerProcess) -> None:
    """Per-partition errors: unknown topic or partition, oversized metadata; the
    good partitions of the same request are committed."""
    create_topic(gbroker.bootstrap, "t")
    g = f"g-{uuid.uuid4().hex[:8]}"
    with RawClient(gbroker.bootstrap) as c:
        codes = commit(c, g, -1, "", {("t", 0): 3, ("t", 7): 3, ("nope", 0): 3})
        assert codes == {
            ("t", 0): ErrorCode.none,
            ("t", 7): ErrorCode.unknown_topic_or_partition,
            ("nope", 0): ErrorCode.unknown_topic_or_partition,
        }
        assert commit(c, g, -1, "", {("t", 1): 4}, metadata="x" * 101) == {
            ("t", 1): ErrorCode.offset_metadata_too_large
        }
        assert commit(c, g, -1, "", {("t", 1): 4}, metadata="y" * 100) == {("t", 1): ErrorCode.none}
        assert fetch(c, g, None) == {("t", 0): (3, ""), ("t", 1): (4, "y" * 100)}


@pytestmark_wire
@pytest.mark.parametrize("version", [2, 3, 5, 7, 8])
def test_wire_commit_and_fetch_versions(gbroker: BrokerProcess, version: int) -> None:
    create_topic(gbroker.bootstrap, "t")
    g = f"g-{uuid.uuid4().hex[:8]}"
    with RawClient(gbroker.bootstrap) as c:
        assert commit(c, g, -1, "", {("t", 0): 10 + version}, "m", version=version) == {
            ("t", 0): ErrorCode.none
        }
        for fv in (1, 3, 5, 7):
            got = fetch(c, g, {"t": [0]}, version=fv)
            assert got == {("t", 0): (10 + version, "m")}, fv


@pytestmark_wire
def test_wire_offset_fetch_multi_group(gbroker: BrokerProcess) -> None:
    """OffsetFetch v8: several groups in one request, one asking for all partitions."""
    create_topic(gbroker.bootstrap, "t")
    g1, g2, g3 = (f"g-{uuid.uuid4().hex[:8]}" for _ in range(3))
    with RawClient(gbroker.bootstrap) as c:
        commit(c, g1, -1, "", {("t", 0): 1, ("t", 1): 2})
        commit(c, g2, -1, "", {("t", 1): 20})
        body = req(
            9,
            8,
            groups=(
                nested(9, 8, "OffsetFetchRequestGroup", group_id=g1, topics=None),
                nested(
                    9,
                    8,
                    "OffsetFetchRequestGroup",
                    group_id=g2,
                    topics=(
                        nested(
                            9, 8, "OffsetFetchRequestTopics", name="t", partition_indexes=(0, 1)
                        ),
                    ),
                ),
                nested(9, 8, "OffsetFetchRequestGroup", group_id=g3, topics=None),
            ),
            require_stable=True,
        )
        resp = c.call(9, 8, body)
        got = {
            g.group_id: {
                (t.name, p.partition_index): p.committed_offset
                for t in g.topics
                for p in t.partitions
            }
            for g in resp.groups
        }
        assert got == {g1: {("t", 0): 1, ("t", 1): 2}, g2: {("t", 0): -1, ("t", 1): 20}, g3: {}}
        assert all(g.error_code == ErrorCode.none for g in resp.groups)


@pytestmark_wire
def test_wire_offset_delete(gbroker: BrokerProcess) -> None:
    """OffsetDelete: refused for topics a live member subscribes to, allowed for
    others and for empty groups; unknown group -> GROUP_ID_NOT_FOUND."""
    create_topic(gbroker.bootstrap, "t")
    create_topic(gbroker.bootstrap, "u")
    g = f"g-{uuid.uuid4().hex[:8]}"
    with RawClient(gbroker.bootstrap) as c:
        commit(c, g, -1, "", {("t", 0): 1, ("u", 0): 2, ("u", 1): 3})
        j = join(c, g, version=3, topics=("t",))
        assert j.error_code == ErrorCode.none
        assert sync(c, g, j.generation_id, j.member_id, {j.member_id: b""}, 3).error_code == 0

        def delete(group: str, keys: list[tuple[str, int]]) -> Any:
            topics: dict[str, list[Any]] = {}
            for t, p in keys:
                topics.setdefault(t, []).append(
                    nested(47, 0, "OffsetDeleteRequestPartition", partition_index=p)
                )
            return c.call(
                47,
                0,
                req(
                    47,
                    0,
                    group_id=group,
                    topics=tuple(
                        nested(47, 0, "OffsetDeleteRequestTopic", name=t, partitions=tuple(ps))
                        for t, ps in topics.items()
                    ),
                ),
            )

        r = delete(g, [("t", 0), ("u", 0)])
        assert r.error_code == ErrorCode.none
        codes = {(t.name, p.partition_index): p.error_code for t in r.topics for p in t.partitions}
        assert codes == {("t", 0): ErrorCode.group_subscribed_to_topic, ("u", 0): ErrorCode.none}
        assert fetch(c, g, None) == {("t", 0): (1, ""), ("u", 1): (3, "")}
        assert delete("no-such-group", [("t", 0)]).error_code == ErrorCode.group_id_not_found


@pytestmark_wire
def test_wire_find_coordinator_versions(gbroker: BrokerProcess) -> None:
    port = gbroker.port
    with RawClient(gbroker.bootstrap) as c:
        for v in (0, 1, 2, 3):
            fields: dict[str, Any] = {"key": "g"}
            if v >= 1:
                fields["key_type"] = 0
            r = c.call(10, v, req(10, v, **fields))
            assert (r.error_code, r.host, r.port) == (ErrorCode.none, "127.0.0.1", port)
        r = c.call(10, 4, req(10, 4, key_type=0, coordinator_keys=("a", "b", "c")))
        assert [(x.key, x.error_code, x.port) for x in r.coordinators] == [
            ("a", 0, port),
            ("b", 0, port),
            ("c", 0, port),
        ]
        r = c.call(10, 4, req(10, 4, key_type=7, coordinator_keys=("a",)))
        assert r.coordinators[0].error_code == ErrorCode.invalid_request


@pytestmark_wire
def test_wire_list_and_describe(gbroker: BrokerProcess) -> None:
    create_topic(gbroker.bootstrap, "t")
    g = f"g-{uuid.uuid4().hex[:8]}"
    with RawClient(gbroker.bootstrap) as c:
        j = join(c, g, version=2)
        sync(c, g, j.generation_id, j.member_id, {j.member_id: b"asg"}, 2)
        listed = c.call(16, 4, req(16, 4, states_filter=("stable",)))
        assert (g, "consumer", "Stable") in {
            (x.group_id, x.protocol_type, x.group_state) for x in listed.groups
        }
        listed = c.call(16, 4, req(16, 4, states_filter=("empty",)))
        assert g not in {x.group_id for x in listed.groups}
        d = c.call(
            15, 5, req(15, 5, groups=(g, "no-such-group"), include_authorized_operations=False)
        )
        live, dead = d.groups
        assert (live.group_state, live.protocol_data, len(live.members)) == ("Stable", "range", 1)
        assert live.members[0].member_assignment == b"asg"
        assert live.members[0].client_host == "/127.0.0.1"
        assert (dead.error_code, dead.group_state) == (ErrorCode.none, "Dead")


@pytestmark_wire
def test_wire_join_pipelined_behind_heartbeat(gbroker: BrokerProcess) -> None:
    """A JoinGroup that must wait for another member does not stop its connection:
    a Heartbeat sent behind it on the same connection is answered after it, in order,
    once the rebalance completes."""
    create_topic(gbroker.bootstrap, "t")
    g = f"g-{uuid.uuid4().hex[:8]}"
    with RawClient(gbroker.bootstrap) as a, RawClient(gbroker.bootstrap) as b:
        ja = join(a, g, version=3)
        sync(a, g, ja.generation_id, ja.member_id, {ja.member_id: b""}, 3)
        # b joins: the group rebalances and waits for a to rejoin.
        protocols = (
            nested(11, 3, "JoinGroupRequestProtocol", name="range", metadata=subscription("t")),
        )
        send(
            b,
            11,
            3,
            req(
                11,
                3,
                group_id=g,
                session_timeout=ms(10_000),
                rebalance_timeout=ms(10_000),
                member_id="",
                protocol_type="consumer",
                protocols=protocols,
            ),
            cid=1,
        )
        send(b, 12, 2, req(12, 2, group_id=g, generation_id=ja.generation_id, member_id="x"), cid=2)
        # a learns of the rebalance from its heartbeat, then rejoins.
        assert heartbeat(a, g, ja.generation_id, ja.member_id) == ErrorCode.rebalance_in_progress
        ja2 = join(a, g, ja.member_id, version=3)
        jb = recv(b, 11, 3)
        hb = recv(b, 12, 2)
        assert ja2.error_code == jb.error_code == ErrorCode.none
        assert ja2.generation_id == jb.generation_id == ja.generation_id + 1
        assert hb.error_code == ErrorCode.unknown_member_id


@pytestmark_wire
def test_wire_deleted_topic_loses_offsets(gbroker: BrokerProcess) -> None:
    """A topic deleted and re-created under the same name starts without the
    old topic's committed offsets."""
    name = f"d-{uuid.uuid4().hex[:8]}"
    create_topic(gbroker.bootstrap, name)
    g = f"g-{uuid.uuid4().hex[:8]}"
    with RawClient(gbroker.bootstrap) as c:
        assert commit(c, g, -1, "", {(name, 0): 5}) == {(name, 0): ErrorCode.none}
        dt = c.call(20, 5, req(20, 5, topic_names=(name,), timeout=ms(10_000)))
        assert dt.responses[0].error_code == ErrorCode.none
        create_topic(gbroker.bootstrap, name)
        assert fetch(c, g, {name: [0]}) == {(name, 0): (-1, "")}
