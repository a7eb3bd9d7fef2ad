"""`shoal scorecard` security checks (issue 10 item 9) against a Shoal broker
with PLAINTEXT, SSL and SASL_SSL listeners, the authorizer on and User:plant-7
allowed `plant-7.*` only: every check passes there, each can fail (a plain
listener given as the TLS one, a topic the site may write, a dead address),
and checks without their options are skipped, not failed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from harness import free_port
from security_helpers import PASSWORD, Certs, SecureBroker, make_certs, store_users

SECURITY = [
    "security.plaintext_on_tls",
    "security.anonymous",
    "security.wrong_password",
    "security.cross_site",
]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureBroker, Certs]]:
    tmp = tmp_path_factory.mktemp("scorecard-sec")
    certs = make_certs(tmp / "certs")
    keys = {
        "ssl.keystore.location": str(certs.server_keystore),
        "ssl.truststore.location": str(certs.ca_file),
        "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "authorizer.class.name": "shoal",
        "super.users": "User:admin;User:ANONYMOUS",
        "connection.failed.authentication.delay.ms": 100,
    }
    broker = SecureBroker(tmp / "data", keys, ("PLAINTEXT", "SSL", "SASL_SSL"))
    broker.start()
    try:
        store_users(broker.metadata_url, ("plant-7", "admin"))
        admin = AdminClient({"bootstrap.servers": broker.address("PLAINTEXT")})
        bindings = [
            AclBinding(
                ResourceType.TOPIC,
                "plant-7.",
                ResourcePatternType.PREFIXED,
                "User:plant-7",
                "*",
                op,
                AclPermissionType.ALLOW,
            )
            for op in (AclOperation.WRITE, AclOperation.CREATE, AclOperation.DESCRIBE)
        ]
        for fut in admin.create_acls(bindings).values():
            fut.result(30)
        yield broker, certs
    finally:
        broker.stop()


def scorecard(*args: str, password: str | None = PASSWORD) -> tuple[int, dict[str, Any], str]:
    """The CLI in a subprocess (json); the password through stdin."""
    cmd = [sys.executable, "-m", "shoal", "scorecard", "--format", "json", "--timeout", "20"]
    if password is not None:
        cmd += ["--password-file", "-"]
    out = subprocess.run(
        [*cmd, *args], input=(password or "") + "\n", capture_output=True, text=True, timeout=180
    )
    data = json.loads(out.stdout) if out.stdout.startswith("{") else {}
    return out.returncode, data, out.stderr


def only(*ids: str) -> list[str]:
    return [a for i in ids for a in ("--check", i)]


def results(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in data["results"]}


def full_args(broker: SecureBroker, certs: Certs, other: str = "plant-8.telemetry") -> list[str]:
    return [
        "--bootstrap",
        broker.address("PLAINTEXT"),
        "--tls-bootstrap",
        broker.address("SSL"),
        "--sasl-bootstrap",
        broker.address("SASL_SSL"),
        "--user",
        "plant-7",
        "--ca-file",
        str(certs.ca_file),
        "--other-site-topic",
        other,
    ]


def test_every_security_check_passes_on_a_secured_shoal(
    secured: tuple[SecureBroker, Certs],
) -> None:
    broker, certs = secured
    code, data, err = scorecard(*full_args(broker, certs), *only(*SECURITY))
    got = results(data)
    assert list(got) == SECURITY, err
    for cid in SECURITY:
        assert got[cid]["status"] == "pass", (cid, got[cid]["evidence"])
        assert got[cid]["mandatory"] is True
    assert code == 0 and data["passed"] is True
    assert "TLS handshake TLSv1" in got["security.plaintext_on_tls"]["evidence"]
    assert "_AUTHENTICATION" in got["security.wrong_password"]["evidence"]
    assert "TOPIC_AUTHORIZATION_FAILED" in got["security.cross_site"]["evidence"]
    assert PASSWORD not in json.dumps(data) and PASSWORD not in err
    admin = AdminClient({"bootstrap.servers": broker.address("PLAINTEXT")})
    assert "plant-8.telemetry" not in admin.list_topics(timeout=10).topics


def test_checks_fail_when_the_cluster_does_not_refuse(
    secured: tuple[SecureBroker, Certs],
) -> None:
    """A plain-text listener given as the TLS one answers plain text; the
    site's own topic is writable; both are reported as failures."""
    broker, certs = secured
    args = full_args(broker, certs, other="plant-7.allowed")
    args[args.index("--tls-bootstrap") + 1] = broker.address("PLAINTEXT")
    code, data, _ = scorecard(*args, *only("security.plaintext_on_tls", "security.cross_site"))
    got = results(data)
    assert got["security.plaintext_on_tls"]["status"] == "fail"
    assert "answered a plain-text ApiVersions" in got["security.plaintext_on_tls"]["evidence"]
    assert got["security.cross_site"]["status"] == "fail"
    assert "plant-7 wrote to plant-7.allowed" in got["security.cross_site"]["evidence"]
    assert code == 1 and data["passed"] is False


def test_a_dead_address_or_a_bad_login_never_passes_as_refused(
    secured: tuple[SecureBroker, Certs],
) -> None:
    broker, certs = secured
    dead = f"127.0.0.1:{free_port()}"
    args = full_args(broker, certs)
    args[args.index("--sasl-bootstrap") + 1] = dead
    args[args.index("--tls-bootstrap") + 1] = dead
    code, data, _ = scorecard(*args, *only(*SECURITY))
    got = results(data)
    assert all(got[c]["status"] == "fail" for c in SECURITY), got
    assert "cannot connect" in got["security.plaintext_on_tls"]["evidence"]
    assert "control failed" in got["security.anonymous"]["evidence"]
    assert code == 1

    args = full_args(broker, certs)
    code, data, _ = scorecard(*args, *only("security.anonymous"), password="not-it")
    (r,) = data["results"]
    assert r["status"] == "fail" and "control failed: plant-7 cannot log in" in r["evidence"]


def test_checks_without_their_options_are_skipped(secured: tuple[SecureBroker, Certs]) -> None:
    broker, _certs = secured
    code, data, _ = scorecard(
        "--bootstrap", broker.address("PLAINTEXT"), *only("metadata", *SECURITY), password=None
    )
    got = results(data)
    assert got["metadata"]["status"] == "pass"
    for cid in SECURITY:
        assert got[cid]["status"] == "skip", got[cid]
    assert "--tls-bootstrap" in got["security.plaintext_on_tls"]["evidence"]
    assert "--sasl-bootstrap, --user, --password" in got["security.anonymous"]["evidence"]
    assert "--other-site-topic" in got["security.cross_site"]["evidence"]
    assert code == 0 and data["passed"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "plant-7"], "--user needs a password"),
        (["--tls-bootstrap", "no-port"], "expected one HOST:PORT"),
        (["--tls-bootstrap", "h:1,h:2"], "expected one HOST:PORT"),
        (["--sasl-bootstrap", "h:99999"], "port in 1-65535"),
        (["--ca-file", "/nonexistent/ca.pem"], "/nonexistent/ca.pem"),
        (["--sasl-mechanism", "GSSAPI"], "GSSAPI"),
    ],
)
def test_bad_security_options_are_one_line_errors(
    args: list[str], message: str, tmp_path: Path
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "scorecard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 2, out
    assert message in out.stderr
    assert "Traceback" not in out.stderr
