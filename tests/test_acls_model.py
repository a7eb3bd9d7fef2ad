"""The authorizer as a unit: Kafka's matching and decision rules."""

from __future__ import annotations

import pytest

from shoal.security.acls import (
    AclBinding,
    AclError,
    AclFilter,
    AclOperation,
    PatternType,
    Permission,
    ResourceType,
)
from shoal.security.authorizer import Authorizer, parse_super_users, peer_host

Op, RT, PT, P = AclOperation, ResourceType, PatternType, Permission
TOPIC, GROUP, CLUSTER = RT.TOPIC, RT.GROUP, RT.CLUSTER


def acl(
    name: str,
    op: AclOperation = Op.WRITE,
    perm: Permission = P.ALLOW,
    principal: str = "User:alice",
    pattern: PatternType = PT.LITERAL,
    rtype: ResourceType = TOPIC,
    host: str = "*",
) -> AclBinding:
    return AclBinding(rtype, name, pattern, principal, host, op, perm)


def authz(*acls: AclBinding, allow_if_none: bool = False, supers: str = "") -> Authorizer:
    a = Authorizer(True, parse_super_users(supers), allow_if_none)
    a.replace(acls)
    return a


def test_no_authorizer_allows_everything() -> None:
    a = Authorizer(False)
    a.replace([acl("t", perm=P.DENY, op=Op.ALL, principal="User:*")])
    assert a.authorize("User:alice", "1.2.3.4", Op.WRITE, TOPIC, "t")


def test_no_acl_follows_allow_everyone_if_no_acl_found() -> None:
    assert not authz().authorize("User:alice", "h", Op.READ, TOPIC, "t")
    assert authz(allow_if_none=True).authorize("User:alice", "h", Op.READ, TOPIC, "t")
    # An ACL naming the resource, for anybody, turns the default off for it.
    a = authz(acl("t", principal="User:bob"), allow_if_none=True)
    assert not a.authorize("User:alice", "h", Op.WRITE, TOPIC, "t")
    assert a.authorize("User:alice", "h", Op.WRITE, TOPIC, "other")


def test_literal_prefixed_and_wildcard() -> None:
    a = authz(
        acl("plant-7.", pattern=PT.PREFIXED),
        acl("exact", op=Op.READ),
        acl("*", op=Op.DESCRIBE, principal="User:bob"),
    )
    assert a.authorize("User:alice", "h", Op.WRITE, TOPIC, "plant-7.temps")
    assert a.authorize("User:alice", "h", Op.WRITE, TOPIC, "plant-7.")
    assert not a.authorize("User:alice", "h", Op.WRITE, TOPIC, "plant-70.temps")
    assert not a.authorize("User:alice", "h", Op.WRITE, TOPIC, "plant-7")
    assert a.authorize("User:alice", "h", Op.READ, TOPIC, "exact")
    assert not a.authorize("User:alice", "h", Op.READ, TOPIC, "exact2")
    assert a.authorize("User:bob", "h", Op.DESCRIBE, TOPIC, "anything")
    assert not a.authorize("User:bob", "h", Op.READ, TOPIC, "anything")
    # A literal name "plant-7." is not a prefix for other resource types.
    assert not a.authorize("User:alice", "h", Op.WRITE, GROUP, "plant-7.g")


def test_deny_wins_and_all() -> None:
    a = authz(
        acl("t", op=Op.ALL),
        acl("t", op=Op.WRITE, perm=P.DENY),
        acl("u", op=Op.ALL),
        acl("u", op=Op.ALL, perm=P.DENY, principal="User:*", host="10.0.0.9"),
    )
    assert not a.authorize("User:alice", "h", Op.WRITE, TOPIC, "t")
    assert a.authorize("User:alice", "h", Op.READ, TOPIC, "t")
    assert a.authorize("User:alice", "10.0.0.8", Op.READ, TOPIC, "u")
    assert not a.authorize("User:alice", "10.0.0.9", Op.READ, TOPIC, "u")


def test_implied_operations() -> None:
    a = authz(
        acl("r", op=Op.READ),
        acl("w", op=Op.WRITE),
        acl("d", op=Op.DELETE),
        acl("a", op=Op.ALTER),
        acl("c", op=Op.ALTER_CONFIGS),
        acl("x", op=Op.CREATE),
    )
    for name in "rwda":
        assert a.authorize("User:alice", "h", Op.DESCRIBE, TOPIC, name), name
    assert a.authorize("User:alice", "h", Op.DESCRIBE_CONFIGS, TOPIC, "c")
    assert not a.authorize("User:alice", "h", Op.DESCRIBE, TOPIC, "c")
    assert not a.authorize("User:alice", "h", Op.DESCRIBE, TOPIC, "x")
    assert not a.authorize("User:alice", "h", Op.READ, TOPIC, "w")
    # A DENY of DESCRIBE does not deny READ (Kafka's rule).
    b = authz(acl("t", op=Op.READ), acl("t", op=Op.DESCRIBE, perm=P.DENY))
    assert b.authorize("User:alice", "h", Op.READ, TOPIC, "t")
    assert not b.authorize("User:alice", "h", Op.DESCRIBE, TOPIC, "t")


