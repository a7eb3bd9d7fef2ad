"""The consumer group protocol (KIP-848): confluent-kafka with
`group.protocol=consumer`, unmodified, and raw requests for the errors a real
client never provokes on purpose.

The broker runs with short `group.consumer.*` timeouts so that a crashed
member's partitions move within seconds. Members that must be killed or
restarted are subprocesses (tests/group_worker.py), which print a record only
after committing it, so "exactly once" is the broker's doing.
"""

from __future__ import annotations

import datetime
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kio.schema.consumer_group_describe.v1 import request as cgd
from kio.schema.consumer_group_heartbeat.v1 import request as cgh
from kio.schema.delete_groups.v2 import request as dgr
from kio.schema.describe_groups.v6 import request as dg
from kio.schema.list_groups.v5 import request as lg
from kio.schema.offset_delete.v0 import request as od
from kio.schema.offset_fetch.v9 import request as of

from group_data import create_topic, produce
from harness import BrokerProcess
from shoal.group.embedded import parse_subscription
from shoal.protocol.errors import ErrorCode
from test_groups_confluent import Worker, all_values
from wire import RawClient

SESSION_MS = 3000
ENV = {
    "SHOAL_GROUP_CONSUMER_SESSION_TIMEOUT_MS": str(SESSION_MS),
    "SHOAL_GROUP_CONSUMER_MIN_SESSION_TIMEOUT_MS": "500",
    "SHOAL_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS": "200",
    "SHOAL_GROUP_CONSUMER_MIN_HEARTBEAT_INTERVAL_MS": "100",
    "SHOAL_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
}
CONSUMER = {"group.protocol": "consumer"}
TIMEOUT = 60.0


class Member(Worker):
    """A worker whose rebalance callbacks are incremental, as they are under
    the consumer protocol (an assign names only the partitions added)."""

    def __init__(self, bootstrap: str, group: str, topic: str, **conf: Any) -> None:
        super().__init__(bootstrap, group, topic, **CONSUMER, **conf)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            with self._lock:
                self.events.append(event)
                if event["event"] == "assign":
                    self.assigned |= set(event["partitions"])
                elif event["event"] == "revoke":
                    self.assigned -= set(event["partitions"])


@pytest.fixture(scope="module")
def kbroker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("kip848") / "data", env=ENV).start()
    yield b
    b.stop()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def shared(ws: list[Worker], n: int) -> bool:
    """Every partition owned by exactly one of `ws`, and each has some."""
    owned = [p for w in ws for p in w.assignment()]
    return sorted(owned) == list(range(n)) and all(w.assignment() for w in ws)


def ownership(ws: list[Worker], n: int) -> dict[int, list[tuple[float, float, int]]]:
    """Each partition's ownership spans (assign to revoke, on the workers' one
    clock) as (start, end, index in `ws`); asserts that no two overlap."""
    spans: dict[int, list[tuple[float, float, int]]] = {p: [] for p in range(n)}
    for i, w in enumerate(ws):
        opened: dict[int, float] = {}
        for e in w.events:
            if e["event"] == "assign":
                for p in e["partitions"]:
                    opened[p] = e["t"]
            elif e["event"] == "revoke":
                for p in e["partitions"]:
                    spans[p].append((opened.pop(p), e["t"], i))
        for p, start in opened.items():
            spans[p].append((start, float("inf"), i))
    for p, owned in spans.items():
        owned.sort()
        for (_s0, end, w0), (start, _e1, w1) in itertools.pairwise(owned):
            assert end <= start, f"partition {p} owned by workers {w0} and {w1} at once"
    return spans


