"""Consumer-protocol groups stored and replayed by a new coordinator: the state
machine's groups to rows and back without sockets, then through the real
metadata store (SQLite) across a coordinator reopen."""

from __future__ import annotations

from pathlib import Path

from shoal.group.consumer import (
    ClassicMeta,
    ConsumerGroup,
    ConsumerGroups,
    HeartbeatRequest,
    MemberState,
)
from shoal.group.coordinator import GroupConfig, GroupCoordinator
from shoal.group.persist import StateDiff, from_rows, member_row
from shoal.meta.groups import GroupRepository
from shoal.meta.store import MetaStore
from shoal.protocol.errors import ErrorCode
from test_consumer_group_machine import SESSION, G, beat, join, machine, parts


def replay(m: ConsumerGroups, now: int) -> tuple[ConsumerGroups, ConsumerGroup]:
    """What a new coordinator has after loading what `m` wrote."""
    op = StateDiff().group(m.groups[G])
    assert op is not None and op.replace
    fresh, _ = machine(t=4)
    fresh.catalog = m.catalog
    group = from_rows(op.group, op.upsert)
    fresh.restore(group, now)
    return fresh, group


def holders(m: ConsumerGroups) -> dict[tuple[str, int], str]:
    """Who may be consuming each partition; asserts nobody shares one."""
    out: dict[tuple[str, int], str] = {}
    for mid, member in m.groups[G].members.items():
        for tp in member.holds():
            assert tp not in out, f"{tp} held by {out[tp]} and {mid}"
            out[tp] = mid
    return out


def test_members_continue_at_their_epochs_mid_revocation() -> None:
    m, _ = machine(t=4)
    a = join(m, "a")
    b = join(m, "b")
    assert parts(a) == {0, 1, 2, 3} and parts(b) == set(), "a still holds everything"
    shrink = beat(m, "a", a.member_epoch, {"t": range(4)})
    assert len(parts(shrink)) == 2 and m.groups[G].members["a"].state is MemberState.UNREVOKED
    before = holders(m)

    n, group = replay(m, now=10_000)
    assert holders(n) == before and group.owners == m.groups[G].owners
    assert (group.epoch, group.assignment_epoch) == (m.groups[G].epoch, 2)
    # b waits: a still consumes the two partitions it is revoking.
    again = beat(n, "b", b.member_epoch, {}, now=10_001)
    assert again.error == ErrorCode.none and n.groups[G].members["b"].assigned == {}
    # a, at its epoch and still owning all four, is asked again to revoke.
    still = beat(n, "a", a.member_epoch, {"t": range(4)}, now=10_002)
    assert (still.error, still.member_epoch) == (ErrorCode.none, a.member_epoch)
    holders(n)
    done = beat(n, "a", a.member_epoch, {"t": parts(shrink)}, now=10_003)
    assert done.member_epoch == group.assignment_epoch
    got = beat(n, "b", b.member_epoch, {}, now=10_004)
    assert parts(got) == {0, 1, 2, 3} - parts(shrink)
    holders(n)


def test_another_epoch_is_fenced_after_a_load() -> None:
    m, _ = machine(t=2)
    a = join(m, "a")
    n, _ = replay(m, now=0)
    r = beat(n, "a", a.member_epoch + 1, None)
    assert r.error == ErrorCode.fenced_member_epoch
    assert beat(n, "stranger", 1, None).error == ErrorCode.unknown_member_id


def test_session_timers_restart_at_load() -> None:
    m, _ = machine(t=2)
    join(m, "a")
    b = join(m, "b")
    n, group = replay(m, now=50_000)
    assert n.expire(50_000 + SESSION - 1) == []
    beat(n, "b", b.member_epoch, None, now=50_000 + SESSION - 1)
    assert n.expire(50_000 + SESSION) == [G]
    assert set(group.members) == {"b"}, "a died with the old coordinator: expired"


def test_static_member_that_left_is_taken_over_after_a_load() -> None:
    m, _ = machine(t=2)
    a = join(m, "a", instance_id="i1")
    leave = HeartbeatRequest(G, "a", -2, instance_id="i1")
    assert m.heartbeat(leave, 0).error == ErrorCode.none
    n, group = replay(m, now=0)
    assert group.static == {"i1": "a"} and group.members["a"].epoch == -2
    back = join(n, "a2", instance_id="i1")
    assert (back.member_epoch, parts(back)) == (a.member_epoch, {0, 1})


