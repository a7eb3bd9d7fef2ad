"""Real clients, unmodified, over SSL, SASL_PLAINTEXT and SASL_SSL with every
mechanism, against one broker that has all four listeners at once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from security_helpers import (
    PASSWORD,
    Certs,
    Jwks,
    SecureBroker,
    client_ssl_context,
    secure_broker,
    shoal,
    wait_for_log,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureBroker, Certs, Jwks]]:
    tmp = tmp_path_factory.mktemp("sec")
    (tmp / "key-pw").write_text(SECRET + "\n")
    broker, certs, jwks = secure_broker(
        tmp,
        **{
            "ssl.key.password": f"file:{tmp / 'key-pw'}",
            "s3.secret.access.key": SECRET,
            "audit.log.path": str(tmp / "audit.log"),
        },
    )
    broker.audit_path = tmp / "audit.log"  # type: ignore[attr-defined]
    yield broker, certs, jwks
    broker.stop()


SECRET = "do-not-show-me-42"


def test_secrets_are_not_shown(env: tuple[SecureBroker, Certs, Jwks]) -> None:
    """DescribeConfigs of the broker: secret keys are sensitive, without a value."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    broker, certs, _ = env
    admin = AdminClient(_confluent(broker, certs, "PLAINTEXT", None))
    res = ConfigResource(ResourceType.BROKER, "0")
    entries = admin.describe_configs([res])[res].result(timeout=30)
    for name in ("ssl.key.password", "s3.secret.access.key", "ssl.keystore.key"):
        assert entries[name].is_sensitive and entries[name].value is None, name
    assert entries["listeners"].value.startswith("PLAINTEXT://127.0.0.1:")
    assert all(SECRET not in str(e.value) for e in entries.values())
    assert SECRET not in broker.log()


def _topic() -> str:
    return f"sec-{uuid.uuid4().hex[:10]}"


def _confluent(
    broker: SecureBroker, certs: Certs, listener: str, mech: str | None, **extra: Any
) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": broker.address(listener),
        "security.protocol": listener,
    }
    if listener in ("SSL", "SASL_SSL"):
        conf["ssl.ca.location"] = str(certs.ca_file)
    if mech is not None and mech != "OAUTHBEARER":
        conf.update({"sasl.mechanism": mech, "sasl.username": "alice", "sasl.password": PASSWORD})
    elif mech == "OAUTHBEARER":
        conf["sasl.mechanism"] = "OAUTHBEARER"
    conf.update(extra)
    return conf


def _round_trip_confluent(conf: dict[str, Any], topic: str, n: int = 20) -> list[bytes]:
    producer = Producer({**conf, "linger.ms": 5})
    for i in range(n):
        producer.produce(topic, key=b"k", value=f"v{i}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer({**conf, "group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(got) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg.value())
    consumer.close()
    return got


@pytest.mark.parametrize(
    ("listener", "mech"),
    [
        ("SSL", None),
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512"),
        ("SASL_SSL", "PLAIN"),
        ("SASL_SSL", "SCRAM-SHA-256"),
        ("SASL_SSL", "SCRAM-SHA-512"),
    ],
)
def test_confluent(env: tuple[SecureBroker, Certs, Jwks], listener: str, mech: str | None) -> None:
    broker, certs, _ = env
    topic = _topic()
    got = _round_trip_confluent(_confluent(broker, certs, listener, mech), topic)
    assert got == [f"v{i}".encode() for i in range(20)]
    if mech is not None:
        wait_for_log(broker, f"authenticated User:alice with {mech} from")


def test_confluent_oauthbearer(env: tuple[SecureBroker, Certs, Jwks]) -> None:
    broker, certs, jwks = env

    def oauth_cb(_config: Any) -> tuple[str, float]:
        return jwks.token("plant-7"), time.time() + 300

    conf = _confluent(broker, certs, "SASL_SSL", "OAUTHBEARER", oauth_cb=oauth_cb)
    topic = _topic()
    assert len(_round_trip_confluent(conf, topic, 5)) == 5
    wait_for_log(broker, "authenticated User:plant-7 with OAUTHBEARER")


def test_confluent_wrong_password_fails(env: tuple[SecureBroker, Certs, Jwks]) -> None:
    broker, certs, _ = env
    errors: list[Any] = []
    conf = _confluent(
        broker,
        certs,
        "SASL_PLAINTEXT",
        "SCRAM-SHA-256",
        **{"sasl.password": "nope", "error_cb": errors.append},
    )
    producer = Producer(conf)
    producer.produce(_topic(), b"x")
    deadline = time.monotonic() + 20
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    assert errors and "Authentication failed" in str(errors[0])
    assert producer.flush(0) == 1  # nothing was written