def test_join_leave_crash_exactly_once(kbroker: BrokerProcess, workers: list[Worker]) -> None:
    """One member takes every partition; two more join and the six are split
    three ways; one leaves (its partitions move at once), one is killed (they
    move after the session timeout). Every record is consumed exactly once."""
    bootstrap = kbroker.bootstrap
    topic = create_topic(bootstrap, 6)
    group = f"k-{uuid.uuid4().hex[:8]}"
    expected = produce(bootstrap, topic, 6, 20, "a")
    workers.append(Member(bootstrap, group, topic))
    wait_for(lambda: len(all_values(workers)) >= len(expected), "the first member's records")
    assert workers[0].assignment() == set(range(6))

    workers.extend(Member(bootstrap, group, topic) for _ in range(2))
    wait_for(lambda: shared(workers, 6), "three members sharing six partitions")
    expected |= produce(bootstrap, topic, 6, 20, "b")
    wait_for(lambda: len(all_values(workers)) >= len(expected), "records after the joins")

    leaver, victim, survivor = workers
    leaver.stop()
    wait_for(lambda: shared([victim, survivor], 6), "the leaver's partitions to move")
    victim.kill()
    wait_for(lambda: survivor.assignment() == set(range(6)), "the killed member's partitions")
    expected |= produce(bootstrap, topic, 6, 20, "c")
    wait_for(lambda: len(all_values(workers)) >= len(expected), "records after the crash")
    time.sleep(0.3)  # let a duplicate show up before judging
    got = all_values(workers)
    assert len(got) == len(set(got)), "no record twice"
    assert set(got) == expected


def test_members_go_on_at_their_epochs_across_a_broker_restart(
    kbroker: BrokerProcess, workers: list[Worker]
) -> None:
    """The broker restarts under two consumer-protocol members: the group goes
    on without a rebalance (the same members at the same epochs, as
    ConsumerGroupDescribe shows, nobody revoking anything) and every record is
    consumed once."""
    bootstrap = kbroker.bootstrap
    topic = create_topic(bootstrap, 4)
    group = f"kr-{uuid.uuid4().hex[:8]}"
    workers.extend(Member(bootstrap, group, topic) for _ in range(2))
    wait_for(lambda: shared(workers, 4), "two members sharing four partitions")
    expected = produce(bootstrap, topic, 4, 10, "a")
    wait_for(lambda: len(all_values(workers)) >= len(expected), "records before the restart")
    with RawClient(bootstrap) as c:
        before = {m.member_id: m.member_epoch for m in members(c, group)}
    owned = [w.assignment() for w in workers]
    revokes = sum(e["event"] == "revoke" for w in workers for e in w.events)
    kbroker.restart()
    expected |= produce(bootstrap, topic, 4, 10, "b")
    wait_for(lambda: len(all_values(workers)) >= len(expected), "records after the restart")
    with RawClient(bootstrap) as c:
        assert {m.member_id: m.member_epoch for m in members(c, group)} == before
    assert [w.assignment() for w in workers] == owned
    assert sum(e["event"] == "revoke" for w in workers for e in w.events) == revokes
    got = all_values(workers)
    assert len(got) == len(set(got)) and set(got) == expected


def test_static_member_restart_keeps_its_assignment(
    kbroker: BrokerProcess, workers: list[Worker]
) -> None:
    """A static member (group.instance.id) that closes and comes back gets its
    partitions again; the other member sees no revocation or assignment."""
    bootstrap = kbroker.bootstrap
    topic = create_topic(bootstrap, 4)
    group = f"k-{uuid.uuid4().hex[:8]}"
    a = Member(bootstrap, group, topic, **{"group.instance.id": "a"})
    b = Member(bootstrap, group, topic, **{"group.instance.id": "b"})
    workers.extend([a, b])
    wait_for(lambda: shared([a, b], 4), "two static members sharing four partitions")
    time.sleep(0.5)  # a trailing reconciliation would blur the baseline
    before = set(b.assignment())
    a_events = len([e for e in a.events if e["event"] in ("assign", "revoke")])
    b.stop()
    again = Member(bootstrap, group, topic, **{"group.instance.id": "b"})
    workers.append(again)
    wait_for(lambda: bool(again.assignment()), "the restarted member's assignment")
    assert again.assignment() == before
    expected = produce(bootstrap, topic, 4, 10, "s")
    wait_for(lambda: expected <= set(a.values()) | set(again.values()), "records after the restart")
    assert len([e for e in a.events if e["event"] in ("assign", "revoke")]) == a_events


