"""Online migration between the classic and the consumer protocol (KIP-848):
a classic group with members converts to a consumer group when a
consumer-protocol member joins it, its classic members keep working through
JoinGroup/SyncGroup/Heartbeat answered by the consumer group, and it converts
back when the last consumer-protocol member leaves.

First the state machines without sockets (requests are values, time is a
number), then real clients: a rolling upgrade of confluent-kafka consumers
from the classic protocol to the consumer protocol and back under continuous
produce, and kafka-python classic members in a group with a confluent-kafka
consumer-protocol member.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import threading
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kio.schema.list_groups.v5 import request as lg

from group_data import TIMEOUT, create_topic, produce, setup_topic
from harness import BrokerProcess
from shoal.config import ConfigError, load_config
from shoal.group.consumer import (
    ClassicJoin,
    ClassicSnapshot,
    ConsumerGroupConfig,
    ConsumerGroups,
    HeartbeatRequest,
    MemberState,
    MigrationPolicy,
)
from shoal.group.coordinator import GroupConfig, GroupCoordinator, JoinRequest, State
from shoal.group.embedded import encode_assignment, read_assignment, read_subscription
from shoal.meta.store import MetaStore
from shoal.protocol.errors import ErrorCode
from test_consumer_group_machine import Topics
from test_groups_confluent import Worker, all_values
from test_groups_kip848 import Member, ownership, shared, wait_for
from wire import RawClient

G = "g"
SESSION = 1000


def sub(topics: Iterable[str] = ("t",), owned: Mapping[str, Iterable[int]] | None = None) -> bytes:
    """ConsumerProtocolSubscription v1: topics, no user data, owned partitions."""
    names = list(topics)
    out = struct.pack(">hi", 1, len(names))
    for t in names:
        out += struct.pack(">h", len(t)) + t.encode()
    out += struct.pack(">i", -1)
    owned = owned or {}
    out += struct.pack(">i", len(owned))
    for t, ps in owned.items():
        parts = sorted(ps)
        out += struct.pack(">h", len(t)) + t.encode()
        out += struct.pack(f">i{len(parts)}i", len(parts), *parts)
    return out


def snapshot(member: str, parts: Iterable[int], session_ms: int = SESSION) -> ClassicSnapshot:
    return ClassicSnapshot(
        member,
        None,
        member,
        "/h",
        session_ms,
        500,
        (("range", sub()),),
        sub(),
        encode_assignment({"t": parts}),
    )


def machine(
    policy: MigrationPolicy = MigrationPolicy.BIDIRECTIONAL, partitions: int = 6
) -> ConsumerGroups:
    cfg = ConsumerGroupConfig(
        session_timeout_ms=SESSION, heartbeat_interval_ms=100, migration_policy=policy
    )
    return ConsumerGroups(cfg, Topics(t=partitions))


def classic_join(
    m: ConsumerGroups, member: str, owned: Mapping[str, Iterable[int]] | None = None, **kw: Any
) -> Any:
    req = ClassicJoin(G, member, None, SESSION, 500, "consumer", (("range", sub(owned=owned)),))
    return m.classic_join(dataclasses.replace(req, **kw), 0)


def assigned(m: ConsumerGroups, member: str, generation: int) -> set[int]:
    code, data = m.classic_sync(G, member, None, generation, "consumer", "range", 0)
    assert code == ErrorCode.none
    return set(read_assignment(data).get("t", ()))


def single_owners(m: ConsumerGroups) -> None:
    """No partition is held (assigned or being revoked) by two members."""
    seen: dict[tuple[str, int], str] = {}
    for member in m.groups[G].members.values():
        for tp in member.holds():
            assert tp not in seen, f"{tp} held by {seen[tp]} and {member.member_id}"
            seen[tp] = member.member_id


def consumer_join(m: ConsumerGroups, member: str) -> Any:
    req = HeartbeatRequest(
        G, member, 0, rebalance_timeout_ms=500, subscribed_topic_names=("t",), owned={}
    )
    return m.heartbeat(req, 0)


def consumer_beat(m: ConsumerGroups, member: str, epoch: int, owned: set[int]) -> Any:
    req = HeartbeatRequest(G, member, epoch, owned={"t": frozenset(owned)} if owned else {})
    return m.heartbeat(req, 0)


def test_eager_classic_members_hand_over_to_a_consumer_member() -> None:
    """Two classic members holding three partitions each; the group converts
    at their generation; a consumer-protocol member joins and waits for
    partitions still held; the classic members are told to rejoin (eager:
    owning nothing at JoinGroup), keep two each, and the freed ones reach the
    newcomer. No partition ever has two holders."""
    m = machine()
    m.from_classic(G, 5, [snapshot("a", [0, 1, 2]), snapshot("b", [3, 4, 5])], 0)
    group = m.groups[G]
    assert group.epoch == 5 and group.members["a"].assigned == {"t": frozenset({0, 1, 2})}
    assert m.classic_heartbeat(G, "a", None, 5, 0) == ErrorCode.none
    r = consumer_join(m, "c")
    assert r.error == ErrorCode.none and r.member_epoch == 6 and not r.assignment
    assert m.groups[G].members["c"].state is MemberState.UNRELEASED
    single_owners(m)
    held = {}
    for name in ("a", "b"):
        assert m.classic_heartbeat(G, name, None, 5, 0) == ErrorCode.rebalance_in_progress
        j = classic_join(m, name)
        assert j.error == ErrorCode.none and j.generation == 6 and j.protocol_name == "range"
        held[name] = assigned(m, name, 6)
        assert len(held[name]) == 2
        single_owners(m)
        assert m.classic_heartbeat(G, name, None, 6, 0) == ErrorCode.none
    r = consumer_beat(m, "c", 6, set())
    assert r.assignment is not None
    got = set(r.assignment["t"])
    assert got | held["a"] | held["b"] == set(range(6)) and len(got) == 2
    single_owners(m)


def test_cooperative_classic_member_revokes_before_its_new_epoch() -> None:
    """A classic member that rejoins still owning its partitions keeps its
    epoch as generation and gets the smaller assignment; it moves to the new
    epoch only once a rejoin no longer reports the partitions to give up."""
    m = machine(partitions=4)
    m.from_classic(G, 2, [snapshot("a", [0, 1, 2, 3])], 0)
    consumer_join(m, "c")
    j = classic_join(m, "a", owned={"t": [0, 1, 2, 3]})
    assert j.generation == 2
    kept = assigned(m, "a", 2)
    assert len(kept) == 2
    assert m.groups[G].members["a"].state is MemberState.UNREVOKED
    assert m.classic_heartbeat(G, "a", None, 2, 0) == ErrorCode.rebalance_in_progress
    assert not consumer_beat(m, "c", 3, set()).assignment  # still held by a
    j = classic_join(m, "a", owned={"t": kept})
    assert j.generation == 3 and assigned(m, "a", 3) == kept
    r = consumer_beat(m, "c", 3, set())
    assert r.assignment is not None and set(r.assignment["t"]) == {0, 1, 2, 3} - kept
    single_owners(m)


def test_classic_requests_to_a_consumer_group_are_checked() -> None:
    m = machine()
    m.from_classic(G, 1, [snapshot("a", [0, 1, 2, 3, 4, 5])], 0)
    consumer_join(m, "c")
    required = classic_join(m, "")
    assert required.error == ErrorCode.member_id_required and required.member_id
    assert classic_join(m, "x", protocol_type="connect").error == (
        ErrorCode.inconsistent_group_protocol
    )
    bad = ClassicJoin(G, "x", None, SESSION, 500, "consumer", (("range", b"\x00\x01\xff"),))
    assert m.classic_join(bad, 0).error == ErrorCode.inconsistent_group_protocol
    assert classic_join(m, "c").error == ErrorCode.unknown_member_id  # a consumer member
    only_rr = ClassicJoin(G, "x", None, SESSION, 500, "consumer", (("roundrobin", sub()),))
    assert m.classic_join(only_rr, 0).error == ErrorCode.inconsistent_group_protocol
    assert m.classic_heartbeat(G, "nobody", None, 1, 0) == ErrorCode.unknown_member_id
    assert m.classic_heartbeat(G, "a", None, 7, 0) == ErrorCode.illegal_generation
    assert m.classic_sync(G, "a", None, 7, None, None, 0)[0] == ErrorCode.illegal_generation
    assert m.classic_sync(G, "a", None, 1, "consumer", "roundrobin", 0)[0] == (
        ErrorCode.inconsistent_group_protocol
    )
    assert m.classic_sync(G, "a", None, 1, None, None, 0)[0] == ErrorCode.rebalance_in_progress
    assert m.classic_heartbeat(G, "a", "inst", 1, 0) == ErrorCode.unknown_member_id
    # A consumer heartbeat naming a classic member, offsets at the generation.
    assert consumer_beat(m, "a", 1, set()).error == ErrorCode.unknown_member_id
    assert m.check_commit(G, "a", 1, 2) == ErrorCode.none
    assert m.check_commit(G, "a", 0, 8) == ErrorCode.illegal_generation
    assert m.check_fetch(G, "a", 0) == ErrorCode.illegal_generation
    assert m.classic_leave(G, "c", None) == ErrorCode.unknown_member_id


@pytest.mark.parametrize(
    "policy, back",
    [
        (MigrationPolicy.BIDIRECTIONAL, True),
        (MigrationPolicy.DOWNGRADE, True),
        (MigrationPolicy.UPGRADE, False),
    ],
)
def test_last_consumer_member_leaving_allows_the_downgrade(
    policy: MigrationPolicy, back: bool
) -> None:
    m = machine(policy)
    m.from_classic(G, 1, [snapshot("a", [0, 1, 2]), snapshot("b", [3, 4, 5])], 0)
    consumer_join(m, "c")
    assert not m.downgradable(G)
    m.heartbeat(HeartbeatRequest(G, "c", -1), 0)
    assert m.downgradable(G) is back
    m.classic_leave(G, "a", None)
    m.classic_leave(G, "b", None)
    assert not m.downgradable(G)  # nobody left: an empty group changes on its next join


def test_classic_member_session_expires_on_its_own_timeout() -> None:
    m = machine()
    m.from_classic(G, 1, [snapshot("a", [0, 1, 2], 5000), snapshot("b", [3, 4, 5], 300)], 0)
    assert m.expire(SESSION) == [G]
    assert set(m.groups[G].members) == {"a"}


def test_classic_member_that_does_not_rejoin_or_sync_is_removed() -> None:
    """Told to rejoin, a classic member that keeps heartbeating but does not
    rejoin within its rebalance timeout (500 ms) is removed, so the partitions
    it holds reach the others; so is one that joins and never syncs."""
    m = machine()
    m.from_classic(G, 1, [snapshot("a", [0, 1, 2]), snapshot("b", [3, 4, 5])], 0)
    consumer_join(m, "c")
    assert m.classic_heartbeat(G, "a", None, 1, 100) == ErrorCode.rebalance_in_progress
    assert m.classic_heartbeat(G, "a", None, 1, 400) == ErrorCode.rebalance_in_progress
    assert classic_join(m, "b").error == ErrorCode.none  # at 0: must sync by 500
    assert m.expire(550) == [G] and set(m.groups[G].members) == {"a", "c"}
    assert m.expire(650) == [G] and set(m.groups[G].members) == {"c"}  # told at 100


def test_static_classic_member_restart_takes_over_its_partitions() -> None:
    """A static classic member (group.instance.id) that restarts joins with no
    member id and takes over its predecessor's epoch and partitions; the old
    id is fenced."""
    m = machine()
    old = ClassicSnapshot(
        "a1", "inst-a", "a", "/h", SESSION, 500, (("range", sub()),), sub(),
        encode_assignment({"t": [0, 1, 2]}),
    )  # fmt: skip
    m.from_classic(G, 4, [old, snapshot("b", [3, 4, 5])], 0)
    j = classic_join(m, "", instance_id="inst-a")
    assert j.error == ErrorCode.none and j.member_id != "a1" and j.generation == 4
    assert assigned(m, j.member_id, 4) == {0, 1, 2}
    assert m.classic_heartbeat(G, "a1", "inst-a", 4, 0) == ErrorCode.fenced_instance_id
    assert classic_join(m, "a1", instance_id="inst-a").error == ErrorCode.fenced_instance_id
    assert m.groups[G].epoch == 4, "no rebalance for the others"
    single_owners(m)


def test_static_consumer_member_restarting_classic_downgrades_the_group() -> None:
    """A static consumer-protocol member that left with epoch -2 and restarts
    with the classic protocol takes over its partitions as a classic member;
    the last consumer-protocol member gone, the group may go back to classic.
    Before it has left, its instance id is UNRELEASED_INSTANCE_ID."""
    m = machine()
    m.from_classic(G, 1, [snapshot("b", [0, 1, 2, 3, 4, 5])], 0)
    r = m.heartbeat(
        HeartbeatRequest(
            G, "c", 0, instance_id="inst-c", rebalance_timeout_ms=500,
            subscribed_topic_names=("t",), owned={},
        ),
        0,
    )  # fmt: skip
    assert r.error == ErrorCode.none
    assert classic_join(m, "", instance_id="inst-c").error == ErrorCode.unreleased_instance_id
    m.heartbeat(HeartbeatRequest(G, "c", -2, instance_id="inst-c"), 0)
    j = classic_join(m, "", instance_id="inst-c")
    assert j.error == ErrorCode.none and "c" not in m.groups[G].members
    assert m.groups[G].members[j.member_id].classic is not None
    assert m.downgradable(G)


def test_migration_policy_from_the_broker_config() -> None:
    """Case-insensitive; a value that is no policy stops the broker at
    start-up with a message naming the key and the choices."""
    key = "SHOAL_GROUP_CONSUMER_MIGRATION_POLICY"
    cfg = ConsumerGroupConfig.from_config(load_config(None, {key: "Upgrade"}, {}))
    assert cfg.migration_policy is MigrationPolicy.UPGRADE
    default = ConsumerGroupConfig.from_config(load_config(None, {}, {}))
    assert default.migration_policy is MigrationPolicy.BIDIRECTIONAL
    with pytest.raises(ConfigError, match=r"group\.consumer\.migration\.policy.*disabled"):
        load_config(None, {key: "sideways"}, {})


def test_embedded_protocol_versions_round_trip() -> None:
    s = read_subscription(sub(("x", "y"), {"x": [2, 1]}))
    assert s.version == 1 and s.topics == ("x", "y") and s.owned == {"x": frozenset({1, 2})}
    data = encode_assignment({"x": [3, 1]}, version=1)
    assert data[:2] == b"\x00\x01" and read_assignment(data) == {"x": frozenset({1, 3})}
    assert read_assignment(b"") == {}


# --------------------------------------------------------------- the coordinator


@pytest.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[GroupCoordinator]:
    meta = await MetaStore.open(f"sqlite:///{tmp_path / 'meta.db'}")
    c = await GroupCoordinator.open(
        meta,
        GroupConfig(min_session_timeout_ms=10, initial_rebalance_delay_ms=0),
        ConsumerGroupConfig(session_timeout_ms=10_000, heartbeat_interval_ms=100),
        Topics(t=4),
    )
    yield c
    await c.close()
    await meta.close()


def jreq(member: str = "", protocol_type: str = "consumer") -> JoinRequest:
    return JoinRequest(
        G, member, None, "py", "/h", 10_000, 10_000, protocol_type, (("range", sub()),), False
    )


async def classic_stable(c: GroupCoordinator, protocol_type: str = "consumer") -> str:
    j = await asyncio.wait_for(c.join(jreq(protocol_type=protocol_type)), 5)
    whole = encode_assignment({"t": range(4)})
    s = await asyncio.wait_for(
        c.sync(G, j.generation, j.member_id, None, None, None, {j.member_id: whole}), 5
    )
    assert s.error == ErrorCode.none and c.groups[G].state is State.STABLE
    return str(j.member_id)


async def test_coordinator_upgrades_and_downgrades_a_group_with_members(
    coordinator: GroupCoordinator,
) -> None:
    c = coordinator
    a = await classic_stable(c)
    r = c.consumer_heartbeat(
        HeartbeatRequest(G, "new", 0, rebalance_timeout_ms=500, subscribed_topic_names=("t",))
    )
    assert r.error == ErrorCode.none and c.group_type(G) == "consumer"
    assert c.heartbeat(G, 1, a, None) == ErrorCode.rebalance_in_progress
    j = await asyncio.wait_for(c.join(jreq(a)), 5)
    assert j.error == ErrorCode.none and j.generation == 2 and j.leader == ""
    s = await asyncio.wait_for(c.sync(G, 2, a, None, "consumer", "range", {}), 5)
    assert s.error == ErrorCode.none and len(read_assignment(s.assignment)["t"]) == 2
    rows = [row for row in c.list_groups() if row[0] == G]
    assert rows == [(G, "consumer", "Reconciling", "consumer")]
    # The consumer member leaves: the classic member makes a classic group again.
    c.consumer_heartbeat(HeartbeatRequest(G, "new", -1))
    assert c.group_type(G) == "classic"
    assert c.groups[G].state is State.PREPARING_REBALANCE
    assert c.heartbeat(G, 2, a, None) == ErrorCode.rebalance_in_progress
    j = await asyncio.wait_for(c.join(jreq(a)), 5)
    assert j.error == ErrorCode.none and j.leader == a and j.generation == 3


async def test_coordinator_refuses_the_upgrade_it_may_not_do(
    coordinator: GroupCoordinator,
) -> None:
    """A classic group of another protocol type stays classic: the
    consumer-protocol member gets GROUP_ID_NOT_FOUND."""
    await classic_stable(coordinator, protocol_type="connect")
    r = coordinator.consumer_heartbeat(
        HeartbeatRequest(G, "new", 0, rebalance_timeout_ms=500, subscribed_topic_names=("t",))
    )
    assert r.error == ErrorCode.group_id_not_found and coordinator.group_type(G) == "classic"


# ------------------------------------------------------------------ real clients

ENV = {
    "SHOAL_GROUP_CONSUMER_SESSION_TIMEOUT_MS": "3000",
    "SHOAL_GROUP_CONSUMER_MIN_SESSION_TIMEOUT_MS": "500",
    "SHOAL_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS": "200",
    "SHOAL_GROUP_CONSUMER_MIN_HEARTBEAT_INTERVAL_MS": "100",
    # kafka-python needs a short initial delay (see test_groups_kafka_python).
    "SHOAL_GROUP_INITIAL_REBALANCE_DELAY_MS": "1000",
    "SHOAL_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
}
# A classic member that stops answering holds a rebalance up for at most this.
CLASSIC = {"max.poll.interval.ms": 10_000}
PARTITIONS = 6


@pytest.fixture(scope="module")
def mbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("migration") / "data", env=ENV).start()
    yield b
    b.stop()


class Producing:
    """Records `P-I` produced to every partition in turn until stopped."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self.topic = topic
        self.counts = [0] * PARTITIONS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for p in range(PARTITIONS):
                self.producer.produce(self.topic, f"{p}-{self.counts[p]}".encode(), partition=p)
                self.counts[p] += 1
            self.producer.poll(0)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(TIMEOUT)
        assert self.producer.flush(TIMEOUT) == 0
        return self.counts


