"""The audit trail: one JSON line per authorization denial and admin change,
in a file that rotates (audit.log.path)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kio.schema.errors import ErrorCode

from acl_helpers import ALL, ALLOW, ANON, DENY, LITERAL, TOPIC, WRITE, allow, delete_acls
from harness import BrokerProcess
from wire import create_topic, make_batch, produce, record


def lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(path.parent.glob(path.name + "*"), reverse=True):  # oldest first
        out += [json.loads(line) for line in p.read_text().splitlines()]
    return out


def wait_lines(path: Path, pred: Any, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = lines(path) if path.exists() else []
        if pred(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_denials_and_admin_changes_are_audited(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    b = BrokerProcess(
        tmp_path / "data",
        env={
            "SHOAL_AUTHORIZER_CLASS_NAME": "shoal",
            "SHOAL_ALLOW_EVERYONE_IF_NO_ACL_FOUND": "true",
            "SHOAL_AUDIT_LOG_PATH": str(audit),
            "SHOAL_AUDIT_LOG_MAX_BYTES": "4096",
            "SHOAL_AUDIT_LOG_BACKUP_COUNT": "50",
        },
    ).start()
    try:
        boot = b.bootstrap
        assert create_topic(boot, "t") == ErrorCode.none
        allow(
            boot,
            (TOPIC, "t", LITERAL, ANON, "*", ALL, ALLOW),
            (TOPIC, "t", LITERAL, ANON, "*", WRITE, DENY),
        )
        code = produce(boot, "t", make_batch([record(None, b"v", 0)])).error_code
        assert ErrorCode(code) == ErrorCode.topic_authorization_failed
        delete_acls(boot, (TOPIC, "t", LITERAL, ANON, "*", WRITE, DENY))
        got = wait_lines(audit, lambda ls: sum(1 for x in ls if x["event"] == "admin") >= 4)
        events = [(x["event"], x.get("action"), x.get("operation")) for x in got]
        assert events == [
            ("admin", "CreateTopics", None),
            ("admin", "CreateAcls", None),
            ("admin", "CreateAcls", None),
            ("authorization_denied", None, "WRITE"),
            ("admin", "DeleteAcls", None),
        ], events
        denied = got[3]
        assert denied["principal"] == ANON
        assert denied["resource_type"] == "TOPIC" and denied["resource_name"] == "t"
        assert denied["client_address"].startswith("127.0.0.1:")
        assert denied["client_id"] == "test"
        assert got[0]["result"] == "NONE" and got[0]["details"]["partitions"] == 1
        assert "DENY User:ANONYMOUS from * WRITE TOPIC:LITERAL:t" in got[4]["details"]["acl"]
        # Rotation: a burst of changes rolls the file over, no line lost.
        for i in range(40):
            assert create_topic(boot, f"burst-{i}") == ErrorCode.none
        got = wait_lines(
            audit, lambda ls: sum(1 for x in ls if x.get("action") == "CreateTopics") >= 41
        )
        assert sum(1 for x in got if x.get("action") == "CreateTopics") == 41
        assert (tmp_path / "audit.log.1").exists()
    finally:
        b.stop()