def test_regex_subscription_picks_up_new_topics(kbroker: BrokerProcess) -> None:
    """`^prefix-.*` (sent as SubscribedTopicRegex): a matching topic created
    after the member joined is assigned to it at a later heartbeat."""
    from confluent_kafka import Consumer

    prefix = f"rx{uuid.uuid4().hex[:6]}"
    first = create_topic(kbroker.bootstrap, 1, prefix=prefix)
    produce(kbroker.bootstrap, first, 1, 3, "a")
    c = Consumer(
        {
            "bootstrap.servers": kbroker.bootstrap,
            "group.id": f"k-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": 500,
            **CONSUMER,
        }
    )
    c.subscribe([f"^{prefix}-.*"])
    seen: set[str] = set()
    second = ""
    try:
        end = time.monotonic() + TIMEOUT
        while time.monotonic() < end and second not in seen:
            m = c.poll(0.1)
            if m is not None and not m.error():
                seen.add(m.topic())
            if seen == {first} and not second:
                second = create_topic(kbroker.bootstrap, 1, prefix=prefix)
                produce(kbroker.bootstrap, second, 1, 3, "b")
    finally:
        c.close()
    assert seen == {first, second}


# raw protocol ----------------------------------------------------------------------


def heartbeat(c: RawClient, group: str, member: str, epoch: int, **kw: Any) -> Any:
    fields: dict[str, Any] = {
        "group_id": group,
        "member_id": member,
        "member_epoch": epoch,
        "rebalance_timeout": datetime.timedelta(milliseconds=5000 if epoch == 0 else -1),
        "subscribed_topic_names": None,
        "topic_partitions": None,
    }
    fields.update(kw)
    return c.call(68, 1, cgh.ConsumerGroupHeartbeatRequest(**fields))


def join(c: RawClient, group: str, topic: str, **kw: Any) -> tuple[str, Any]:
    member = uuid.uuid4().hex
    kw.setdefault("subscribed_topic_names", (topic,))
    return member, heartbeat(c, group, member, 0, topic_partitions=(), **kw)


def commit(c: RawClient, version: int, group: str, member: str, epoch: int, topic: str) -> Any:
    from kio.index import load_request_schema

    mod = __import__(load_request_schema(8, version).__module__, fromlist=["x"])
    body = mod.OffsetCommitRequest(
        group_id=group,
        generation_id_or_member_epoch=epoch,
        member_id=member,
        group_instance_id=None,
        topics=(
            mod.OffsetCommitRequestTopic(
                name=topic,
                partitions=(
                    mod.OffsetCommitRequestPartition(
                        partition_index=0, committed_offset=1, committed_metadata=""
                    ),
                ),
            ),
        ),
    )
    return c.call(8, version, body).topics[0].partitions[0].error_code


@pytest.fixture
def topic(kbroker: BrokerProcess) -> str:
    return create_topic(kbroker.bootstrap, 2)


def test_bad_heartbeats(kbroker: BrokerProcess, topic: str) -> None:
    group = f"raw-{uuid.uuid4().hex[:8]}"
    with RawClient(kbroker.bootstrap) as c:
        member, r = join(c, group, topic)
        assert r.error_code == ErrorCode.none and r.member_epoch == 1
        assert r.assignment is not None and r.assignment.topic_partitions[0].partitions == (0, 1)

        fenced = heartbeat(c, group, member, 5, topic_partitions=())
        assert fenced.error_code == ErrorCode.fenced_member_epoch and fenced.error_message
        unknown = heartbeat(c, group, uuid.uuid4().hex, 1)
        assert unknown.error_code == ErrorCode.unknown_member_id
        _, regex = join(c, group, topic, subscribed_topic_regex="(unclosed")
        assert regex.error_code == ErrorCode.invalid_regular_expression
        assert "(unclosed" in (regex.error_message or "")
        regex_group = f"{group}-re"
        _, by_regex = join(
            c, regex_group, topic, subscribed_topic_names=None, subscribed_topic_regex=f"{topic}|x"
        )
        assert by_regex.assignment.topic_partitions[0].partitions == (0, 1)
        viewed = c.call(
            15,
            6,
            dg.DescribeGroupsRequest(groups=(regex_group,), include_authorized_operations=False),
        ).groups[0]
        assert viewed.error_code == ErrorCode.none and len(viewed.members) == 1
        _, assignor = join(c, group, topic, server_assignor="cooperative-sticky")
        assert assignor.error_code == ErrorCode.unsupported_assignor
        assert "cooperative-sticky" in (assignor.error_message or "")
        empty = heartbeat(c, group, "", 0, topic_partitions=(), subscribed_topic_names=(topic,))
        assert empty.error_code == ErrorCode.invalid_request

        assert heartbeat(c, group, member, 1).error_code == ErrorCode.none
        # Silent past the session timeout: the member is removed.
        wait_for(lambda: not members(c, group), "the silent member to expire", SESSION_MS / 100)
        late = heartbeat(c, group, member, 1)
        assert late.error_code == ErrorCode.unknown_member_id


