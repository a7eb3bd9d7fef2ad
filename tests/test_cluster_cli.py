"""`shoal cluster status|drain|undrain` and `partitions move` against a real
cluster (embedded PostgreSQL, two broker processes): expired brokers stay
listed as expired, drain is undone by undrain, SQLite is "not in cluster
mode", and an unreachable store is one line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cluster_harness import Cluster, wait_for
from harness import free_port
from shoal.cli import cli
from test_cluster_failover import create_topic

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal cluster mode"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster-cli"), size=2).start()
    try:
        create_topic(c, "cli-topic", 4)
        yield c
    finally:
        c.stop()


def shoal(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def ok(*args: str) -> str:
    result = shoal(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def status(cluster: Cluster) -> dict[int, dict[str, object]]:
    data = json.loads(ok("cluster", "status", "--metadata", cluster.url, "--format", "json"))
    assert data["cluster_mode"] is True
    return {b["node_id"]: b for b in data["brokers"]}


def test_drain_and_undrain(cluster: Cluster) -> None:
    wait_for(
        lambda: (s := status(cluster)) and all(s[n]["partitions"] for n in (1, 2)),
        30,
        "both brokers own partitions",
    )
    assert "broker 2 draining" in ok(
        "cluster", "drain", "2", "--no-wait", "--metadata", cluster.url
    )
    assert status(cluster)[2]["state"] == "draining"
    wait_for(lambda: status(cluster)[2]["partitions"] == 0, 30, "broker 2 to own nothing")
    assert "broker 2 takes partitions again" in ok(
        "cluster", "undrain", "2", "--metadata", cluster.url
    )
    s = status(cluster)[2]
    assert s["state"] == "alive" and s["draining"] is False
    result = shoal("cluster", "undrain", "9", "--metadata", cluster.url)
    assert result.exit_code == 1 and "broker 9 is not registered" in result.output


def test_status_table_labels_lease_as_time_left(cluster: Cluster) -> None:
    out = ok("cluster", "status", "--metadata", cluster.url)
    header = out.splitlines()[1].split()
    assert header == [
        "NODE", "ADDRESS", "RACK", "LEASE-LEFT", "PARTITIONS", "IN-B/S", "OUT-B/S", "STATE"
    ]  # fmt: skip
    rows = [line.split() for line in out.splitlines()[2:4]]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(r[3].endswith("s") and float(r[3][:-1]) > 0 and r[-1] == "alive" for r in rows)


def test_crashed_broker_is_listed_as_expired(cluster: Cluster) -> None:
    cluster.brokers[2].kill()
    wait_for(lambda: status(cluster)[2]["state"] == "expired", 30, "broker 2 expired")
    # The controller hands its partitions on; the row stays, marked expired.
    wait_for(
        lambda: (s := status(cluster)) and s[2]["partitions"] == 0 and s[1]["partitions"] == 4,
        30,
        "partitions handed on",
    )
    s = status(cluster)[2]
    assert s["state"] == "expired" and s["alive"] is False
    assert isinstance(s["lease_ms_left"], int) and s["lease_ms_left"] < 0
    out = ok("cluster", "status", "--metadata", cluster.url)
    (row,) = [line for line in out.splitlines() if line.startswith("2 ")]
    assert "expired" in row and "ago" in row
    result = shoal("partitions", "move", "cli-topic", "0", "--to", "2", "--metadata", cluster.url)
    assert result.exit_code == 1 and "broker 2 is not alive" in result.output


def test_sqlite_is_not_cluster_mode(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    url = f"sqlite:///{db}"
    out = ok("cluster", "status", "--metadata", url)
    assert out.startswith("not in cluster mode")
    assert json.loads(ok("cluster", "status", "--metadata", url, "--format", "json")) == {
        "cluster_mode": False
    }
    for args in (("cluster", "drain", "0"), ("cluster", "undrain", "0")):
        result = shoal(*args, "--metadata", url)
        assert result.exit_code == 1 and "not in cluster mode" in result.output
    assert not db.exists()


def test_unreachable_postgres_is_one_line() -> None:
    url = f"postgresql://shoal:pw@127.0.0.1:{free_port()}/shoal"
    for args in (
        ("cluster", "status"),
        ("cluster", "drain", "1"),
        ("cluster", "undrain", "1"),
        ("partitions", "move", "t", "0", "--to", "1"),
    ):
        result = shoal(*args, "--metadata", url)
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1, result.output
        assert "cannot open metadata store" in result.output
        assert "Traceback" not in result.output