def test_mutual_tls_principal(env: tuple[SecureBroker, Certs, Jwks]) -> None:
    broker, certs, _ = env
    cert, key = certs.client("plant-7")
    conf = _confluent(
        broker,
        certs,
        "SSL",
        None,
        **{"ssl.certificate.location": str(cert), "ssl.key.location": str(key)},
    )
    assert len(_round_trip_confluent(conf, _topic(), 3)) == 3
    log = wait_for_log(broker, "authenticated User:plant-7 by certificate")
    # the DN the rule matched, as Kafka writes it
    assert "'CN=plant-7,OU=sites,O=acme'" in log


def test_metadata_answers_per_listener(env: tuple[SecureBroker, Certs, Jwks]) -> None:
    broker, certs, _ = env
    for listener, mech in [
        ("PLAINTEXT", None),
        ("SSL", None),
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SASL_SSL", "SCRAM-SHA-512"),
    ]:
        admin = AdminClient(_confluent(broker, certs, listener, mech))
        md = admin.list_topics(timeout=20)
        (node,) = md.brokers.values()
        assert (node.host, node.port) == ("127.0.0.1", broker.ports[listener]), listener
        desc = admin.describe_cluster(request_timeout=20).result(timeout=30)
        assert [n.port for n in desc.nodes] == [broker.ports[listener]]


def test_scram_users_through_the_kafka_protocol(env: tuple[SecureBroker, Certs, Jwks]) -> None:
    """AlterUserScramCredentials/DescribeUserScramCredentials from an admin
    client; the new user then logs in; after deletion it cannot."""
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialDeletion,
        UserScramCredentialUpsertion,
    )

    broker, certs, _ = env
    admin = AdminClient(
        _confluent(broker, certs, "SASL_SSL", "SCRAM-SHA-256", **{"sasl.username": "admin"})
    )
    user = f"u{uuid.uuid4().hex[:6]}"
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, info, b"pw-new")]
    )
    futures[user].result(timeout=30)
    described = admin.describe_user_scram_credentials([user]).get(user).result(timeout=30)
    assert [(i.mechanism, i.iterations) for i in described.scram_credential_infos] == [
        (ScramMechanism.SCRAM_SHA_512, 4096)
    ]
    conf = _confluent(
        broker,
        certs,
        "SASL_PLAINTEXT",
        "SCRAM-SHA-512",
        **{"sasl.username": user, "sasl.password": "pw-new"},
    )
    assert len(_round_trip_confluent(conf, _topic(), 2)) == 2
    # the CLI through the Kafka protocol sees it too, without secrets
    listed = shoal(
        "users",
        "list",
        "--format",
        "json",
        "--bootstrap",
        broker.address("SASL_PLAINTEXT"),
        "-X",
        "security.protocol=SASL_PLAINTEXT",
        "-X",
        "sasl.mechanism=PLAIN",
        "-X",
        "sasl.username=admin",
        "-X",
        f"sasl.password={PASSWORD}",
    )
    assert listed.returncode == 0, listed.stderr
    assert f'"user": "{user}"' in listed.stdout and "pw-new" not in listed.stdout
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)]
    )
    futures[user].result(timeout=30)
    # deleting it again: RESOURCE_NOT_FOUND, as Kafka
    again = admin.alter_user_scram_credentials(
        [UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)]
    )
    with pytest.raises(Exception, match=r"RESOURCE_NOT_FOUND|has no SCRAM-SHA-512"):
        again[user].result(timeout=30)


def test_kafka_python(env: tuple[SecureBroker, Certs, Jwks]) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.net.sasl.oauth import AbstractTokenProvider

    broker, certs, jwks = env

    class Tokens(AbstractTokenProvider):
        def token(self) -> str:
            return jwks.token("plant-9")

    cases: list[tuple[str, str | None, dict[str, Any]]] = [
        ("SSL", None, {}),
        ("SASL_PLAINTEXT", "PLAIN", {}),
        ("SASL_SSL", "SCRAM-SHA-256", {}),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512", {}),
        ("SASL_SSL", "OAUTHBEARER", {"sasl_oauth_token_provider": Tokens()}),
    ]
    for listener, mech, extra in cases:
        conf: dict[str, Any] = {
            "bootstrap_servers": broker.address(listener),
            "security_protocol": listener,
        }
        if "SSL" in listener:
            conf["ssl_cafile"] = str(certs.ca_file)
        if mech is not None:
            conf["sasl_mechanism"] = mech
            if mech != "OAUTHBEARER":
                conf.update(sasl_plain_username="bob", sasl_plain_password=PASSWORD)
        conf.update(extra)
        topic = _topic()
        producer = KafkaProducer(**conf)
        for i in range(5):
            producer.send(topic, f"m{i}".encode()).get(timeout=30)
        producer.close()
        consumer = KafkaConsumer(
            topic, auto_offset_reset="earliest", consumer_timeout_ms=20000, **conf
        )
        got = [m.value for _, m in zip(range(5), consumer, strict=False)]
        consumer.close()
        assert got == [f"m{i}".encode() for i in range(5)], (listener, mech)
    wait_for_log(broker, "authenticated User:plant-9 with OAUTHBEARER")