def members(c: RawClient, group: str) -> tuple[Any, ...]:
    body = cgd.ConsumerGroupDescribeRequest(group_ids=(group,), include_authorized_operations=False)
    described = c.call(69, 1, body).groups[0]
    assert described.error_code == ErrorCode.none
    return tuple(described.members)


def test_offsets_and_describe_with_member_epochs(kbroker: BrokerProcess, topic: str) -> None:
    group = f"raw-{uuid.uuid4().hex[:8]}"
    with RawClient(kbroker.bootstrap) as c:
        member, r = join(c, group, topic, server_assignor="range")
        epoch = r.member_epoch
        assert commit(c, 9, group, member, epoch, topic) == ErrorCode.none
        assert commit(c, 9, group, member, epoch - 1, topic) == ErrorCode.stale_member_epoch
        assert commit(c, 9, group, "stranger", epoch, topic) == ErrorCode.unknown_member_id
        assert commit(c, 8, group, member, epoch, topic) == ErrorCode.unsupported_version
        assert commit(c, 9, group, "", -1, topic) == ErrorCode.unknown_member_id

        def fetch(member_id: str | None, member_epoch: int) -> Any:
            body = of.OffsetFetchRequest(
                groups=(
                    of.OffsetFetchRequestGroup(
                        group_id=group,
                        member_id=member_id,
                        member_epoch=member_epoch,
                        topics=(of.OffsetFetchRequestTopics(name=topic, partition_indexes=(0,)),),
                    ),
                ),
                require_stable=True,
            )
            return c.call(9, 9, body).groups[0]

        assert heartbeat(c, group, member, epoch).error_code == ErrorCode.none  # stay alive
        ok = fetch(member, epoch)
        assert ok.error_code == ErrorCode.none
        assert ok.topics[0].partitions[0].committed_offset == 1
        assert fetch(member, epoch + 1).error_code == ErrorCode.stale_member_epoch
        assert fetch(None, -1).error_code == ErrorCode.none, "an admin's fetch"

        assert heartbeat(c, group, member, epoch).error_code == ErrorCode.none
        (m,) = members(c, group)
        assert m.member_id == member and m.member_epoch == epoch and m.member_type == 1
        assert sorted(m.assignment.topic_partitions[0].partitions) == [0, 1]
        body = cgd.ConsumerGroupDescribeRequest(
            group_ids=(group, "no-such-group"), include_authorized_operations=False
        )
        described, missing = c.call(69, 1, body).groups
        assert described.assignor_name == "range" and described.group_state == "Stable"
        assert missing.error_code == ErrorCode.group_id_not_found

        assert heartbeat(c, group, member, epoch).error_code == ErrorCode.none
        classic_view = c.call(
            15, 6, dg.DescribeGroupsRequest(groups=(group,), include_authorized_operations=False)
        ).groups[0]
        assert (classic_view.protocol_type, classic_view.protocol_data) == ("consumer", "range")
        assert classic_view.group_state == "Stable"
        (cm,) = classic_view.members
        assert cm.member_id == member and parse_subscription(cm.member_metadata) == [topic]

        listed = c.call(16, 5, lg.ListGroupsRequest(states_filter=(), types_filter=("consumer",)))
        kinds = {g.group_id: g.group_type for g in listed.groups}
        assert kinds.get(group) == "consumer"
        assert set(kinds.values()) == {"consumer"}, "the type filter"
        classic = c.call(16, 5, lg.ListGroupsRequest(states_filter=(), types_filter=("Classic",)))
        assert group not in {g.group_id for g in classic.groups}
        stable = c.call(16, 5, lg.ListGroupsRequest(states_filter=("stable",), types_filter=()))
        assert group in {g.group_id for g in stable.groups}

        def delete_group() -> Any:
            return c.call(42, 2, dgr.DeleteGroupsRequest(groups_names=(group,))).results[0]

        def delete_offsets() -> Any:
            body = od.OffsetDeleteRequest(
                group_id=group,
                topics=(
                    od.OffsetDeleteRequestTopic(
                        name=topic, partitions=(od.OffsetDeleteRequestPartition(partition_index=0),)
                    ),
                ),
            )
            return c.call(47, 0, body)

        assert delete_group().error_code == ErrorCode.non_empty_group
        subscribed = delete_offsets()
        assert subscribed.error_code == ErrorCode.none
        assert subscribed.topics[0].partitions[0].error_code == ErrorCode.group_subscribed_to_topic

        left = heartbeat(c, group, member, -1)
        assert left.error_code == ErrorCode.none and left.member_epoch == -1
        assert commit(c, 9, group, "", -1, topic) == ErrorCode.none, "empty: simple commits"
        assert delete_offsets().topics[0].partitions[0].error_code == ErrorCode.none
        assert delete_group().error_code == ErrorCode.none
        assert delete_group().error_code == ErrorCode.group_id_not_found


