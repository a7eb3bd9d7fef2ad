"""The KIP-848 consumer group state machine and its assignors, without sockets:
requests are values, time is a number."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from shoal.group.assignors import MemberSpec, range_, uniform
from shoal.group.consumer import (
    ConsumerGroupConfig,
    ConsumerGroups,
    GroupState,
    HeartbeatRequest,
    HeartbeatResult,
    MemberState,
)
from shoal.protocol.errors import ErrorCode

SESSION = 1000
G = "g"


class Topics:
    def __init__(self, **counts: int) -> None:
        self.counts = dict(counts)
        self.ids = {n: uuid.uuid4() for n in counts}

    def topic(self, name: str) -> tuple[uuid.UUID, int] | None:
        if name not in self.counts:
            return None
        return self.ids.setdefault(name, uuid.uuid4()), self.counts[name]

    def names(self) -> Iterable[str]:
        return list(self.counts)


def machine(**counts: int) -> tuple[ConsumerGroups, Topics]:
    topics = Topics(**counts)
    cfg = ConsumerGroupConfig(session_timeout_ms=SESSION, heartbeat_interval_ms=100)
    return ConsumerGroups(cfg, topics), topics


def join(
    m: ConsumerGroups, member: str, topics: tuple[str, ...] = ("t",), now: int = 0, **kw: Any
) -> HeartbeatResult:
    req = HeartbeatRequest(
        G, member, 0, rebalance_timeout_ms=500, subscribed_topic_names=topics, owned={}, **kw
    )
    return m.heartbeat(req, now)


def beat(
    m: ConsumerGroups,
    member: str,
    epoch: int,
    owned: Mapping[str, Iterable[int]] | None,
    now: int = 0,
    **kw: Any,
) -> HeartbeatResult:
    owned_fs = None if owned is None else {t: frozenset(p) for t, p in owned.items()}
    return m.heartbeat(HeartbeatRequest(G, member, epoch, owned=owned_fs, **kw), now)


def parts(r: HeartbeatResult, topic: str = "t") -> set[int]:
    assert r.assignment is not None
    return set(r.assignment.get(topic, ()))


def test_first_member_gets_everything_at_the_group_epoch() -> None:
    m, _ = machine(t=4)
    r = join(m, "a")
    assert r.error == ErrorCode.none
    assert r.member_epoch == 1 == m.groups[G].epoch == m.groups[G].assignment_epoch
    assert parts(r) == {0, 1, 2, 3}
    assert m.groups[G].state is GroupState.STABLE
    quiet = beat(m, "a", 1, None, now=10)
    assert quiet.assignment is None, "an unchanged assignment is not sent again"


def test_revocation_before_assignment() -> None:
    """b joins: it gets nothing a is still holding; a is asked to revoke two
    partitions at its old epoch; only after a stops reporting them are they
    given to b, at the new epoch."""
    m, _ = machine(t=4)
    join(m, "a")
    rb = join(m, "b")
    assert rb.member_epoch == 2 and parts(rb) == set(), "partitions still held by a"
    assert m.groups[G].members["b"].state is MemberState.UNRELEASED
    ra = beat(m, "a", 1, {"t": {0, 1, 2, 3}})
    keep = parts(ra)
    assert len(keep) == 2 and ra.member_epoch == 1, "revoke first, same epoch"
    assert m.groups[G].members["a"].state is MemberState.UNREVOKED
    still = beat(m, "a", 1, {"t": {0, 1, 2, 3}})
    assert still.member_epoch == 1 and still.assignment is None, "not yet revoked"
    assert beat(m, "b", 2, {}).assignment is None, "nothing freed before a acknowledges"
    assert not m.groups[G].members["b"].assigned
    done = beat(m, "a", 1, {"t": keep})
    assert done.member_epoch == 2 and parts(done) == keep
    rb2 = beat(m, "b", 2, {})
    assert parts(rb2) == {0, 1, 2, 3} - keep
    assert m.groups[G].state is GroupState.STABLE


def test_no_partition_ever_has_two_owners() -> None:
    m, _ = machine(t=6)
    members = ["a", "b", "c"]
    owned: dict[str, set[int]] = {}
    epochs: dict[str, int] = {}
    for name in members:
        r = join(m, name)
        epochs[name] = r.member_epoch
        owned[name] = parts(r)
        for _ in range(4):
            for other in members[: members.index(name) + 1]:
                r = beat(m, other, epochs[other], {"t": owned[other]})
                epochs[other] = r.member_epoch
                if r.assignment is not None:
                    owned[other] = set(r.assignment.get("t", ()))
                held = [p for ps in owned.values() for p in ps]
                assert len(held) == len(set(held)), f"a partition with two owners: {owned}"
    assert sorted(p for ps in owned.values() for p in ps) == list(range(6))
    assert all(len(ps) == 2 for ps in owned.values())


def test_fencing_by_member_epoch() -> None:
    m, _ = machine(t=2)
    join(m, "a")
    ahead = beat(m, "a", 7, {"t": {0, 1}})
    assert ahead.error == ErrorCode.fenced_member_epoch
    join(m, "b")
    beat(m, "a", 1, {"t": {0, 1}})  # revoke one
    r = beat(m, "a", 1, {"t": set(m.groups[G].members["a"].assigned["t"])})
    assert r.member_epoch == 2
    missed = beat(m, "a", 1, {"t": set(m.groups[G].members["a"].assigned["t"])})
    assert missed.error == ErrorCode.none, "the previous epoch with a subset is accepted"
    assert beat(m, "a", 1, {"t": {0, 1}}).error == ErrorCode.fenced_member_epoch
    assert beat(m, "a", 0, None).error == ErrorCode.invalid_request, "rejoin needs the full request"
    assert beat(m, "zz", 2, {}).error == ErrorCode.unknown_member_id


def test_commit_and_fetch_checks() -> None:
    m, _ = machine(t=1)
    join(m, "a")
    assert m.check_commit(G, "a", 1, 9) == ErrorCode.none
    assert m.check_commit(G, "a", 0, 9) == ErrorCode.stale_member_epoch
    assert m.check_commit(G, "a", 1, 8) == ErrorCode.unsupported_version
    assert m.check_commit(G, "nobody", 1, 9) == ErrorCode.unknown_member_id
    assert m.check_commit(G, "", -1, 9) == ErrorCode.unknown_member_id, "a live group"
    assert m.check_fetch(G, None, -1) == ErrorCode.none
    assert m.check_fetch(G, "a", 0) == ErrorCode.stale_member_epoch
    assert m.check_fetch(G, "b", 1) == ErrorCode.unknown_member_id
    beat(m, "a", -1, None)
    assert m.check_commit(G, "", -1, 2) == ErrorCode.none, "an empty group takes simple commits"


def test_session_expiry_moves_partitions() -> None:
    m, _ = machine(t=2)
    join(m, "a")
    join(m, "b", now=0)
    beat(m, "a", 1, {"t": {0, 1}}, now=0)
    keep = set(m.groups[G].members["a"].assigned["t"])
    beat(m, "a", 1, {"t": keep}, now=0)
    beat(m, "b", 2, {}, now=0)
    assert m.next_deadline() is not None
    beat(m, "a", 2, {"t": keep}, now=SESSION - 1)  # a stays alive, b goes silent
    assert m.expire(SESSION) == [G]
    assert set(m.groups[G].members) == {"a"} and m.groups[G].epoch == 3
    r = beat(m, "a", 2, {"t": keep}, now=SESSION + 1)
    assert r.member_epoch == 3 and parts(r) == {0, 1}
    late = beat(m, "b", 2, {"t": {0, 1} - keep}, now=SESSION + 2)
    assert late.error == ErrorCode.unknown_member_id, "heartbeat after the session expired"


def test_rebalance_timeout_fences_a_member_that_does_not_revoke() -> None:
    m, _ = machine(t=2)
    join(m, "a")
    join(m, "b")
    beat(m, "a", 1, {"t": {0, 1}}, now=0)  # asked to revoke, rebalance timeout 500
    assert m.groups[G].members["a"].state is MemberState.UNREVOKED
    beat(m, "a", 1, {"t": {0, 1}}, now=400)
    beat(m, "b", 2, {}, now=400)
    m.expire(600)
    assert set(m.groups[G].members) == {"b"}
    assert parts(beat(m, "b", 3 - 1, {}, now=650)) == {0, 1}


def test_static_member_restart_keeps_its_partitions() -> None:
    m, _ = machine(t=4)
    join(m, "a", instance_id="i-a")
    join(m, "b", instance_id="i-b")
    ra = beat(m, "a", 1, {"t": {0, 1, 2, 3}}, instance_id="i-a")
    beat(m, "a", 1, {"t": parts(ra)}, instance_id="i-a")
    rb = beat(m, "b", 2, {})
    held = parts(rb)
    epoch = m.groups[G].epoch
    left = beat(m, "b", -2, None, instance_id="i-b")
    assert left.member_epoch == -2
    busy = join(m, "b2", instance_id="i-a")
    assert busy.error == ErrorCode.unreleased_instance_id
    back = join(m, "b2", instance_id="i-b", now=100)
    assert back.error == ErrorCode.none and parts(back) == held
    assert back.member_epoch == 2 and m.groups[G].epoch == epoch, "no rebalance"
    assert set(m.groups[G].members) == {"a", "b2"}


def test_static_member_gone_for_good_after_its_session() -> None:
    m, _ = machine(t=2)
    join(m, "a", instance_id="i-a")
    beat(m, "a", -2, None, instance_id="i-a", now=10)
    m.expire(10 + SESSION)
    assert not m.groups[G].members and m.groups[G].state is GroupState.EMPTY


def test_leave_frees_partitions_at_once() -> None:
    m, _ = machine(t=2)
    join(m, "a")
    join(m, "b")
    assert beat(m, "a", -1, None).member_epoch == -1
    assert parts(beat(m, "b", 2, {})) == {0, 1}


def test_a_static_leave_must_come_from_the_member_holding_the_instance() -> None:
    m, _ = machine(t=2)
    join(m, "a", instance_id="i-a")
    stale = beat(m, "old-a", -2, None, instance_id="i-a")
    assert stale.error == ErrorCode.fenced_instance_id and "not old-a" in (stale.message or "")
    assert beat(m, "a", -2, None, instance_id="i-a").error == ErrorCode.none


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"server_assignor": "sticky"}, ErrorCode.unsupported_assignor),
        ({"subscribed_topic_regex": "(a"}, ErrorCode.invalid_regular_expression),
        ({"subscribed_topic_regex": r"(a)\1"}, ErrorCode.invalid_regular_expression),
        ({"subscribed_topic_regex": "(?=a)b"}, ErrorCode.invalid_regular_expression),
        ({"instance_id": ""}, ErrorCode.invalid_request),
    ],
)
def test_bad_requests(kw: dict[str, str], code: ErrorCode) -> None:
    m, _ = machine(t=1)
    r = join(m, "a", **kw)
    assert r.error == code and r.message


def test_regex_subscription_follows_new_topics() -> None:
    m, topics = machine(**{"logs.a": 1, "other": 1})
    req = HeartbeatRequest(
        G, "a", 0, rebalance_timeout_ms=500, subscribed_topic_regex=r"logs\..*", owned={}
    )
    r = m.heartbeat(req, 0)
    assert r.assignment == {"logs.a": frozenset({0})}
    topics.counts["logs.b"] = 2
    r2 = beat(m, "a", r.member_epoch, {"logs.a": {0}})
    assert r2.member_epoch == r.member_epoch + 1
    assert r2.assignment == {"logs.a": frozenset({0}), "logs.b": frozenset({0, 1})}


def test_partitions_added_bump_the_epoch() -> None:
    m, topics = machine(t=1)
    r = join(m, "a")
    topics.counts["t"] = 3
    r2 = beat(m, "a", r.member_epoch, {"t": {0}})
    assert parts(r2) == {0, 1, 2} and r2.member_epoch == r.member_epoch + 1


def test_assignor_choice_and_range() -> None:
    m, _ = machine(t=4)
    r = join(m, "a", server_assignor="range")
    assert m.groups[G].assignor == "range"
    assert parts(r) == {0, 1, 2, 3}
    join(m, "b")
    assert m.groups[G].assignor == "range", "the one most members ask for, then the default"
    assert m.groups[G].target["a"] == {"t": frozenset({0, 1})}


def spec(mid: str, topics: set[str], current: Mapping[str, set[int]] | None = None) -> MemberSpec:
    cur = {t: frozenset(p) for t, p in (current or {}).items()}
    return MemberSpec(mid, None, frozenset(topics), cur)


def test_uniform_is_balanced_and_sticky() -> None:
    first = uniform({"a": spec("a", {"t"}), "b": spec("b", {"t"})}, {"t": 7})
    sizes = sorted(len(first[m]["t"]) for m in first)
    assert sizes == [3, 4]
    members = {m: spec(m, {"t"}, {"t": set(first[m]["t"])}) for m in first}
    members["c"] = spec("c", {"t"})
    second = uniform(members, {"t": 7})
    assert sorted(len(second[m].get("t", ())) for m in second) == [2, 2, 3]
    for m in ("a", "b"):
        assert second[m]["t"] <= first[m]["t"], "old members only give partitions up"


def test_uniform_respects_subscriptions() -> None:
    out = uniform({"a": spec("a", {"x"}), "b": spec("b", {"x", "y"})}, {"x": 2, "y": 2})
    assert "y" not in out["a"]
    assert out["b"]["y"] == {0, 1}
    assert sum(len(p) for a in out.values() for p in a.values()) == 4


def test_range_gives_contiguous_copartitioned_ranges() -> None:
    out = range_({"a": spec("a", {"x", "y"}), "b": spec("b", {"x", "y"})}, {"x": 5, "y": 5})
    assert out["a"] == {"x": {0, 1, 2}, "y": {0, 1, 2}}
    assert out["b"] == {"x": {3, 4}, "y": {3, 4}}


def test_uniform_balances_mixed_subscriptions() -> None:
    """Members subscribed to different topics: each gets only its topics, and
    loads differ by at most one where subscriptions allow it; a member joining
    takes partitions only from others."""
    members = {"a": spec("a", {"x"}), "b": spec("b", {"x", "y"}), "c": spec("c", {"x", "y"})}
    first = uniform(members, {"x": 6, "y": 2})
    assert "y" not in first["a"]
    loads = sorted(sum(len(p) for p in first[m].values()) for m in first)
    assert loads[-1] - loads[0] <= 1 and sum(loads) == 8
    again = {
        m: spec(m, set(members[m].topics), {t: set(p) for t, p in first[m].items()}) for m in first
    }
    again["d"] = spec("d", {"x", "y"})
    second = uniform(again, {"x": 6, "y": 2})
    loads = sorted(sum(len(p) for p in second[m].values()) for m in second)
    assert loads == [2, 2, 2, 2]
    for m in first:
        for t, ps in second[m].items():
            assert ps <= first[m].get(t, frozenset()), "old members only give partitions up"


def test_group_max_size_and_instance_mismatch() -> None:
    m = ConsumerGroups(ConsumerGroupConfig(max_size=1), Topics(t=1))
    assert join(m, "a", instance_id="i-a").error == ErrorCode.none
    full = join(m, "b")
    assert full.error == ErrorCode.group_max_size_reached and "1 members" in (full.message or "")
    wrong = beat(m, "a", 1, {"t": {0}}, instance_id="i-b")
    assert wrong.error == ErrorCode.fenced_instance_id
    assert beat(m, "a", -2, None).error == ErrorCode.invalid_request, "-2 needs the instance id"
    assert beat(m, "a", -3, None).error == ErrorCode.invalid_request
