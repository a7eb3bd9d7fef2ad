"""`shoal acls list|add|remove` against a broker with an authorizer, and its
one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from kio.schema.errors import ErrorCode

from acl_helpers import describe_acls
from harness import BrokerProcess
from wire import create_topic, make_batch, produce, record

OPEN = {"SHOAL_AUTHORIZER_CLASS_NAME": "shoal", "SHOAL_ALLOW_EVERYONE_IF_NO_ACL_FOUND": "true"}


@pytest.fixture(scope="module")
def authz_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path_factory.mktemp("aclcli") / "data", env=OPEN).start()
    yield b
    b.stop()


def shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", "acls", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_add_list_remove(authz_broker: BrokerProcess) -> None:
    boot = authz_broker.bootstrap
    assert create_topic(boot, "plant-7.temps") == ErrorCode.none
    assert create_topic(boot, "plant-8.temps") == ErrorCode.none
    out = shoal(
        "add", "--bootstrap", boot, "--principal", "User:ANONYMOUS", "--topic", "plant-8.",
        "--pattern", "prefixed", "--operation", "write", "--operation", "describe", "--deny",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "added: DENY User:ANONYMOUS from * WRITE TOPIC:PREFIXED:plant-8." in out.stdout
    assert ErrorCode(
        produce(boot, "plant-8.temps", make_batch([record(None, b"v", 0)])).error_code
    ) == (ErrorCode.topic_authorization_failed)
    out = shoal("list", "--bootstrap", boot, "--topic", "plant-8.temps", "--pattern", "match",
                "--format", "json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert sorted(r["operation"] for r in rows) == ["DESCRIBE", "WRITE"]
    assert {(r["pattern"], r["name"], r["permission"]) for r in rows} == {
        ("PREFIXED", "plant-8.", "DENY")
    }
    out = shoal("remove", "--bootstrap", boot, "--topic", "plant-8.", "--pattern", "prefixed",
                "--operation", "write", "--format", "json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert [r["operation"] for r in json.loads(out.stdout)] == ["WRITE"]
    left = describe_acls(boot).resources
    assert [(r.resource_name, [a.operation for a in r.acls]) for r in left] == [("plant-8.", [8])]
    out = shoal("remove", "--bootstrap", boot, "--principal", "User:ANONYMOUS")
    assert out.returncode == 0, out.stderr
    assert describe_acls(boot).resources == ()
    assert ErrorCode(
        produce(boot, "plant-8.temps", make_batch([record(None, b"v", 0)])).error_code
    ) == (ErrorCode.none)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "--principal", "ANONYMOUS", "--topic", "t", "--operation", "read"], "Type:name"),
        (["add", "--principal", "User:a", "--topic", "t", "--operation", "fly"], "'fly'"),
        (["add", "--principal", "User:a", "--operation", "read"], "name a resource"),
        (["add", "--principal", "User:a", "--topic", "t", "--group", "g", "--operation", "read"],
         "name one resource"),
        (["add", "--principal", "User:a", "--topic", "t", "--operation", "read",
          "--host", "gateway-1"], "invalid host 'gateway-1'"),
        (["remove"], "refusing to remove every ACL"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(authz_broker: BrokerProcess, args: list[str], message: str) -> None:
    out = shoal(*args[:1], "--bootstrap", authz_broker.bootstrap, *args[1:])
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_without_an_authorizer(broker: BrokerProcess) -> None:
    out = shoal("list", "--bootstrap", broker.bootstrap)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "authorizer" in out.stderr.lower(), out.stderr