def test_protocols_do_not_mix(kbroker: BrokerProcess, topic: str) -> None:
    """A consumer-protocol group with members refuses a classic JoinGroup whose
    embedded protocol does not parse; an empty one turns classic with its
    first classic member (and back)."""
    from kio.schema.join_group.v9 import request as jg

    group = f"raw-{uuid.uuid4().hex[:8]}"

    def classic_join(c: RawClient) -> Any:
        body = jg.JoinGroupRequest(
            group_id=group,
            session_timeout=datetime.timedelta(seconds=10),
            rebalance_timeout=datetime.timedelta(seconds=10),
            member_id="",
            group_instance_id=None,
            protocol_type="consumer",
            protocols=(jg.JoinGroupRequestProtocol(name="range", metadata=b""),),
            reason=None,
        )
        return c.call(11, 9, body)

    with RawClient(kbroker.bootstrap) as c:
        member, _ = join(c, group, topic)
        assert classic_join(c).error_code == ErrorCode.inconsistent_group_protocol
        heartbeat(c, group, member, -1)
        assert classic_join(c).error_code == ErrorCode.member_id_required, "now classic"
        listed = c.call(16, 5, lg.ListGroupsRequest(states_filter=(), types_filter=()))
        assert {g.group_id: g.group_type for g in listed.groups}[group] == "classic"
        _, bad = join(c, group, topic, server_assignor="nope")
        assert bad.error_code == ErrorCode.unsupported_assignor
        listed = c.call(16, 5, lg.ListGroupsRequest(states_filter=(), types_filter=()))
        assert {g.group_id: g.group_type for g in listed.groups}[group] == "classic", "unchanged"
        _, again = join(c, group, topic)
        assert again.error_code == ErrorCode.none, "an empty classic group turns consumer"
        listed = c.call(16, 5, lg.ListGroupsRequest(states_filter=(), types_filter=()))
        assert {g.group_id: g.group_type for g in listed.groups}[group] == "consumer"


def owned(r: Any) -> tuple[Any, ...]:
    """A heartbeat answer's assignment as the partitions a member reports owning."""
    return tuple(
        cgh.TopicPartitions(topic_id=tp.topic_id, partitions=tp.partitions)
        for tp in r.assignment.topic_partitions
    )


def held(r: Any) -> set[int]:
    """Partitions in a heartbeat answer (none if it left the assignment out)."""
    if r.assignment is None:
        return set()
    return {p for tp in r.assignment.topic_partitions for p in tp.partitions}