def test_aiokafka(env: tuple[SecureBroker, Certs, Jwks]) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    broker, certs, _ = env

    async def run(listener: str, mech: str | None) -> list[bytes]:
        conf: dict[str, Any] = {
            "bootstrap_servers": broker.address(listener),
            "security_protocol": listener,
        }
        if "SSL" in listener:
            conf["ssl_context"] = client_ssl_context(certs)
        if mech is not None:
            conf.update(
                sasl_mechanism=mech, sasl_plain_username="alice", sasl_plain_password=PASSWORD
            )
        topic = _topic()
        producer = AIOKafkaProducer(**conf)
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(topic, f"a{i}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **conf)
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(30):
                async for msg in consumer:
                    got.append(msg.value)
                    if len(got) == 5:
                        break
        finally:
            await consumer.stop()
        return got

    for listener, mech in [
        ("SSL", None),
        ("SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
    ]:
        assert asyncio.run(run(listener, mech)) == [f"a{i}".encode() for i in range(5)], listener


def test_users_cli_direct(env: tuple[SecureBroker, Certs, Jwks], tmp_path: Path) -> None:
    broker, _, _ = env
    pw = tmp_path / "pw"
    pw.write_text("cli-pass\n")
    url = broker.metadata_url
    added = shoal(
        "users",
        "add",
        "carol",
        "--metadata",
        url,
        "--password-file",
        str(pw),
        "--mechanism",
        "SCRAM-SHA-256",
    )
    assert added.returncode == 0, added.stderr
    listed = shoal("users", "list", "--metadata", url)
    assert (
        "carol" in listed.stdout
        and "SCRAM-SHA-256" in listed.stdout
        and "cli-pass" not in listed.stdout
    )
    deleted = shoal("users", "delete", "carol", "--metadata", url)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    missing = shoal("users", "delete", "carol", "--metadata", url)
    assert missing.returncode != 0 and "no SCRAM credentials" in missing.stderr
    empty = tmp_path / "empty"
    empty.write_text("")
    bad = shoal("users", "add", "x", "--metadata", url, "--password-file", str(empty))
    assert (
        bad.returncode != 0 and "password is empty" in bad.stderr and "Traceback" not in bad.stderr
    )


def test_audit_trail_of_authentications(env: tuple[SecureBroker, Certs, Jwks]) -> None:
    """Every authentication is one JSON line: successes of the tests above,
    the wrong password (with the claimed user and the reason), certificates,
    credential changes."""
    import json

    broker = env[0]
    path = broker.audit_path  # type: ignore[attr-defined]

    def lines() -> list[dict[str, Any]]:
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def find(**want: Any) -> dict[str, Any] | None:
        for line in lines():
            if all(line.get(k) == v for k, v in want.items()):
                return line
        return None

    deadline = time.monotonic() + 10
    while find(event="admin", action="AlterUserScramCredentials") is None:
        assert time.monotonic() < deadline, lines()[-5:]
        time.sleep(0.1)
    ok = find(event="authentication", principal="User:alice", mechanism="SCRAM-SHA-512")
    assert (
        ok is not None
        and ok["success"] is True
        and ok["listener"] in ("SASL_SSL", "SASL_PLAINTEXT")
    )
    bad = find(event="authentication", principal="User:alice", success=False)
    assert bad is not None and bad["mechanism"] == "SCRAM-SHA-256", bad
    assert "SCRAM for alice" in bad["error"]
    cert = find(event="authentication", mechanism="SSL", principal="User:plant-7")
    assert cert is not None and cert["success"] is True and cert["listener"] == "SSL"
    assert find(event="authentication", mechanism="OAUTHBEARER", principal="User:plant-7")
    assert PASSWORD not in path.read_text() and SECRET not in path.read_text()


def test_users_cli_through_the_kafka_protocol(
    env: tuple[SecureBroker, Certs, Jwks], tmp_path: Path
) -> None:
    broker, _, _ = env
    pw = tmp_path / "pw"
    pw.write_text("dave-pass\n")
    auth = [
        "--bootstrap", broker.address("SASL_PLAINTEXT"),
        "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=SCRAM-SHA-256",
        "-X", "sasl.username=admin", "-X", f"sasl.password={PASSWORD}",
    ]  # fmt: skip
    added = shoal("users", "add", "dave", "--password-file", str(pw), *auth)
    assert added.returncode == 0, added.stderr
    listed = shoal("users", "list", "--metadata", broker.metadata_url, "--format", "json")
    assert '"user": "dave"' in listed.stdout
    conf = {
        "bootstrap.servers": broker.address("SASL_PLAINTEXT"),
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "dave",
        "sasl.password": "dave-pass",
    }
    assert AdminClient(conf).list_topics(timeout=20).brokers
    deleted = shoal("users", "delete", "dave", *auth)
    assert deleted.returncode == 0, deleted.stderr
    assert "SCRAM-SHA-256, SCRAM-SHA-512 credentials deleted" in deleted.stdout
    gone = shoal("users", "list", "--metadata", broker.metadata_url, "--format", "json")
    assert '"user": "dave"' not in gone.stdout
