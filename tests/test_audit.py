"""The audit trail, line by line: a SASL success and failure, an authorization
denial and a topic creation, each parsed as JSON and checked field by field
against what the client did (docs/SECURITY.md "Audit trail")."""

from __future__ import annotations

import datetime
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from security_helpers import PASSWORD, SecureBroker, store_users

Line = dict[str, Any]
COMMON = ("time", "event", "principal", "client_address", "client_id", "listener")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureBroker, Path]]:
    tmp = tmp_path_factory.mktemp("audit")
    audit = tmp / "audit.log"
    b = SecureBroker(
        tmp / "data",
        {
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256",
            "authorizer.class.name": "shoal",
            "super.users": "User:admin",
            "audit.log.path": str(audit),
            "connection.failed.authentication.delay.ms": 0,
        },
        ("SASL_PLAINTEXT",),
    ).start()
    store_users(b.metadata_url, ("admin", "alice"))
    yield b, audit
    b.stop()


def client(b: SecureBroker, user: str, password: str, mechanism: str, cid: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": b.address("SASL_PLAINTEXT"),
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "client.id": cid,
    }


def wait_line(path: Path, pred: Callable[[Line], bool], timeout: float = 15) -> Line:
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        for line in lines:
            if pred(line):
                return line
        assert time.monotonic() < deadline, f"no such line in {lines[-5:]}"
        time.sleep(0.05)


def check_common(line: Line, event: str, principal: str, cid: str) -> None:
    assert list(line)[: len(COMMON)] == list(COMMON)
    stamp = datetime.datetime.fromisoformat(line["time"])
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.UTC) - stamp).total_seconds()) < 120
    assert line["event"] == event
    assert line["principal"] == principal
    host, _, port = line["client_address"].rpartition(":")
    assert host == "127.0.0.1" and 0 < int(port) < 65536
    assert line["client_id"] == cid
    assert line["listener"] == "SASL_PLAINTEXT"


def test_sasl_success_creation_and_denial(broker: tuple[SecureBroker, Path]) -> None:
    b, audit = broker
    topic = f"audited-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(client(b, "admin", PASSWORD, "SCRAM-SHA-256", "audit-admin"))
    admin.create_topics([NewTopic(topic, 2)])[topic].result(timeout=30)

    ok = wait_line(
        audit,
        lambda x: x["event"] == "authentication" and x["client_id"] == "audit-admin",
    )
    check_common(ok, "authentication", "User:admin", "audit-admin")
    assert {k: ok[k] for k in ok if k not in COMMON} == {
        "mechanism": "SCRAM-SHA-256",
        "success": True,
        "error": None,
    }

    created = wait_line(audit, lambda x: x.get("action") == "CreateTopics")
    check_common(created, "admin", "User:admin", "audit-admin")
    assert {k: created[k] for k in created if k not in COMMON} == {
        "action": "CreateTopics",
        "resource_type": "TOPIC",
        "resource_name": topic,
        "result": "NONE",
        "details": {"partitions": 2, "validate_only": False},
    }

    # alice authenticates (PLAIN, checked against her SCRAM credential) but
    # has no ACL: her produce is denied
    p = Producer(
        {
            **client(b, "alice", PASSWORD, "PLAIN", "audit-alice"),
            "message.timeout.ms": 5000,
            "retries": 0,
        }
    )
    errors: list[Any] = []
    p.produce(topic, b"v", partition=0, on_delivery=lambda err, _m: errors.append(err))
    p.flush(15)
    assert errors and errors[0] is not None
    denied = wait_line(audit, lambda x: x["event"] == "authorization_denied")
    check_common(denied, "authorization_denied", "User:alice", "audit-alice")
    assert {k: denied[k] for k in denied if k not in COMMON} == {
        "operation": denied["operation"],  # DESCRIBE (Metadata) or WRITE (Produce)
        "resource_type": "TOPIC",
        "resource_name": topic,
    }
    assert denied["operation"] in ("DESCRIBE", "WRITE")
    alice = wait_line(
        audit,
        lambda x: x["event"] == "authentication" and x["principal"] == "User:alice",
    )
    assert alice["mechanism"] == "PLAIN" and alice["success"] is True
    assert PASSWORD not in audit.read_text()


def test_sasl_failure(broker: tuple[SecureBroker, Path]) -> None:
    b, audit = broker
    admin = AdminClient(client(b, "alice", "wrong-" + PASSWORD, "PLAIN", "audit-wrong"))
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
    bad = wait_line(
        audit,
        lambda x: x["event"] == "authentication" and x["client_id"] == "audit-wrong",
    )
    check_common(bad, "authentication", "User:alice", "audit-wrong")
    assert bad["mechanism"] == "PLAIN"
    assert bad["success"] is False
    assert isinstance(bad["error"], str) and "alice" in bad["error"]
    assert set(bad) == {*COMMON, "mechanism", "success", "error"}
    assert PASSWORD not in audit.read_text()


def test_trail_is_not_a_broker_logger(tmp_path: Path) -> None:
    """Broker-logger configs list and set every shoal.* logger: the audit
    trail must not be one of them, or an ALTER_CONFIGS could silence it."""
    from shoal.broker.handlers.configs import logger_entries
    from shoal.security.audit import AuditLog

    audit = AuditLog(str(tmp_path / "audit.log"))
    try:
        assert not [e.name for e in logger_entries() if "audit" in e.name]
        audit.write("admin", None, action="x")
    finally:
        audit.close()
    assert json.loads((tmp_path / "audit.log").read_text())["action"] == "x"
