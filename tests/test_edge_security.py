"""The edge gateway with security on (issue 10 item 8): its uplink
authenticates to a central Shoal over SASL_SSL (SCRAM-SHA-512) or mutual TLS
and is confined to its site's prefix by ACLs; a gateway writing outside its
prefix is refused, says so in status and keeps its data until it is allowed.

One central broker for the module: SSL (client certificates requested, CN
mapped to the principal) and SASL_SSL listeners, the authorizer on, User:admin
a super user, User:plant-7 allowed WRITE/CREATE/DESCRIBE on `plant-7.*` only.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from edge_harness import GatewayProcess, gateway_config, wait_for
from harness import free_port
from security_helpers import PASSWORD, Certs, SecureBroker, make_certs, shoal, store_users

SITE = "plant-7"


class Central:
    def __init__(self, broker: SecureBroker, certs: Certs) -> None:
        self.broker = broker
        self.certs = certs
        self.sasl_ssl = broker.address("SASL_SSL")
        self.ssl = broker.address("SSL")

    def admin_conf(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.sasl_ssl,
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(self.certs.ca_file),
            "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": "admin",
            "sasl.password": PASSWORD,
        }

    def allow_site(self, principal: str, prefix: str) -> None:
        admin = AdminClient(self.admin_conf())
        bindings = [
            AclBinding(
                ResourceType.TOPIC,
                prefix,
                ResourcePatternType.PREFIXED,
                principal,
                "*",
                op,
                AclPermissionType.ALLOW,
            )
            for op in (AclOperation.WRITE, AclOperation.CREATE, AclOperation.DESCRIBE)
        ]
        for fut in admin.create_acls(bindings).values():
            fut.result(30)

    def topics(self) -> set[str]:
        admin = AdminClient(self.admin_conf())
        return set(admin.list_topics(timeout=15).topics)

    def read(self, topic: str, expect: int, timeout: float = 60) -> list[bytes]:
        """Every value of a one-partition central topic, read as the admin."""
        c = Consumer(
            {
                **self.admin_conf(),
                "group.id": f"edge-sec-{time.monotonic_ns()}",
                "enable.auto.commit": False,
            }
        )
        out: list[bytes] = []
        try:
            wait_for(lambda: topic in self.topics(), timeout, f"central topic {topic}")
            c.assign([TopicPartition(topic, 0, 0)])
            deadline = time.monotonic() + timeout
            quiet_since = time.monotonic()
            while time.monotonic() < deadline:
                m = c.poll(0.2)
                if m is None:
                    if len(out) >= expect and time.monotonic() - quiet_since > 1.0:
                        break
                    continue
                err = m.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, str(err)
                    continue
                quiet_since = time.monotonic()
                out.append(m.value())
        finally:
            c.close()
        return out


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Central]:
    tmp = tmp_path_factory.mktemp("central")
    certs = make_certs(tmp / "certs")
    keys = {
        "ssl.keystore.location": str(certs.server_keystore),
        "ssl.truststore.location": str(certs.ca_file),
        "ssl.client.auth": "requested",
        "ssl.principal.mapping.rules": "RULE:^CN=([^,]*),OU=sites,.*$/$1/,DEFAULT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "authorizer.class.name": "shoal",
        "super.users": "User:admin",
        "connection.failed.authentication.delay.ms": 100,
    }
    broker = SecureBroker(tmp / "data", keys, ("SASL_SSL", "SSL"))
    broker.start()
    try:
        store_users(broker.metadata_url, (SITE, "admin"))
        c = Central(broker, certs)
        c.allow_site(f"User:{SITE}", f"{SITE}.")
        yield c
    finally:
        broker.stop()


def _gateway(tmp: Path, uplink: dict[str, Any]) -> GatewayProcess:
    cfg = gateway_config(tmp / "edge", site=SITE, central="unused:1", uplink=uplink)
    cfg["http"] = {"listen": f"127.0.0.1:{free_port()}", "topics": []}
    return GatewayProcess(tmp, cfg)


def _post(gw: GatewayProcess, topic: str, values: list[dict[str, Any]]) -> None:
    body = "\n".join(json.dumps(v) for v in values).encode()
    req = urllib.request.Request(
        f"http://{gw.config['http']['listen']}/topics/{topic}",
        data=body,
        headers={"Content-Type": "application/x-ndjson"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200, r.read()


def _scram(central: Central, prefix: str, user: str = SITE) -> dict[str, Any]:
    return {
        "bootstrap": central.sasl_ssl,
        "topic_prefix": prefix,
        "tls": True,
        "ca_file": str(central.certs.ca_file),
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": user,
        "sasl_password": PASSWORD,
    }


def _values(n: int, tag: str) -> list[dict[str, Any]]:
    return [{"tag": tag, "i": i} for i in range(n)]


def _decoded(raw: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(v) for v in raw]


def test_scram_uplink_forwards_inside_its_prefix(central: Central, tmp_path: Path) -> None:
    gw = _gateway(tmp_path, _scram(central, f"{SITE}."))
    gw.start()
    try:
        sent = _values(40, "scram")
        _post(gw, "telemetry", sent)
        got = central.read(f"{SITE}.telemetry", len(sent))
        assert _decoded(got) == sent
        up = wait_for(
            lambda: (u := gw.uplink())["state"] == "connected" and u, 20, "uplink connected"
        )
        assert up["sent_records"] == len(sent)
    finally:
        gw.stop()
    log = central.broker.log()
    # The uplink logged in as the site (the admin's own logins also use SCRAM-SHA-512).
    assert f"authenticated User:{SITE} with SCRAM-SHA-512" in log, log[-2000:]


def test_mutual_tls_uplink_forwards_as_the_certificate_principal(
    central: Central, tmp_path: Path
) -> None:
    cert, key = central.certs.client(SITE)
    gw = _gateway(
        tmp_path,
        {
            "bootstrap": central.ssl,
            "topic_prefix": f"{SITE}.",
            "tls": True,
            "ca_file": str(central.certs.ca_file),
            "cert_file": str(cert),
            "key_file": str(key),
        },
    )
    gw.start()
    try:
        sent = _values(25, "mtls")
        _post(gw, "mtls", sent)
        assert _decoded(central.read(f"{SITE}.mtls", len(sent))) == sent
    finally:
        gw.stop()


def test_mutual_tls_uplink_without_a_certificate_is_refused(
    central: Central, tmp_path: Path
) -> None:
    """The SSL listener requests a certificate; without one the uplink is
    User:ANONYMOUS, which may write nothing (the topic is refused, as seen in
    runs here, or InitProducerId, which turns the producer fatal): status says
    the uplink is down, with the error, and the records stay local. (It used
    to stay `connecting` with no error.)"""
    gw = _gateway(
        tmp_path,
        {
            "bootstrap": central.ssl,
            "topic_prefix": f"{SITE}.",
            "tls": True,
            "ca_file": str(central.certs.ca_file),
        },
    )
    gw.start()
    try:
        _post(gw, "anon", _values(5, "anon"))
        up = wait_for(
            lambda: (u := gw.uplink())["down"] and u["last_error_kind"] in ("auth", "fatal") and u,
            30,
            "the refusal in status",
        )
        assert up["sent_records"] == 0, up
        # A refused topic, the refusal seen by produce, or librdkafka's fatal
        # "Cluster authorization failed" (InitProducerId refused).
        assert re.search("authorization.failed|refusal", up["last_error"], re.I), up
        lanes = gw.status()["lanes"]
        assert sum(u["backlog_records"] for ln in lanes for u in ln["uplinks"].values()) == 5
        assert not [ln["drops"] for ln in lanes if ln["drops"]]
        assert "Traceback" not in gw.log()
    finally:
        gw.stop()
    assert f"{SITE}.anon" not in central.topics()


def test_write_outside_the_prefix_is_refused_kept_and_sent_once_allowed(
    central: Central, tmp_path: Path
) -> None:
    """plant-7 configured with another site's prefix: the central cluster
    refuses, status says why, the records stay in the local log (no drop); once
    an admin allows the prefix, every record arrives, once."""
    other = "plant-8."
    gw = _gateway(tmp_path, _scram(central, other))
    gw.start()
    try:
        sent = _values(30, "outside")
        _post(gw, "telemetry", sent)
        up = wait_for(
            lambda: (u := gw.uplink())["last_error_kind"] == "auth" and u, 30, "refusal in status"
        )
        assert "TOPIC_AUTHORIZATION_FAILED" in up["last_error"], up
        assert up["sent_records"] == 0
        assert up["state"] != "connected", up
        lane = gw.status()["lanes"]
        backlog = sum(u["backlog_records"] for ln in lane for u in ln["uplinks"].values())
        drops = [ln["drops"] for ln in lane if ln["drops"]]
        assert backlog == len(sent), lane
        assert not drops, drops
        assert f"{other}telemetry" not in central.topics()

        central.allow_site(f"User:{SITE}", other)
        got = central.read(f"{other}telemetry", len(sent))
        assert _decoded(got) == sent
        wait_for(lambda: gw.uplink()["sent_records"] == len(sent), 30, "sent_records")
    finally:
        gw.stop()


def test_wrong_password_is_refused_and_reported(central: Central, tmp_path: Path) -> None:
    up_cfg = _scram(central, f"{SITE}.")
    up_cfg["sasl_password"] = "not-the-password"
    gw = _gateway(tmp_path, up_cfg)
    gw.start()
    try:
        _post(gw, "telemetry", _values(3, "bad-pw"))
        up = wait_for(
            lambda: (u := gw.uplink())["last_error_kind"] == "auth" and u, 30, "auth failure"
        )
        assert "AUTHENTICATION" in up["last_error"], up
        assert "not-the-password" not in json.dumps(gw.status())
        assert "not-the-password" not in gw.log()
    finally:
        gw.stop()


def _local_producer(gw: GatewayProcess, **conf: Any) -> Any:
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": gw.kafka, "linger.ms": 5, **conf})


def _produce(
    gw: GatewayProcess, topic: str, values: list[bytes], timeout_ms: int = 10000, **conf: Any
) -> list[str]:
    """Produce, wait for every report; the delivery and client errors (empty
    when all succeeded)."""
    errors: list[str] = []

    def report(err: Any, _msg: Any = None) -> None:
        if err is not None:
            errors.append(err.name())

    p = _local_producer(gw, **conf, **{"message.timeout.ms": timeout_ms, "error_cb": report})

    for v in values:
        p.produce(topic, v, on_delivery=report)
    p.flush(30)
    return errors


def test_local_listener_requires_sasl(central: Central, tmp_path: Path) -> None:
    """local.security_protocol = SASL_PLAINTEXT: a local app must log in
    (SCRAM user in the gateway's own store); anonymous and wrong-password
    producers get nothing in; what the app writes is forwarded as usual."""
    gw = _gateway(tmp_path, _scram(central, f"{SITE}."))
    gw.config["local"]["security_protocol"] = "SASL_PLAINTEXT"
    gw.config["local"]["broker"] = {"sasl.enabled.mechanisms": "SCRAM-SHA-256,PLAIN"}
    gw.start()
    try:
        meta = f"sqlite:///{(tmp_path / 'edge' / 'log' / 'meta.db').resolve()}"
        added = shoal(
            "users", "add", "line-app", "--metadata", meta, "--password-file", "-", input="app-pw\n"
        )
        assert added.returncode == 0, added.stderr
        sasl = {"security.protocol": "SASL_PLAINTEXT", "sasl.username": "line-app"}

        anon = _produce(gw, "app", [b"anon"], 3000)
        assert "_MSG_TIMED_OUT" in anon, anon
        bad = _produce(
            gw,
            "app",
            [b"bad"],
            3000,
            **sasl,
            **{"sasl.mechanisms": "PLAIN", "sasl.password": "nope"},
        )
        assert "_AUTHENTICATION" in bad and "_MSG_TIMED_OUT" in bad, bad

        values = [f"v{i}".encode() for i in range(30)]
        ok = _produce(
            gw,
            "app",
            values,
            **sasl,
            **{"sasl.mechanisms": "SCRAM-SHA-256", "sasl.password": "app-pw"},
        )
        assert ok == []
        assert central.read(f"{SITE}.app", len(values)) == values
        log = gw.log()
        assert "authentication failed" in log, log[-3000:]
        assert "nope" not in log
    finally:
        gw.stop()


def _mqtt_gateway(
    tmp: Path, central: Central, port: int, ca: Path, cert: tuple[Path, Path]
) -> GatewayProcess:
    gw = _gateway(tmp, _scram(central, f"{SITE}."))
    gw.config["mqtt"] = {
        "port": port,
        "protocol": "3.1.1",
        "username": "gateway",
        "password": "x",
        "reconnect_initial_ms": 50,
        "reconnect_max_ms": 500,
        "tls": True,
        "ca_file": str(ca),
        "cert_file": str(cert[0]),
        "key_file": str(cert[1]),
        "routes": [{"filter": "devices/+/data", "topic": "mqtt-tls", "key_level": 1, "qos": 1}],
    }
    return gw


def test_mqtt_over_mutual_tls(central: Central, tmp_path: Path) -> None:
    """amqtt with a TLS listener (devices publish on its plain one): the
    gateway subscribes over TLS with a client certificate and forwards every
    message; a certificate from another CA, or a broker certificate its
    ca_file does not trust, gets no session (the error is in status)."""
    from edge_harness import publish
    from mqtt_broker import MqttBroker

    certs = central.certs
    mq = MqttBroker(tmp_path / "mqtt", tls=(certs.server_keystore, certs.ca_file)).start()
    try:
        assert mq.tls_port is not None
        gw = _mqtt_gateway(
            tmp_path / "good", central, mq.tls_port, certs.ca_file, certs.client("gw")
        )
        gw.start()
        try:
            wait_for(lambda: gw.status()["mqtt"]["connected"], 30, "MQTT over TLS")
            sent = [f"m{i}".encode() for i in range(20)]
            publish(mq.port, [("devices/d1/data", v) for v in sent], client_id="d1")
            assert central.read(f"{SITE}.mqtt-tls", len(sent)) == sent
        finally:
            gw.stop()

        stranger = make_certs(tmp_path / "stranger")
        bad_cases = [
            ("client certificate from another CA", certs.ca_file, stranger.client("gw")),
            ("broker not trusted by ca_file", stranger.ca_file, certs.client("gw")),
        ]
        for i, (what, ca, cert) in enumerate(bad_cases):
            gw = _mqtt_gateway(tmp_path / f"bad{i}", central, mq.tls_port, ca, cert)
            gw.start()
            try:
                st = wait_for(
                    lambda g=gw: (m := g.status()["mqtt"])["last_error"] and m,
                    30,
                    f"error: {what}",
                )
                # TLS 1.3 checks the client certificate after the handshake:
                # then the client sees a disconnection, not a handshake error.
                assert st["connects"] == 0 and not st["connected"], (what, st)
                assert st["received"] == 0, (what, st)
            finally:
                gw.stop()
    finally:
        mq.stop()
