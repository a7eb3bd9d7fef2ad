"""`shoal groups reset-offsets|delete|delete-offsets` against a real broker: the
offsets the group ends with are read back through the Kafka protocol."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from harness import BrokerProcess, free_port
from shoal.cli import cli

TIMEOUT = 30.0
BASE_MS = 1_700_000_000_000  # record i of each partition has timestamp BASE_MS + i s


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    b = BrokerProcess(
        tmp_path_factory.mktemp("groups-reset") / "data",
        env={"SHOAL_GROUP_INITIAL_REBALANCE_DELAY_MS": "0"},
    ).start()
    yield b.bootstrap
    b.stop()


@pytest.fixture
def topic(bootstrap: str) -> str:
    """Two partitions of 10 records each, with known timestamps."""
    name = f"rs-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=2)])[name].result(TIMEOUT)
    p = Producer({"bootstrap.servers": bootstrap})
    for part in (0, 1):
        for i in range(10):
            p.produce(name, value=b"x", partition=part, timestamp=BASE_MS + i * 1000)
    assert p.flush(TIMEOUT) == 0
    return name


def commit(bootstrap: str, group: str, offsets: dict[tuple[str, int], int]) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        c.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
            asynchronous=False,
        )
    finally:
        c.close()


def committed(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(
        TIMEOUT
    )
    return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions if tp.offset >= 0}


def shoal(*args: str) -> Result:
    return CliRunner().invoke(cli, ["groups", *args])


def ok(*args: str) -> str:
    result = shoal(*args)
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: str) -> str:
    result = shoal(*args)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return result.output


def reset(bootstrap: str, group: str, *args: str) -> dict[tuple[str, int], tuple[int | None, int]]:
    out = json.loads(
        ok("reset-offsets", group, *args, "--bootstrap", bootstrap, "--format", "json")
    )
    assert out["group"] == group and out["executed"] == ("--execute" in args)
    return {(r["topic"], r["partition"]): (r["current"], r["new"]) for r in out["partitions"]}


def test_reset_plans_then_executes(bootstrap: str, topic: str) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    commit(bootstrap, group, {(topic, 0): 7, (topic, 1): 4})
    t0, t1 = (topic, 0), (topic, 1)

    # Dry run by default: the plan is printed, nothing changes.
    assert reset(bootstrap, group, "--topic", topic, "--to-earliest") == {t0: (7, 0), t1: (4, 0)}
    table = ok("reset-offsets", group, "--topic", topic, "--to-latest", "--bootstrap", bootstrap)
    assert "dry run" in table and "NEW-OFFSET" in table
    assert committed(bootstrap, group) == {t0: 7, t1: 4}

    assert reset(bootstrap, group, "--topic", f"{topic}:1", "--to-latest", "--execute") == {
        t1: (4, 10)
    }
    assert committed(bootstrap, group) == {t0: 7, t1: 10}

    reset(bootstrap, group, "--all-topics", "--shift-by", "-3", "--execute")
    assert committed(bootstrap, group) == {t0: 4, t1: 7}

    # Outside the log: clamped to [log start, log end], as in Kafka.
    reset(bootstrap, group, "--topic", topic, "--shift-by", "50", "--execute")
    assert committed(bootstrap, group) == {t0: 10, t1: 10}
    reset(bootstrap, group, "--topic", f"{topic}:0", "--to-offset", "-5", "--execute")
    reset(bootstrap, group, "--topic", f"{topic}:1", "--to-offset", "3", "--execute")
    assert committed(bootstrap, group) == {t0: 0, t1: 3}

    # A time: the first record at or after it; after the last record: the end.
    when = datetime.fromtimestamp((BASE_MS + 5_500) / 1000, UTC).isoformat()
    reset(bootstrap, group, "--topic", topic, "--to-datetime", when, "--execute")
    assert committed(bootstrap, group) == {t0: 6, t1: 6}
    naive_utc = datetime.fromtimestamp((BASE_MS + 2_000) / 1000, UTC).replace(tzinfo=None)
    plan = reset(bootstrap, group, "--topic", topic, "--to-datetime", naive_utc.isoformat())
    assert plan == {t0: (6, 2), t1: (6, 2)}
    assert reset(bootstrap, group, "--topic", topic, "--to-datetime", "2099-01-01T00:00:00Z") == {
        t0: (6, 10),
        t1: (6, 10),
    }


def test_reset_refused_while_group_is_active(bootstrap: str, topic: str) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    c.subscribe([topic])
    try:
        deadline = time.monotonic() + TIMEOUT
        while not c.assignment():
            assert time.monotonic() < deadline, "no assignment"
            c.poll(0.1)
        c.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
        for args in (
            ("reset-offsets", group, "--topic", topic, "--to-earliest", "--execute"),
            ("reset-offsets", group, "--topic", topic, "--to-earliest"),
        ):
            out = fails(*args, "--bootstrap", bootstrap)
            assert "1 active member" in out and "stop its consumers first" in out
        out = fails("delete", group, "--bootstrap", bootstrap)
        assert "active members" in out
        out = fails("delete-offsets", group, "--topic", topic, "--bootstrap", bootstrap)
        assert f"{topic}-0: not deleted: a live member subscribes to it" in out
        assert committed(bootstrap, group) == {(topic, 0): 5}
    finally:
        c.close()


def test_reset_bad_input(bootstrap: str, topic: str) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    commit(bootstrap, group, {(topic, 0): 1})
    cases = {
        ("--topic", "no-such-topic", "--to-earliest"): "unknown topic 'no-such-topic'",
        ("--topic", f"{topic}:5", "--to-earliest"): "has no partition 5",
        ("--topic", f"{topic}:x", "--to-earliest"): "partitions must be numbers",
        ("--topic", topic, "--to-datetime", "last tuesday"): "ISO 8601",
        ("--topic", topic, "--to-offset", "ten"): "'ten' is not a valid integer",
        ("--topic", topic): "exactly one of --to-earliest",
        ("--topic", topic, "--to-earliest", "--to-latest"): "exactly one of",
        ("--to-earliest",): "--topic TOPIC[:P,...] or --all-topics",
        ("--topic", topic, "--all-topics", "--to-earliest"): "--all-topics (one of them)",
    }
    for args, message in cases.items():
        out = fails("reset-offsets", group, *args, "--bootstrap", bootstrap)
        assert message in out, (args, out)
    fresh = f"g-{uuid.uuid4().hex[:8]}"
    out = fails("reset-offsets", fresh, "--all-topics", "--to-earliest", "--bootstrap", bootstrap)
    assert f"group '{fresh}' has no committed offsets" in out
    out = fails(
        "reset-offsets", fresh, "--topic", topic, "--shift-by", "1", "--bootstrap", bootstrap
    )
    assert "no committed offset" in out
    assert committed(bootstrap, group) == {(topic, 0): 1}


def test_delete_groups(bootstrap: str, topic: str) -> None:
    a, b = f"g-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    commit(bootstrap, a, {(topic, 0): 3})
    commit(bootstrap, b, {(topic, 1): 4})
    out = ok("delete", a, b, "--bootstrap", bootstrap)
    assert f"deleted group {a}" in out and f"deleted group {b}" in out
    assert committed(bootstrap, a) == {} and committed(bootstrap, b) == {}
    out = fails("describe", a, "--bootstrap", bootstrap)
    assert "does not exist" in out
    missing = f"g-{uuid.uuid4().hex[:8]}"
    result = shoal("delete", missing, "--bootstrap", bootstrap)
    assert result.exit_code == 1
    assert f"cannot delete group '{missing}': no such group" in result.output


def test_delete_offsets(bootstrap: str, topic: str) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    other = f"rs-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(other, 1)])[other].result(TIMEOUT)
    commit(bootstrap, group, {(topic, 0): 3, (topic, 1): 4, (other, 0): 0})
    out = ok("delete-offsets", group, "--topic", f"{topic}:1", "--bootstrap", bootstrap)
    assert "deleted 1 committed offset" in out
    assert committed(bootstrap, group) == {(topic, 0): 3, (other, 0): 0}
    ok("delete-offsets", group, "--topic", topic, "--bootstrap", bootstrap)
    assert committed(bootstrap, group) == {(other, 0): 0}
    out = fails("delete-offsets", group, "--topic", "no-such-topic", "--bootstrap", bootstrap)
    assert "unknown topic 'no-such-topic'" in out
    missing = f"g-{uuid.uuid4().hex[:8]}"
    out = fails("delete-offsets", missing, "--topic", topic, "--bootstrap", bootstrap)
    assert f"group '{missing}': no such group" in out


def test_closed_port() -> None:
    address = f"127.0.0.1:{free_port()}"
    for args in (
        ("list",),
        ("describe", "g"),
        ("reset-offsets", "g", "--all-topics", "--to-earliest"),
        ("delete", "g"),
        ("delete-offsets", "g", "--topic", "t"),
    ):
        result = shoal(*args, "--bootstrap", address, "--timeout", "10")
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1, result.output
        assert f"cannot reach {address}" in result.output, result.output
        assert "Connection refused" in result.output


def test_describe_table_is_not_cut_in_a_pipe(bootstrap: str, topic: str) -> None:
    """Output that is not a terminal gets whole lines, however wide the table."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    client_id = "a-rather-long-client-id-" + "x" * 40
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "client.id": client_id})
    c.subscribe([topic])
    try:
        deadline = time.monotonic() + TIMEOUT
        while not c.assignment():
            assert time.monotonic() < deadline, "no assignment"
            c.poll(0.1)
        info = json.loads(ok("describe", group, "--bootstrap", bootstrap, "--format", "json"))
        (member,) = info["members"]
        table = ok("describe", group, "--bootstrap", bootstrap)
    finally:
        c.close()
    assert "…" not in table
    rows = [line for line in table.splitlines() if line.startswith("│ ")]
    assert len(rows) == 2, table
    for row in rows:
        assert member["member_id"] in row and client_id in row
    assert max(len(line) for line in table.splitlines()) > 200