def test_classic_member_round_trip() -> None:
    m, _ = machine(t=2)
    join(m, "a")
    group = m.groups[G]
    group.members["a"].classic = ClassicMeta(7000, (("range", b"\x00\x01xyz"),))
    op = StateDiff().group(group)
    assert op is not None
    (back,) = from_rows(op.group, [member_row(group, group.members["a"])]).members.values()
    assert back.classic == group.members["a"].classic


def test_writes_only_what_changed() -> None:
    m, _ = machine(t=4)
    diff = StateDiff()
    a = join(m, "a")
    first = diff.group(m.groups[G])
    assert first is not None and first.replace and [r.member_id for r in first.upsert] == ["a"]
    m.changed.clear()
    assert diff.member(m.groups[G], "a") is None, "nothing changed"
    m.groups[G].members["a"].rack_id = "r1"  # a change the member's own request would write
    assert diff.member(m.groups[G], "stranger") is None, "a refused id compares nothing"
    assert diff.member(m.groups[G], "a") is not None
    beat(m, "a", a.member_epoch, None, now=1)
    assert not m.changed and diff.member(m.groups[G], "a") is None, "a plain heartbeat"
    join(m, "b")
    op = diff.group(m.groups[G])
    assert op is not None and not op.replace
    assert {r.member_id for r in op.upsert} == {"a", "b"}, "b joined, a's target moved"
    assert op.group.group_epoch == 2
    m.changed.clear()
    beat(m, "a", a.member_epoch, {"t": range(4)}, now=2)  # asked to revoke
    one = diff.member(m.groups[G], "a")
    assert one is not None and one.upsert[0].state == "unrevoked_partitions"
    m.heartbeat(HeartbeatRequest(G, "b", -1), 3)
    gone = diff.group(m.groups[G])
    assert gone is not None and list(gone.delete) == ["b"]


# through the metadata store ----------------------------------------------------


async def test_coordinator_reopen_keeps_members_and_delete_removes_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'meta.db'}"
    _, topics = machine(t=3)
    meta = await MetaStore.open(url)
    try:
        c = await GroupCoordinator.open(meta, GroupConfig(), catalog=topics)
        req = HeartbeatRequest(
            G, "a", 0, rebalance_timeout_ms=500, subscribed_topic_names=("t",), owned={}
        )
        a = c.consumer_heartbeat(req)
        assert a.error == ErrorCode.none
        await c.close()

        c = await GroupCoordinator.open(meta, GroupConfig(), catalog=topics)
        group = c.consumer.groups[G]
        assert group.members["a"].epoch == a.member_epoch
        assert group.members["a"].assigned == {"t": frozenset({0, 1, 2})}
        again = c.consumer_heartbeat(HeartbeatRequest(G, "a", a.member_epoch))
        assert (again.error, again.member_epoch) == (ErrorCode.none, a.member_epoch)
        assert await c.delete_groups([G]) == [ErrorCode.non_empty_group]
        c.consumer_heartbeat(HeartbeatRequest(G, "a", -1))
        assert await c.delete_groups([G]) == [ErrorCode.none]
        await c.close()

        assert await GroupRepository(meta).load_consumer_state() == {}
    finally:
        await meta.close()


async def test_empty_group_expiry_removes_its_rows(tmp_path: Path) -> None:
    _, topics = machine(t=1)
    meta = await MetaStore.open(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        c = await GroupCoordinator.open(meta, GroupConfig(), catalog=topics)
        req = HeartbeatRequest(
            G, "a", 0, rebalance_timeout_ms=500, subscribed_topic_names=("t",), owned={}
        )
        assert c.consumer_heartbeat(req).error == ErrorCode.none
        c.consumer_heartbeat(HeartbeatRequest(G, "a", -1))
        await c.close()
        repo = GroupRepository(meta)
        assert set(await repo.load_consumer_state()) == {G}, "the empty group is stored"
        c = await GroupCoordinator.open(meta, GroupConfig(), catalog=topics)
        await c.expire_offsets(now=2**62)
        assert G not in c.consumer.groups
        await c.close()
        assert await repo.load_consumer_state() == {}
    finally:
        await meta.close()