def test_group_survives_a_restart(kbroker: BrokerProcess, topic: str) -> None:
    """The group, its members and its offsets survive a broker restart (as
    Kafka's coordinator replays them): the member goes on at its epoch with its
    partitions, and a member joining after the restart gets none of them until
    the first has revoked them."""
    group = f"raw-{uuid.uuid4().hex[:8]}"
    with RawClient(kbroker.bootstrap) as c:
        first, r = join(c, group, topic)
        epoch = r.member_epoch
        assert held(r) == {0, 1}
        assert commit(c, 9, group, first, epoch, topic) == ErrorCode.none
    kbroker.restart()
    with RawClient(kbroker.bootstrap) as c:
        listed = c.call(16, 5, lg.ListGroupsRequest(states_filter=(), types_filter=("consumer",)))
        assert {g.group_id: g.group_state for g in listed.groups}.get(group) == "Stable"
        (m,) = members(c, group)
        assert (m.member_id, m.member_epoch) == (first, epoch)
        assert {p for tp in m.assignment.topic_partitions for p in tp.partitions} == {0, 1}
        again = heartbeat(c, group, first, epoch, topic_partitions=owned(r))
        assert (again.error_code, again.member_epoch) == (ErrorCode.none, epoch)
        assert commit(c, 9, group, first, epoch, topic) == ErrorCode.none
        second, s = join(c, group, topic)
        assert s.error_code == ErrorCode.none and held(s) == set(), "both still the first's"
        shrink = heartbeat(c, group, first, epoch, topic_partitions=owned(r))
        assert shrink.member_epoch == epoch and len(held(shrink)) == 1, "asked to revoke one"
        assert held(heartbeat(c, group, second, s.member_epoch, topic_partitions=())) == set()
        done = heartbeat(c, group, first, epoch, topic_partitions=owned(shrink))
        assert done.error_code == ErrorCode.none and done.member_epoch > epoch
        last = heartbeat(c, group, second, s.member_epoch, topic_partitions=())
        assert held(last) == {0, 1} - held(shrink)
        body = of.OffsetFetchRequest(
            groups=(of.OffsetFetchRequestGroup(group_id=group, topics=None),), require_stable=True
        )
        (t,) = c.call(9, 9, body).groups[0].topics
        assert (t.name, t.partitions[0].committed_offset) == (topic, 1)


def test_offsets_v10_name_topics_by_id(kbroker: BrokerProcess, topic: str) -> None:
    """OffsetCommit and OffsetFetch v10 (Kafka 4.1) carry topic ids: a commit
    by id is fetched back by id (and by name with v9); an id no topic has is
    UNKNOWN_TOPIC_ID on each of its partitions, next to the known one."""
    from kio.schema.offset_commit.v10 import request as oc
    from kio.schema.offset_fetch.v10 import request as of10

    from wire import topic_id

    tid, ghost = topic_id(kbroker.bootstrap, topic), uuid.uuid4()
    group = f"v10-{uuid.uuid4().hex[:8]}"

    def part(index: int, offset: int) -> Any:
        return oc.OffsetCommitRequestPartition(
            partition_index=index, committed_offset=offset, committed_metadata="m"
        )

    with RawClient(kbroker.bootstrap) as c:
        r = c.call(8, 10, oc.OffsetCommitRequest(
            group_id=group, generation_id_or_member_epoch=-1, member_id="",
            topics=(
                oc.OffsetCommitRequestTopic(topic_id=tid, partitions=(part(0, 7), part(1, 9))),
                oc.OffsetCommitRequestTopic(topic_id=ghost, partitions=(part(0, 1),)),
            ),
        ))  # fmt: skip
        assert [(t.topic_id, [p.error_code for p in t.partitions]) for t in r.topics] == [
            (tid, [ErrorCode.none, ErrorCode.none]),
            (ghost, [ErrorCode.unknown_topic_id]),
        ]

        def fetch(topics: Any) -> Any:
            body = of10.OffsetFetchRequest(
                groups=(
                    of10.OffsetFetchRequestGroup(
                        group_id=group, member_id=None, member_epoch=-1, topics=topics
                    ),
                ),
                require_stable=False,
            )
            (g,) = c.call(9, 10, body).groups
            assert g.error_code == ErrorCode.none
            return {
                (t.topic_id, p.partition_index): (p.committed_offset, p.error_code)
                for t in g.topics
                for p in t.partitions
            }

        asked = (
            of10.OffsetFetchRequestTopics(topic_id=tid, partition_indexes=(0, 1)),
            of10.OffsetFetchRequestTopics(topic_id=ghost, partition_indexes=(0,)),
        )
        assert fetch(asked) == {
            (tid, 0): (7, ErrorCode.none),
            (tid, 1): (9, ErrorCode.none),
            (ghost, 0): (-1, ErrorCode.unknown_topic_id),
        }
        assert fetch(None) == {(tid, 0): (7, ErrorCode.none), (tid, 1): (9, ErrorCode.none)}
        by_name = c.call(9, 9, of.OffsetFetchRequest(
            groups=(of.OffsetFetchRequestGroup(
                group_id=group, member_id=None, member_epoch=-1,
                topics=(of.OffsetFetchRequestTopics(name=topic, partition_indexes=(1,)),),
            ),),
            require_stable=False,
        ))  # fmt: skip
        assert by_name.groups[0].topics[0].partitions[0].committed_offset == 9
