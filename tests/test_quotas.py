"""DescribeClientQuotas and AlterClientQuotas from kafka-python's client
(its own encoders), `shoal quotas`, Kafka's error codes for bad entities,
keys, values and filters, authorization, and the audit line of a change."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.protocol.admin import AlterClientQuotasRequest, DescribeClientQuotasRequest

from harness import BrokerProcess

NONE, CLUSTER_AUTHORIZATION_FAILED, INVALID_REQUEST = 0, 31, 42
E = AlterClientQuotasRequest.EntryData
F = DescribeClientQuotasRequest.ComponentData


class Admin:
    """kafka-python's admin client sending the two quota requests it encodes
    but has no method for."""

    def __init__(self, bootstrap: str) -> None:
        self.client = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="quota-admin")

    def send(self, request: Any) -> Any:
        manager = self.client._manager

        async def go() -> Any:
            return await manager.send(request)

        return manager.run(go)

    def alter(
        self,
        *entries: tuple[dict[str, str | None], dict[str, float | None]],
        validate: bool = False,
    ) -> list[tuple[int, str | None]]:
        req = AlterClientQuotasRequest(
            entries=[
                E(
                    entity=[E.EntityData(entity_type=t, entity_name=n) for t, n in ent.items()],
                    ops=[
                        E.OpData(key=k, value=0.0 if v is None else v, remove=v is None)
                        for k, v in ops.items()
                    ],
                )
                for ent, ops in entries
            ],
            validate_only=validate,
        )
        resp = self.send(req)
        assert len(resp.entries) == len(entries)
        return [(e.error_code, e.error_message) for e in resp.entries]

    def describe(
        self, *components: tuple[str, int, str | None], strict: bool = False
    ) -> tuple[int, str | None, dict[str, dict[str, float]]]:
        req = DescribeClientQuotasRequest(
            components=[F(entity_type=t, match_type=m, match=n) for t, m, n in components],
            strict=strict,
        )
        resp = self.send(req)
        found = {
            ",".join(
                f"{e.entity_type}={'<default>' if e.entity_name is None else e.entity_name}"
                for e in entry.entity
            ): {v.key: v.value for v in entry.values}
            for entry in resp.entries or []
        }
        return resp.error_code, resp.error_message, found

    def all(self) -> dict[str, dict[str, float]]:
        code, _msg, found = self.describe()
        assert code == NONE
        return found

    def clear(self) -> None:
        for name, values in self.all().items():
            entity = {
                t: None if n == "<default>" else n
                for t, n in (p.split("=", 1) for p in name.split(","))
            }
            assert self.alter((entity, dict.fromkeys(values))) == [(NONE, None)]


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, Path]]:
    tmp = tmp_path_factory.mktemp("quotas")
    audit = tmp / "audit.log"
    b = BrokerProcess(tmp / "data", env={"SHOAL_AUDIT_LOG_PATH": str(audit)}).start()
    yield b, audit
    b.stop()


@pytest.fixture
def admin(audited: tuple[BrokerProcess, Path]) -> Iterator[Admin]:
    a = Admin(audited[0].bootstrap)
    a.clear()
    yield a
    a.client.close()


def test_alter_and_describe_round_trip(admin: Admin) -> None:
    assert (
        admin.alter(
            ({"user": "alice"}, {"producer_byte_rate": 1024.0, "request_percentage": 12.5}),
            ({"user": "alice", "client-id": None}, {"consumer_byte_rate": 2048.0}),
            ({"client-id": None}, {"producer_byte_rate": 512.0}),
            ({"user": None, "client-id": "app"}, {"controller_mutation_rate": 3.0}),
        )
        == [(NONE, None)] * 4
    )
    assert admin.all() == {
        "user=alice": {"producer_byte_rate": 1024.0, "request_percentage": 12.5},
        "user=alice,client-id=<default>": {"consumer_byte_rate": 2048.0},
        "client-id=<default>": {"producer_byte_rate": 512.0},
        "user=<default>,client-id=app": {"controller_mutation_rate": 3.0},
    }
    # exact user, strict: only the entity with just that user
    assert admin.describe(("user", 0, "alice"), strict=True)[2] == {
        "user=alice": {"producer_byte_rate": 1024.0, "request_percentage": 12.5}
    }
    # default client id, not strict: every entity with a default client id
    assert set(admin.describe(("client-id", 1, None))[2]) == {
        "user=alice,client-id=<default>",
        "client-id=<default>",
    }
    # any specified user
    assert set(admin.describe(("user", 2, None))[2]) == {
        "user=alice",
        "user=alice,client-id=<default>",
    }
    # remove one key, change another
    assert admin.alter(
        ({"user": "alice"}, {"request_percentage": None, "producer_byte_rate": 4096.0})
    ) == [(NONE, None)]
    assert admin.all()["user=alice"] == {"producer_byte_rate": 4096.0}
    # removing the last key removes the entity
    assert admin.alter(({"client-id": None}, {"producer_byte_rate": None})) == [(NONE, None)]
    assert "client-id=<default>" not in admin.all()


def test_validate_only_stores_nothing(admin: Admin) -> None:
    assert admin.alter(({"user": "bob"}, {"producer_byte_rate": 100.0}), validate=True) == [
        (NONE, None)
    ]
    assert admin.all() == {}
    code, message = admin.alter(({"user": "bob"}, {"producer_byte_rate": -1.0}), validate=True)[0]
    assert code == INVALID_REQUEST and "positive" in str(message)


@pytest.mark.parametrize(
    ("entity", "message"),
    [
        ({"topic": "t"}, "unknown entity type 'topic'"),
        ({}, "empty quota entity"),
        ({"ip": "10.0.0.1"}, "ip quotas"),
    ],
)
def test_bad_entities_are_refused_and_nothing_stored(
    admin: Admin, entity: dict[str, str | None], message: str
) -> None:
    results = admin.alter(
        (entity, {"producer_byte_rate": 100.0}),
        ({"user": "good"}, {"producer_byte_rate": 100.0}),  # entries are independent
    )
    assert results[0][0] == INVALID_REQUEST and message in str(results[0][1])
    assert results[1] == (NONE, None)
    assert admin.all() == {"user=good": {"producer_byte_rate": 100.0}}


def test_duplicate_entity_type_is_refused(admin: Admin) -> None:
    req = AlterClientQuotasRequest(
        entries=[
            E(
                entity=[
                    E.EntityData(entity_type="user", entity_name="a"),
                    E.EntityData(entity_type="user", entity_name="b"),
                ],
                ops=[E.OpData(key="producer_byte_rate", value=1.0, remove=False)],
            )
        ],
        validate_only=False,
    )
    entry = admin.send(req).entries[0]
    assert entry.error_code == INVALID_REQUEST and "more than once" in entry.error_message
    assert admin.all() == {}


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ({"producer_byte_rate": 0.0}, "must be a positive number"),
        ({"consumer_byte_rate": -100.0}, "must be a positive number"),
        ({"request_percentage": float("nan")}, "must be a positive number"),
        ({"producer_byte_rate": 10.5}, "whole number"),
        ({"bytes_per_fortnight": 1.0}, "unknown quota key"),
        ({"bytes_per_fortnight": None}, "unknown quota key"),
        # one bad op spoils its entry: the good one is not stored either
        ({"consumer_byte_rate": 100.0, "producer_byte_rate": -1.0}, "must be a positive"),
    ],
)
def test_bad_values_are_refused_and_nothing_stored(
    admin: Admin, ops: dict[str, float | None], message: str
) -> None:
    code, text = admin.alter(({"user": "carol"}, ops))[0]
    assert code == INVALID_REQUEST and message in str(text)
    assert admin.all() == {}


@pytest.mark.parametrize(
    ("components", "message"),
    [
        ([("user", 0, None)], "exact match"),
        ([("user", 1, None), ("user", 2, None)], "more than once"),
        ([("topic", 2, None)], "unknown entity type"),
    ],
)
def test_bad_describe_filters(
    admin: Admin, components: list[tuple[str, int, str | None]], message: str
) -> None:
    code, text, found = admin.describe(*components)
    assert code == INVALID_REQUEST and message in str(text)
    assert found == {}


def test_quota_changes_are_audited(admin: Admin, audited: tuple[BrokerProcess, Path]) -> None:
    audit = audited[1]
    assert admin.alter(({"user": "dave", "client-id": None}, {"producer_byte_rate": 777.0})) == [
        (NONE, None)
    ]
    assert admin.alter(({"user": "dave"}, {"producer_byte_rate": 0.0}))[0][0] == INVALID_REQUEST
    deadline = time.monotonic() + 10
    mine: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in audit.read_text().splitlines()] if audit.exists() else []
        mine = [x for x in lines if "dave" in str(x.get("resource_name"))]
        if len(mine) >= 2:
            break
        time.sleep(0.05)
    assert len(mine) == 2, mine
    ok, refused = mine
    assert ok["event"] == "admin"
    assert ok["action"] == "AlterClientQuotas"
    assert ok["resource_type"] == "CLIENT_QUOTA"
    assert ok["resource_name"] == "user=dave,client-id=<default>"
    assert ok["result"] == "NONE"
    assert ok["principal"] == "User:ANONYMOUS"
    assert ok["client_id"] == "quota-admin"
    assert ok["listener"] == "PLAINTEXT"
    assert ok["client_address"].startswith("127.0.0.1:")
    assert ok["details"] == {"quotas": {"producer_byte_rate": 777.0}, "validate_only": False}
    assert refused["result"] == "INVALID_REQUEST"
    assert refused["resource_name"] == "user=dave"
    assert "positive" in refused["details"]["error"]


def shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", "quotas", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_set_list_remove(admin: Admin, audited: tuple[BrokerProcess, Path]) -> None:
    boot = audited[0].bootstrap
    r = shoal("set", "--bootstrap", boot, "--user", "site-7", "--producer-byte-rate", "1048576")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "set: user=site-7 producer_byte_rate=1048576"
    r = shoal(
        "set", "--bootstrap", boot, "--default-client-id", "--request-percentage", "25",
        "--consumer-byte-rate", "2000",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert admin.all() == {
        "user=site-7": {"producer_byte_rate": 1048576.0},
        "client-id=<default>": {"request_percentage": 25.0, "consumer_byte_rate": 2000.0},
    }
    r = shoal("list", "--bootstrap", boot, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [
        {"entity": "client-id=<default>", "consumer_byte_rate": 2000.0, "request_percentage": 25.0},
        {"entity": "user=site-7", "producer_byte_rate": 1048576.0},
    ]
    r = shoal("list", "--bootstrap", boot, "--user", "site-7")
    assert r.returncode == 0 and "user=site-7" in r.stdout and "<default>" not in r.stdout
    r = shoal("remove", "--bootstrap", boot, "--default-client-id", "--key", "request_percentage")
    assert r.returncode == 0, r.stderr
    assert admin.all()["client-id=<default>"] == {"consumer_byte_rate": 2000.0}
    r = shoal("remove", "--bootstrap", boot, "--user", "site-7")
    assert r.returncode == 0, r.stderr
    assert "user=site-7" not in admin.all()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "--producer-byte-rate", "10"], "name an entity"),
        (["set", "--user", "a"], "give at least one of"),
        (["set", "--user", "a", "--default-user", "--producer-byte-rate", "1"], "not both"),
        (["set", "--user", "a", "--producer-byte-rate", "0"], "Invalid value"),
        (["set", "--user", "a", "--producer-byte-rate", "fast"], "Invalid value"),
        (["set", "--user", "a", "--producer-byte-rate", "2.5"], "whole number"),
        (["remove", "--user", "a", "--key", "bogus"], "Invalid value"),
    ],
)
def test_cli_bad_input(
    admin: Admin, audited: tuple[BrokerProcess, Path], args: list[str], message: str
) -> None:
    r = shoal(*args, "--bootstrap", audited[0].bootstrap)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert admin.all() == {}


def test_cli_unreachable_cluster() -> None:
    from harness import free_port

    r = shoal("list", "--bootstrap", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert r.returncode == 1
    assert "cannot reach 127.0.0.1:" in r.stderr and "Traceback" not in r.stderr


def test_authorizer_needs_cluster_alter_and_describe_configs(tmp_path: Path) -> None:
    b = BrokerProcess(
        tmp_path / "data",
        env={"SHOAL_AUTHORIZER_CLASS_NAME": "shoal", "SHOAL_SUPER_USERS": "User:admin"},
    ).start()
    try:
        a = Admin(b.bootstrap)
        code, _text = a.alter(({"user": "x"}, {"producer_byte_rate": 10.0}))[0]
        assert code == CLUSTER_AUTHORIZATION_FAILED
        code, _text, found = a.describe()
        assert code == CLUSTER_AUTHORIZATION_FAILED and found == {}
        a.client.close()
    finally:
        b.stop()
