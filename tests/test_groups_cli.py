"""`shoal groups list|describe` against a broker with a live group: the lag it
prints is end offset minus committed offset, per partition."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from harness import BrokerProcess
from shoal.cli import cli

TIMEOUT = 30.0


@pytest.fixture
def live_group(tmp_path: Path) -> Iterator[tuple[BrokerProcess, str, str]]:
    """A topic with 10 records in partition 0 and 5 in partition 1, and a group
    whose one live member owns both and has committed 7 and 5."""
    broker = BrokerProcess(
        tmp_path / "data", env={"SHOAL_GROUP_INITIAL_REBALANCE_DELAY_MS": "0"}
    ).start()
    topic = f"cli-{uuid.uuid4().hex[:8]}"
    group = f"grp-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(
        TIMEOUT
    )
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for part, n in ((0, 10), (1, 5)):
        for i in range(n):
            p.produce(topic, value=f"{part}-{i}".encode(), partition=part)
    assert p.flush(TIMEOUT) == 0
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "client.id": "lag-test",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
        }
    )
    c.subscribe([topic])
    deadline = time.monotonic() + TIMEOUT
    while len(c.assignment()) < 2:
        assert time.monotonic() < deadline, "no assignment"
        c.poll(0.1)
    c.commit(offsets=[TopicPartition(topic, 0, 7), TopicPartition(topic, 1, 5)], asynchronous=False)
    try:
        yield broker, topic, group
    finally:
        c.close()
        broker.stop()


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["groups", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_describe_shows_lag(live_group: tuple[BrokerProcess, str, str]) -> None:
    broker, topic, group = live_group
    info = json.loads(run("describe", group, "--bootstrap", broker.bootstrap, "--format", "json"))
    assert info["state"] == "Stable"
    assert info["assignor"] == "range"
    (member,) = info["members"]
    assert member["client_id"] == "lag-test"
    assert member["assignment"] == [
        {"topic": topic, "partition": 0},
        {"topic": topic, "partition": 1},
    ]
    rows = [(p["partition"], p["committed"], p["end"], p["lag"]) for p in info["partitions"]]
    assert rows == [(0, 7, 10, 3), (1, 5, 5, 0)]
    assert all(p["member_id"] == member["member_id"] for p in info["partitions"])
    assert info["total_lag"] == 3
    table = run("describe", group, "--bootstrap", broker.bootstrap)
    assert group in table and "total lag 3" in table and "lag-test" in table


def test_list_shows_group(live_group: tuple[BrokerProcess, str, str]) -> None:
    broker, _topic, group = live_group
    rows = json.loads(run("list", "--bootstrap", broker.bootstrap, "--format", "json"))
    assert {"group": group, "state": "Stable", "simple": False, "members": 1} in rows
    assert group in run("list", "--bootstrap", broker.bootstrap)


def test_describe_unknown_group(live_group: tuple[BrokerProcess, str, str]) -> None:
    broker, _topic, _group = live_group
    result = CliRunner().invoke(
        cli, ["groups", "describe", "no-such-group", "--bootstrap", broker.bootstrap]
    )
    assert result.exit_code == 1 and "does not exist" in result.output