def group_type(bootstrap: str, group: str) -> str | None:
    with RawClient(bootstrap) as c:
        listed = c.call(16, 5, lg.ListGroupsRequest(states_filter=(), types_filter=()))
    return {g.group_id: g.group_type for g in listed.groups}.get(group)


def owned_once(ws: list[Worker]) -> bool:
    """Every partition owned by exactly one of `ws`, each owning some."""
    return shared(ws, PARTITIONS)


def check_history(ws: list[Worker], counts: list[int]) -> None:
    """From the workers' events: no partition was ever owned by two at once,
    each record was printed while its worker owned its partition, and each
    partition's records were printed, each after its commit, exactly once and
    in offset order: the committed offsets are continuous."""
    spans = ownership(ws, PARTITIONS)
    seen: dict[int, list[tuple[float, int]]] = {p: [] for p in range(PARTITIONS)}
    for i, w in enumerate(ws):
        for e in (e for e in w.events if e["event"] == "msg"):
            p, t = e["partition"], e["t"]
            assert any(j == i and s <= t <= end for s, end, j in spans[p]), (
                f"worker {i} consumed partition {p} it lacks"
            )
            seen[p].append((t, int(e["value"].split("-")[1])))
    for p in range(PARTITIONS):
        offsets = [i for _t, i in sorted(seen[p])]
        assert offsets == list(range(counts[p])), f"partition {p}: {offsets[:5]}..."


