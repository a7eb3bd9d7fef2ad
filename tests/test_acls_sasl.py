"""The per-site recipe with real principals: sites authenticate with SCRAM and
`User:plant-7` may write topics prefixed `plant-7.` and nothing else."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka import admin as ca

from security_helpers import PASSWORD, SecureBroker, store_users

SITES = ("plant-7", "plant-8")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    tmp = tmp_path_factory.mktemp("aclsasl")
    b = SecureBroker(
        tmp / "data",
        {
            "sasl.enabled.mechanisms": "SCRAM-SHA-256",
            "authorizer.class.name": "shoal",
            "super.users": "User:admin",
        },
        ("SASL_PLAINTEXT", "PLAINTEXT"),
    )
    b.start()
    store_users(b.metadata_url, ("admin", *SITES))
    yield b
    b.stop()


def client_config(b: SecureBroker, user: str | None) -> dict[str, str]:
    if user is None:
        return {"bootstrap.servers": b.address("PLAINTEXT")}
    return {
        "bootstrap.servers": b.address("SASL_PLAINTEXT"),
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": PASSWORD,
    }


def deliveries(b: SecureBroker, user: str | None, topics: list[str]) -> dict[str, str]:
    p = Producer({**client_config(b, user), "enable.idempotence": True, "message.timeout.ms": 8000})
    out: dict[str, str] = {}
    for t in topics:
        p.produce(
            t, b"x", on_delivery=lambda e, m, t=t: out.__setitem__(t, e.name() if e else "OK")
        )
    p.flush(15)
    return out


def test_site_writes_its_prefix_and_nothing_else(broker: SecureBroker, tmp_path: Path) -> None:
    admin = ca.AdminClient(client_config(broker, "admin"))
    topics = ["plant-7.temps", "plant-8.temps", "plant-7", "other"]
    for fut in admin.create_topics([ca.NewTopic(t, 1) for t in topics]).values():
        fut.result(15)
    acl = ca.AclBinding(
        ca.ResourceType.TOPIC,
        "plant-7.",
        ca.ResourcePatternType.PREFIXED,
        "User:plant-7",
        "*",
        ca.AclOperation.WRITE,
        ca.AclPermissionType.ALLOW,
    )
    for fut in admin.create_acls([acl]).values():
        fut.result(15)

    assert deliveries(broker, "plant-7", topics) == {
        "plant-7.temps": "OK",
        "plant-8.temps": "TOPIC_AUTHORIZATION_FAILED",
        "plant-7": "TOPIC_AUTHORIZATION_FAILED",
        "other": "TOPIC_AUTHORIZATION_FAILED",
    }
    # Another site and an anonymous client get nothing.
    assert set(deliveries(broker, "plant-8", ["plant-7.temps"]).values()) == {
        "TOPIC_AUTHORIZATION_FAILED"
    }
    assert set(deliveries(broker, None, ["plant-7.temps"]).values()) == {
        "TOPIC_AUTHORIZATION_FAILED"
    }
    # The site sees only its topic, may not read it, nor create, delete or
    # change ACLs.
    site = ca.AdminClient(client_config(broker, "plant-7"))
    assert sorted(site.list_topics(timeout=10).topics) == ["plant-7.temps"]
    # (librdkafka also looks up the group's coordinator, which the site may
    # not DESCRIBE either: GROUP_AUTHORIZATION_FAILED may come first.)
    c = Consumer({**client_config(broker, "plant-7"), "group.id": "plant-7.g"})
    errors: set[str] = set()
    try:
        c.assign([TopicPartition("plant-7.temps", 0, 0)])
        deadline = time.monotonic() + 15
        while "TOPIC_AUTHORIZATION_FAILED" not in errors and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None:
                assert msg.error() is not None, "the site read a record"
                errors.add(msg.error().name())
    finally:
        c.close()
    assert "TOPIC_AUTHORIZATION_FAILED" in errors, errors
    with pytest.raises(KafkaException, match="TOPIC_AUTHORIZATION_FAILED"):
        for fut in site.create_topics([ca.NewTopic("plant-7.new", 1)]).values():
            fut.result(15)
    with pytest.raises(KafkaException, match="TOPIC_AUTHORIZATION_FAILED"):
        for fut in site.delete_topics(["plant-7.temps"]).values():
            fut.result(15)
    with pytest.raises(KafkaException, match="CLUSTER_AUTHORIZATION_FAILED"):
        for fut in site.create_acls([acl]).values():
            fut.result(15)
    # The admin still sees everything.
    assert set(topics) <= set(admin.list_topics(timeout=10).topics)
