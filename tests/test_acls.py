"""ACLs end to end: enforcement with Kafka's error codes, the admin APIs from
kafka-python's and confluent-kafka's admin clients, bad input, super users,
the per-site recipe.

Until SASL gives connections other principals, the client here is
User:ANONYMOUS; the shared broker allows everyone where no ACL names a
resource (allow.everyone.if.no.acl.found=true), so each test confines itself
to resources of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka import admin as cadmin
from kafka import KafkaAdminClient
from kafka import admin as kadmin
from kafka.errors import TopicAuthorizationFailedError
from kio.schema.errors import ErrorCode

from acl_helpers import (
    ALL,
    ALLOW,
    ALTER,
    ANON,
    ANY,
    CLUSTER,
    CREATE,
    DELETE,
    DENY,
    DESCRIBE,
    GROUP,
    LITERAL,
    MATCH,
    PREFIXED,
    READ,
    TOPIC,
    WRITE,
    allow,
    create_acls,
    delete_acls,
    describe_acls,
    end_offset,
    metadata,
    topic_errors,
)
from harness import BrokerProcess
from wire import RawClient, create_topic, fetch_request, make_batch, produce, record

AUTHZ = {"SHOAL_AUTHORIZER_CLASS_NAME": "shoal"}
OPEN = {**AUTHZ, "SHOAL_ALLOW_EVERYONE_IF_NO_ACL_FOUND": "true"}


@pytest.fixture(scope="module")
def open_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("acl") / "data", env=OPEN).start()
    yield b
    b.stop()


def name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def batch(n: int = 1) -> bytes:
    return make_batch([record(None, b"v%d" % i, i) for i in range(n)])


def test_denied_produce_leaves_the_log_unchanged(open_broker: BrokerProcess) -> None:
    boot = open_broker.bootstrap
    t = name()
    assert create_topic(boot, t) == ErrorCode.none
    assert ErrorCode(produce(boot, t, batch(2)).error_code) == ErrorCode.none
    assert end_offset(boot, t) == 2
    allow(
        boot,
        (TOPIC, t, LITERAL, ANON, "*", ALL, ALLOW),
        (TOPIC, t, LITERAL, ANON, "*", WRITE, DENY),
    )
    # Deny wins over the ALLOW ALL: the write is refused, reads still work.
    assert ErrorCode(produce(boot, t, batch(3)).error_code) == ErrorCode.topic_authorization_failed
    p = Producer({"bootstrap.servers": boot, "message.timeout.ms": 5000})
    errors: list[str] = []
    p.produce(t, b"x", on_delivery=lambda err, _m: errors.append(err.name() if err else "OK"))
    p.flush(10)
    assert errors == ["TOPIC_AUTHORIZATION_FAILED"]
    assert end_offset(boot, t) == 2
    # Take the DENY away: the same write goes through.
    resp = delete_acls(boot, (TOPIC, t, LITERAL, ANON, "*", WRITE, DENY))
    assert len(resp.filter_results[0].matching_acls) == 1
    assert ErrorCode(produce(boot, t, batch(1)).error_code) == ErrorCode.none
    assert end_offset(boot, t) == 3


def test_denied_offset_commit_stores_nothing(open_broker: BrokerProcess) -> None:
    boot = open_broker.bootstrap
    t, g = name(), name("g")
    assert create_topic(boot, t) == ErrorCode.none
    allow(
        boot, (GROUP, g, LITERAL, ANON, "*", ALL, ALLOW), (GROUP, g, LITERAL, ANON, "*", READ, DENY)
    )
    c = Consumer({"bootstrap.servers": boot, "group.id": g, "enable.auto.commit": False})
    try:
        with pytest.raises(KafkaException) as info:
            c.commit(offsets=[TopicPartition(t, 0, 5)], asynchronous=False)
        assert info.value.args[0].name() == "GROUP_AUTHORIZATION_FAILED"

        def committed() -> int:
            return int(c.committed([TopicPartition(t, 0)], timeout=10)[0].offset)

        assert committed() == OFFSET_INVALID
        delete_acls(boot, (GROUP, g, LITERAL, ANON, "*", READ, DENY))
        c.commit(offsets=[TopicPartition(t, 0, 5)], asynchronous=False)
        assert committed() == 5
        # READ on the group but a DENY READ on the topic: nothing stored.
        allow(
            boot,
            (TOPIC, t, LITERAL, ANON, "*", READ, DENY),
            (TOPIC, t, LITERAL, ANON, "*", DESCRIBE, ALLOW),
        )
        with pytest.raises(KafkaException) as info:
            c.commit(offsets=[TopicPartition(t, 0, 9)], asynchronous=False)
        assert "TOPIC_AUTHORIZATION_FAILED" in str(info.value)
        assert committed() == 5
    finally:
        c.close()


def test_denied_delete_topics_keeps_the_topic(open_broker: BrokerProcess) -> None:
    boot = open_broker.bootstrap
    t = name()
    assert create_topic(boot, t) == ErrorCode.none
    allow(
        boot,
        (TOPIC, t, LITERAL, ANON, "*", DESCRIBE, ALLOW),
        (TOPIC, t, LITERAL, ANON, "*", DELETE, DENY),
    )
    admin = KafkaAdminClient(bootstrap_servers=boot)
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            admin.delete_topics([t])
        assert t in admin.list_topics()
        assert topic_errors(boot, [t]) == {t: ErrorCode.none}
    finally:
        admin.close()


def test_metadata_lists_only_describable_topics(open_broker: BrokerProcess) -> None:
    boot = open_broker.bootstrap
    seen, hidden = name("seen"), name("hidden")
    for t in (seen, hidden):
        assert create_topic(boot, t) == ErrorCode.none
    before = {t.name for t in metadata(boot, None).topics}
    assert {seen, hidden} <= before
    allow(boot, (TOPIC, hidden, LITERAL, "User:*", "*", DESCRIBE, DENY))
    listed = {t.name for t in metadata(boot, None).topics}
    assert seen in listed and hidden not in listed
    assert topic_errors(boot, [hidden, seen]) == {
        hidden: ErrorCode.topic_authorization_failed,
        seen: ErrorCode.none,
    }


def test_prefixed_against_literal(open_broker: BrokerProcess) -> None:
    boot = open_broker.bootstrap
    site = name("site")
    topics = [f"{site}.a", f"{site}.b", site, f"{site}x"]
    for t in topics:
        assert create_topic(boot, t) == ErrorCode.none
    allow(
        boot,
        (TOPIC, f"{site}.", PREFIXED, ANON, "*", WRITE, ALLOW),
        # Name the other two so that allow-everyone does not apply to them.
        (TOPIC, site, LITERAL, "User:someone", "*", WRITE, ALLOW),
        (TOPIC, f"{site}x", LITERAL, "User:someone", "*", WRITE, ALLOW),
        (TOPIC, f"{site}.b", LITERAL, ANON, "*", WRITE, DENY),
    )
    codes = {t: ErrorCode(produce(boot, t, batch()).error_code) for t in topics}
    assert codes == {
        f"{site}.a": ErrorCode.none,
        f"{site}.b": ErrorCode.topic_authorization_failed,
        site: ErrorCode.topic_authorization_failed,
        f"{site}x": ErrorCode.topic_authorization_failed,
    }
    # MATCH finds the literal, prefixed and wildcard ACLs that apply to a name.
    resp = describe_acls(boot, TOPIC, f"{site}.b", MATCH)
    found = {(r.resource_name, r.pattern_type) for r in resp.resources}
    assert found == {(f"{site}.", PREFIXED), (f"{site}.b", LITERAL)}


def test_kafka_python_admin_manages_acls(open_broker: BrokerProcess) -> None:
    boot = open_broker.bootstrap
    t = name("kp")
    admin = KafkaAdminClient(bootstrap_servers=boot)
    try:
        pattern = kadmin.ResourcePattern(
            kadmin.ResourceType.TOPIC, t, kadmin.ACLResourcePatternType.PREFIXED
        )
        acl = kadmin.ACL(
            "User:alice", "*", kadmin.ACLOperation.WRITE, kadmin.ACLPermissionType.ALLOW, pattern
        )
        result = admin.create_acls([acl])
        assert result["failed"] == [] and len(result["succeeded"]) == 1
        flt = kadmin.ACLFilter(
            None,
            None,
            kadmin.ACLOperation.ANY,
            kadmin.ACLPermissionType.ANY,
            kadmin.ResourcePatternFilter(
                kadmin.ResourceType.TOPIC, t, kadmin.ACLResourcePatternType.ANY
            ),
        )
        acls, error = admin.describe_acls(flt)
        assert error.errno == 0
        assert [(a.principal, a.operation, a.resource_pattern.resource_name) for a in acls] == [
            ("User:alice", kadmin.ACLOperation.WRITE, t)
        ]
        [(_f, deleted, error)] = admin.delete_acls([flt])
        assert error.errno == 0 and len(deleted) == 1
        acls, _error = admin.describe_acls(flt)
        assert acls == []
    finally:
        admin.close()


def test_confluent_admin_manages_acls(open_broker: BrokerProcess) -> None:
    boot = open_broker.bootstrap
    g = name("cg")
    admin = cadmin.AdminClient({"bootstrap.servers": boot})
    binding = cadmin.AclBinding(
        cadmin.ResourceType.GROUP,
        g,
        cadmin.ResourcePatternType.LITERAL,
        "User:bob",
        "10.0.0.1",
        cadmin.AclOperation.READ,
        cadmin.AclPermissionType.DENY,
    )
    for fut in admin.create_acls([binding]).values():
        assert fut.result(10) is None
    flt = cadmin.AclBindingFilter(
        cadmin.ResourceType.GROUP,
        g,
        cadmin.ResourcePatternType.ANY,
        None,
        None,
        cadmin.AclOperation.ANY,
        cadmin.AclPermissionType.ANY,
    )
    assert admin.describe_acls(flt).result(10) == [binding]
    deleted = [b for fut in admin.delete_acls([flt]).values() for b in fut.result(10)]
    assert deleted == [binding]
    assert admin.describe_acls(flt).result(10) == []
    # A bad principal comes back as Kafka's INVALID_REQUEST.
    bad = cadmin.AclBinding(
        cadmin.ResourceType.TOPIC,
        g,
        cadmin.ResourcePatternType.LITERAL,
        "bob",
        "*",
        cadmin.AclOperation.READ,
        cadmin.AclPermissionType.ALLOW,
    )
    with pytest.raises(KafkaException) as info:
        for fut in admin.create_acls([bad]).values():
            fut.result(10)
    assert info.value.args[0].name() == "INVALID_REQUEST"


@pytest.mark.parametrize(
    ("acl", "complaint"),
    [
        ((99, "t", LITERAL, ANON, "*", READ, ALLOW), "resource type"),
        ((ANY, "t", LITERAL, ANON, "*", READ, ALLOW), "resource type"),
        ((TOPIC, "t", MATCH, ANON, "*", READ, ALLOW), "pattern type"),
        ((TOPIC, "t", 9, ANON, "*", READ, ALLOW), "pattern type"),
        ((TOPIC, "t", LITERAL, "ANONYMOUS", "*", READ, ALLOW), "principal"),
        ((TOPIC, "t", LITERAL, ":x", "*", READ, ALLOW), "principal"),
        ((TOPIC, "t", LITERAL, ANON, "somehost", READ, ALLOW), "host"),
        ((TOPIC, "t", LITERAL, ANON, "*", ANY, ALLOW), "operation"),
        ((TOPIC, "t", LITERAL, ANON, "*", 77, ALLOW), "operation"),
        ((TOPIC, "t", LITERAL, ANON, "*", READ, ANY), "permission"),
        ((TOPIC, "", LITERAL, ANON, "*", READ, ALLOW), "empty"),
        ((CLUSTER, "c", LITERAL, ANON, "*", ALTER, ALLOW), "kafka-cluster"),
    ],
)
def test_bad_acls_are_refused_and_nothing_stored(
    open_broker: BrokerProcess, acl: tuple[object, ...], complaint: str
) -> None:
    boot = open_broker.bootstrap
    marker = name("bad")
    good = (TOPIC, marker, LITERAL, ANON, "*", READ, ALLOW)
    [(code, message), (good_code, _)] = create_acls(boot, acl, good)
    assert code == ErrorCode.invalid_request
    assert message is not None and complaint in message
    assert good_code == ErrorCode.none  # one bad creation does not sink the rest
    resp = describe_acls(boot)
    names = {r.resource_name for r in resp.resources}
    assert marker in names
    assert not any((r.resource_type, r.resource_name) == acl[:2] for r in resp.resources)
    delete_acls(boot, (TOPIC, marker, LITERAL, None, None, ANY, ANY))


def test_bad_filters_are_refused(open_broker: BrokerProcess) -> None:
    boot = open_broker.bootstrap
    resp = describe_acls(boot, 0)
    assert ErrorCode(resp.error_code) == ErrorCode.invalid_request
    assert resp.resources == ()
    resp = describe_acls(boot, TOPIC, None, 0)
    assert ErrorCode(resp.error_code) == ErrorCode.invalid_request
    t = name()
    allow(boot, (TOPIC, t, LITERAL, ANON, "*", READ, ALLOW))
    resp = delete_acls(
        boot,
        (TOPIC, t, 0, None, None, ANY, ANY),
        (TOPIC, t, LITERAL, None, None, 0, ANY),
    )
    assert [ErrorCode(r.error_code) for r in resp.filter_results] == [ErrorCode.invalid_request] * 2
    assert len(describe_acls(boot, TOPIC, t).resources) == 1


def test_without_an_authorizer_acl_apis_say_security_disabled(broker: BrokerProcess) -> None:
    boot = broker.bootstrap
    [(code, _)] = create_acls(boot, (TOPIC, "t", LITERAL, ANON, "*", WRITE, DENY))
    assert code == ErrorCode.security_disabled
    assert ErrorCode(describe_acls(boot).error_code) == ErrorCode.security_disabled


def test_nothing_allowed_without_acls(tmp_path: Path) -> None:
    """allow.everyone.if.no.acl.found is false by default, as in Kafka."""
    b = BrokerProcess(tmp_path / "data", env=AUTHZ).start()
    try:
        boot = b.bootstrap
        [(code, _)] = create_acls(boot, (TOPIC, "t", LITERAL, ANON, "*", ALL, ALLOW))
        assert code == ErrorCode.cluster_authorization_failed
        assert ErrorCode(describe_acls(boot).error_code) == ErrorCode.cluster_authorization_failed
        assert create_topic(boot, "t") == ErrorCode.topic_authorization_failed
        assert topic_errors(boot, None) == {}
        assert ErrorCode(produce(boot, "t", batch()).error_code) == (
            ErrorCode.topic_authorization_failed
        )
    finally:
        b.stop()


def test_super_users_may_do_anything(tmp_path: Path) -> None:
    b = BrokerProcess(
        tmp_path / "data", env={**AUTHZ, "SHOAL_SUPER_USERS": "User:root;User:ANONYMOUS"}
    ).start()
    try:
        boot = b.bootstrap
        allow(boot, (TOPIC, "*", LITERAL, "User:*", "*", ALL, DENY))
        assert create_topic(boot, "t") == ErrorCode.none
        assert ErrorCode(produce(boot, "t", batch()).error_code) == ErrorCode.none
        assert topic_errors(boot, None) == {"t": ErrorCode.none}
    finally:
        b.stop()


def test_per_site_recipe(tmp_path: Path) -> None:
    """docs/SECURITY.md: the site may write topics prefixed `plant-7.` and
    nothing else. The site is User:ANONYMOUS here; an admin sets it up while
    nothing names the cluster yet, then locks every topic and the cluster."""
    b = BrokerProcess(tmp_path / "data", env=OPEN).start()
    try:
        boot = b.bootstrap
        site = ANON
        for t in ("plant-7.temps", "plant-8.temps", "plant-7", "other"):
            assert create_topic(boot, t) == ErrorCode.none
        allow(
            boot,
            (TOPIC, "plant-7.", PREFIXED, site, "*", WRITE, ALLOW),
            (TOPIC, "plant-7.auto.", PREFIXED, site, "*", CREATE, ALLOW),
            (TOPIC, "*", LITERAL, "User:admin", "*", ALL, ALLOW),
            (CLUSTER, "kafka-cluster", LITERAL, "User:admin", "*", ALL, ALLOW),
        )
        codes = {
            t: ErrorCode(produce(boot, t, batch()).error_code)
            for t in ("plant-7.temps", "plant-8.temps", "plant-7", "other")
        }
        assert codes == {
            "plant-7.temps": ErrorCode.none,
            "plant-8.temps": ErrorCode.topic_authorization_failed,
            "plant-7": ErrorCode.topic_authorization_failed,
            "other": ErrorCode.topic_authorization_failed,
        }
        assert topic_errors(boot, None) == {"plant-7.temps": ErrorCode.none}
        # An unmodified idempotent producer works inside the prefix.
        p = Producer({"bootstrap.servers": boot, "enable.idempotence": True})
        errors: list[str] = []
        for t in ("plant-7.temps", "plant-8.temps"):
            p.produce(t, b"x", on_delivery=lambda e, _m: errors.append(e.name() if e else "OK"))
        p.flush(15)
        assert sorted(errors) == ["OK", "TOPIC_AUTHORIZATION_FAILED"]
        # Nothing else: no reading, no creating, no deleting, no ACL changes.
        with RawClient(boot) as c:
            part = c.call(1, 12, fetch_request("plant-7.temps", {0: 0})).responses[0]
        assert ErrorCode(part.partitions[0].error_code) == ErrorCode.topic_authorization_failed
        assert create_topic(boot, "plant-7.new") == ErrorCode.topic_authorization_failed
        # Auto-creation through Metadata needs CREATE: granted below plant-7.auto. only.
        got = metadata(boot, ["plant-7.new"], auto_create=True).topics
        assert [ErrorCode(t.error_code) for t in got] == [ErrorCode.topic_authorization_failed]
        got = metadata(boot, ["plant-7.auto.x"], auto_create=True).topics
        assert [ErrorCode(t.error_code) for t in got] == [ErrorCode.none]
        [(code, _)] = create_acls(boot, (TOPIC, "*", LITERAL, site, "*", ALL, ALLOW))
        assert code == ErrorCode.cluster_authorization_failed
        admin = KafkaAdminClient(bootstrap_servers=boot)
        try:
            with pytest.raises(TopicAuthorizationFailedError):
                admin.delete_topics(["plant-7.temps"])
        finally:
            admin.close()
    finally:
        b.stop()


def test_denied_consumer_group_heartbeat(open_broker: BrokerProcess) -> None:
    """KIP-848: READ on the group, DESCRIBE on each subscribed topic, as Kafka."""
    import datetime

    from kio.schema.consumer_group_heartbeat.v1 import request as cgh

    boot = open_broker.bootstrap
    t, g = name(), name("g")
    assert create_topic(boot, t) == ErrorCode.none

    def join(group: str) -> Any:
        body = cgh.ConsumerGroupHeartbeatRequest(
            group_id=group,
            member_id=uuid.uuid4().hex,
            member_epoch=0,
            rebalance_timeout=datetime.timedelta(seconds=5),
            subscribed_topic_names=(t,),
            topic_partitions=(),
        )
        with RawClient(boot) as c:
            return c.call(68, 1, body)

    allow(boot, (GROUP, g, LITERAL, ANON, "*", READ, DENY))
    assert join(g).error_code == ErrorCode.group_authorization_failed
    allow(boot, (TOPIC, t, LITERAL, ANON, "*", DESCRIBE, DENY))
    denied = join(name("g"))
    assert denied.error_code == ErrorCode.topic_authorization_failed
    assert t in (denied.error_message or "")


def test_regex_subscription_leaves_out_undescribable_topics(open_broker: BrokerProcess) -> None:
    """KIP-848: a topic matched by the member's expression that it may not
    DESCRIBE is not assigned to it; once allowed, the next heartbeat adds it."""
    import datetime

    from kio.schema.consumer_group_heartbeat.v1 import request as cgh

    boot = open_broker.bootstrap
    prefix = name("rx")
    seen, hidden = f"{prefix}-a", f"{prefix}-b"
    for t in (seen, hidden):
        assert create_topic(boot, t) == ErrorCode.none
    names = {metadata(boot, [t]).topics[0].topic_id: t for t in (seen, hidden)}
    allow(boot, (TOPIC, hidden, LITERAL, ANON, "*", DESCRIBE, DENY))
    group, member = name("g"), uuid.uuid4().hex

    def beat(epoch: int, **kw: Any) -> Any:
        body = cgh.ConsumerGroupHeartbeatRequest(
            group_id=group,
            member_id=member,
            member_epoch=epoch,
            rebalance_timeout=datetime.timedelta(seconds=5 if epoch == 0 else -1),
            topic_partitions=kw.pop("topic_partitions", None),
            subscribed_topic_names=None,
            **kw,
        )
        with RawClient(boot) as c:
            return c.call(68, 1, body)

    def topics(r: Any) -> set[str]:
        return {names[tp.topic_id] for tp in r.assignment.topic_partitions}

    first = beat(0, subscribed_topic_regex=f"{prefix}-.*", topic_partitions=())
    assert first.error_code == ErrorCode.none
    assert topics(first) == {seen}
    delete_acls(boot, (TOPIC, hidden, LITERAL, ANON, "*", DESCRIBE, DENY))
    owned = (
        cgh.TopicPartitions(
            topic_id=first.assignment.topic_partitions[0].topic_id, partitions=(0,)
        ),
    )
    later = beat(first.member_epoch, topic_partitions=owned)
    assert later.member_epoch > first.member_epoch
    assert topics(later) == {seen, hidden}