def test_super_users() -> None:
    a = authz(acl("t", op=Op.ALL, perm=P.DENY, principal="User:*"), supers="User:root; User:ops")
    assert a.authorize("User:root", "h", Op.WRITE, TOPIC, "t")
    assert a.authorize("User:ops", "h", Op.ALTER, CLUSTER, "kafka-cluster")
    assert not a.authorize("User:alice", "h", Op.WRITE, TOPIC, "t")


def test_cached_decisions_by_peer_and_dropped_on_change() -> None:
    a = authz()
    peer = "10.0.0.1:5555"
    assert not a.authorize_peer("User:alice", peer, Op.WRITE, TOPIC, "t")
    a.replace([acl("t", host="10.0.0.1")])
    assert a.authorize_peer("User:alice", peer, Op.WRITE, TOPIC, "t")
    assert a.authorize_peer("User:alice", peer, Op.WRITE, TOPIC, "t")  # cached
    assert not a.authorize_peer("User:alice", "10.0.0.2:5555", Op.WRITE, TOPIC, "t")
    a.replace([])
    assert not a.authorize_peer("User:alice", peer, Op.WRITE, TOPIC, "t")


def test_authorize_any_for_idempotent_producers() -> None:
    a = authz(acl("plant-7.", pattern=PT.PREFIXED))
    assert a.authorize_any("User:alice", "h", Op.WRITE, TOPIC)
    assert not a.authorize_any("User:bob", "h", Op.WRITE, TOPIC)
    b = authz(acl("t"), acl("*", op=Op.WRITE, perm=P.DENY))
    assert not b.authorize_any("User:alice", "h", Op.WRITE, TOPIC)
    # A DENY of one topic does not take back WRITE on others; User:* counts.
    c = authz(acl("t", principal="User:*"), acl("u", op=Op.ALL, perm=P.DENY))
    assert c.authorize_any("User:bob", "h", Op.WRITE, TOPIC)
    assert not c.authorize_any("User:bob", "h", Op.READ, TOPIC)
    # No ACL of the type at all: allow.everyone.if.no.acl.found decides.
    assert authz(acl("g", rtype=GROUP), allow_if_none=True).authorize_any(
        "User:bob", "h", Op.WRITE, TOPIC
    )
    assert not authz(acl("t", principal="User:x"), allow_if_none=True).authorize_any(
        "User:bob", "h", Op.WRITE, TOPIC
    )


def test_filters_match_as_kafka() -> None:
    lit = acl("plant-7.temps")
    pre = acl("plant-7.", pattern=PT.PREFIXED)
    star = acl("*")
    assert AclFilter().matches(lit)
    f = AclFilter(TOPIC, "plant-7.temps", PT.MATCH)
    assert f.matches(lit) and f.matches(pre) and f.matches(star)
    f = AclFilter(TOPIC, "plant-7.temps", PT.ANY)
    assert f.matches(lit) and not f.matches(pre) and not f.matches(star)
    f = AclFilter(TOPIC, "plant-7.", PT.PREFIXED)
    assert f.matches(pre) and not f.matches(lit)
    assert not AclFilter(GROUP).matches(lit)
    assert not AclFilter(principal="User:bob").matches(lit)
    assert AclFilter(operation=Op.WRITE, permission=P.ALLOW).matches(lit)
    assert not AclFilter(operation=Op.READ).matches(lit)


@pytest.mark.parametrize(
    ("binding", "complaint"),
    [
        (acl("t", rtype=RT.ANY), "resource type"),
        (acl("t", rtype=RT.UNKNOWN), "resource type"),
        (acl("t", pattern=PT.MATCH), "pattern type"),
        (acl("t", pattern=PT.ANY), "pattern type"),
        (acl("t", op=Op.ANY), "operation"),
        (acl("t", perm=P.ANY), "permission"),
        (acl("t", principal="alice"), "principal"),
        (acl("t", principal="User:"), "principal"),
        (acl("t", host="not-an-ip"), "host"),
        (acl(""), "empty"),
        (acl("my-cluster", rtype=CLUSTER), "kafka-cluster"),
    ],
)
def test_bad_bindings_are_refused(binding: AclBinding, complaint: str) -> None:
    with pytest.raises(AclError, match=complaint):
        binding.validate()


def test_good_bindings_and_codes() -> None:
    acl("t", host="10.1.2.3").validate()
    acl("t", host="::1", rtype=RT.TRANSACTIONAL_ID).validate()
    acl("kafka-cluster", rtype=CLUSTER, op=Op.IDEMPOTENT_WRITE).validate()
    acl("u", rtype=RT.USER).validate()
    # Unknown wire codes become UNKNOWN, then refused.
    b = AclBinding.of(99, "t", 3, "User:a", "*", 4, 3)
    assert b.resource_type == RT.UNKNOWN
    with pytest.raises(AclError):
        b.validate()
    with pytest.raises(AclError):
        AclFilter.of(2, None, 0, None, None, 1, 1).validate()


def test_peer_host() -> None:
    assert peer_host("10.0.0.1:5555") == "10.0.0.1"
    assert peer_host("::1:5555") == "::1"