class Cooperative(Worker):
    """A classic member with the cooperative-sticky assignor: its rebalance
    callbacks are incremental, as under the consumer protocol."""

    _read = Member._read

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        super().__init__(
            bootstrap, group, topic, **CLASSIC, **{"partition.assignment.strategy": STICKY}
        )


STICKY = "cooperative-sticky"


@pytest.mark.parametrize("strategy", ["range,roundrobin", STICKY])
def test_rolling_upgrade_to_the_consumer_protocol_and_back(
    mbroker: BrokerProcess, workers: list[Worker], strategy: str
) -> None:
    """Three classic confluent-kafka members (eager or cooperative assignor)
    consume under continuous produce;
    one at a time each is replaced by a consumer-protocol member (the group
    converts when the first joins; the classic members go on in it), then
    back to classic ones (it converts back when the last consumer-protocol
    member leaves)."""
    bootstrap = mbroker.bootstrap
    topic = create_topic(bootstrap, PARTITIONS)
    group = f"mig-{uuid.uuid4().hex[:8]}"
    producing = Producing(bootstrap, topic)
    try:

        def classic() -> Worker:
            if strategy == STICKY:
                return Cooperative(bootstrap, group, topic)
            return Worker(bootstrap, group, topic, **CLASSIC)

        current = [classic() for _ in range(3)]
        workers.extend(current)
        wait_for(lambda: owned_once(current), "three classic members sharing six partitions")
        assert group_type(bootstrap, group) == "classic"
        for kind, make in (
            ("consumer", lambda: Member(bootstrap, group, topic)),
            ("classic", classic),
        ):
            for i in range(3):
                current[i].stop()
                current[i] = make()
                workers.append(current[i])
                wait_for(lambda: owned_once(current), f"{kind} member {i} taking its share")
                new, before = current[i], len(current[i].values())
                wait_for(
                    lambda n=new, b=before: len(n.values()) > b,  # type: ignore[misc]
                    f"{kind} member {i} consuming",
                )
                # Converted by the first consumer-protocol member to join, and
                # back once the last one has left.
                want = "classic" if kind == "classic" and i == 2 else "consumer"
                assert group_type(bootstrap, group) == want
    finally:
        counts = producing.stop()
    total = sum(counts)
    try:
        wait_for(lambda: len(all_values(workers)) >= total, "every record consumed", 120)
    except AssertionError:
        # Which partition fell behind, and who holds it (failed once in a
        # suite run at load ~4, passing alone; the cause is not known yet).
        got = set(all_values(workers))
        behind = {
            p: [i for i in range(counts[p]) if f"{p}-{i}" not in got][:3] for p in range(PARTITIONS)
        }
        owners = {i: sorted(w.assigned) for i, w in enumerate(current)}
        raise AssertionError(
            f"not consumed (first 3 per partition): {behind}; owners {owners}"
        ) from None
    for w in workers:
        w.stop()
    check_history(workers, counts)


def test_kafka_python_members_stay_classic_beside_a_consumer_member(
    mbroker: BrokerProcess, workers: list[Worker]
) -> None:
    """Two kafka-python members (classic only) and a confluent-kafka member
    with the consumer protocol share a group: the kafka-python members are
    answered by the consumer group through JoinGroup/SyncGroup; when the
    consumer-protocol member leaves, the group is classic again."""
    from test_groups_kafka_python import Member as KpMember
    from test_groups_kafka_python import poll_until

    bootstrap = mbroker.bootstrap
    topic, expected = setup_topic(bootstrap, 4, 10, "a", prefix="mx")
    group = f"mix-{uuid.uuid4().hex[:8]}"
    kp = [KpMember(bootstrap, group, topic) for _ in range(2)]
    try:
        poll_until(kp, lambda: all(m.partitions for m in kp), "two kafka-python members")
        modern = Member(bootstrap, group, topic)
        workers.append(modern)

        def split() -> bool:
            parts = [m.partitions for m in kp] + [modern.assignment()]
            return all(parts) and sorted(p for ps in parts for p in ps) == [0, 1, 2, 3]

        poll_until(kp, split, "a three-way split with the consumer-protocol member")
        assert group_type(bootstrap, group) == "consumer"
        expected |= produce(bootstrap, topic, 4, 10, "b")
        got = lambda: [v for m in kp for v in m.values] + modern.values()  # noqa: E731
        poll_until(kp, lambda: set(got()) >= expected, "records of the mixed group")
        modern.stop()
        poll_until(
            kp,
            lambda: sorted(p for m in kp for p in m.partitions) == [0, 1, 2, 3],
            "the kafka-python members taking over",
        )
        assert group_type(bootstrap, group) == "classic"
        expected |= produce(bootstrap, topic, 4, 10, "c")
        poll_until(kp, lambda: set(got()) >= expected, "records after the downgrade")
        assert len(got()) == len(set(got())) and set(got()) == expected
    finally:
        for m in kp:
            m.close()
