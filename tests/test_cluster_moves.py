"""Cluster mode: partition moves while producing, adding a broker and
draining one, `shoal cluster status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_harness import Cluster, wait_for
from test_cluster_failover import (
    Load,
    agreed,
    check_exactly_once,
    consume_all,
    create_topic,
    view,
)

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal cluster mode"
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path).start()
    try:
        yield c
    finally:
        c.stop()


def shoal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=90
    )


def test_move_while_producing(cluster: Cluster) -> None:
    create_topic(cluster, "moving")
    owners = wait_for(lambda: agreed(cluster, "moving", {1, 2, 3}), 20, "agreement")
    load = Load(cluster.bootstrap, "moving").start()
    wait_for(lambda: len(load.acked) > 3000, 60, "data in the partition")
    p = 0
    target = 1 if owners[p] != 1 else 2
    out = shoal(
        "partitions", "move", "moving", str(p), "--to", str(target), "--metadata", cluster.url
    )
    assert out.returncode == 0, out.stderr
    print(out.stdout.strip())
    wait_for(lambda: view(cluster.bootstrap.split(",")[0], "moving")[1][p] == target, 10, "move")
    moved_at = time.monotonic()
    wait_for(
        lambda: any(t > moved_at for t in load.ack_times.get(p, [])), 20, "writes on the new owner"
    )
    load.stop()
    assert not load.errors, load.errors[:5]
    check_exactly_once(load, consume_all(cluster.bootstrap, "moving", len(load.acked)))


def test_add_broker_and_drain(cluster: Cluster) -> None:
    create_topic(cluster, "grow")
    wait_for(lambda: agreed(cluster, "grow", {1, 2, 3}), 20, "agreement")
    load = Load(cluster.bootstrap, "grow").start()
    wait_for(lambda: len(load.acked) > 1000, 60, "initial load")
    cluster.add(4)
    wait_for(lambda: agreed(cluster, "grow", {1, 2, 3, 4}), 20, "the fourth broker listed")
    out = shoal("cluster", "drain", "2", "--metadata", cluster.url, "--timeout", "30")
    assert out.returncode == 0, out.stderr
    owners = wait_for(
        lambda: (o := agreed(cluster, "grow", {1, 2, 3, 4})) and 2 not in o.values() and o,
        20,
        "broker 2 to own nothing",
    )
    print("owners after drain:", owners)
    status = shoal("cluster", "status", "--metadata", cluster.url, "--format", "json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    by_node = {b["node_id"]: b for b in data["brokers"]}
    assert by_node[2]["draining"] and by_node[2]["partitions"] == 0
    assert sum(b["partitions"] for b in data["brokers"]) == 6
    assert data["controller"] in by_node
    print(shoal("cluster", "status", "--metadata", cluster.url).stdout)
    cluster.brokers[2].stop()
    time.sleep(1)
    load.stop()
    assert not load.errors, load.errors[:5]
    check_exactly_once(load, consume_all(cluster.bootstrap, "grow", len(load.acked)))


def test_kafka_admin_reassignment(cluster: Cluster) -> None:
    """AlterPartitionReassignments from a stock admin client moves the partition;
    ListPartitionReassignments shows only moves not yet carried out."""
    from kafka import TopicPartition as KTP
    from kafka.admin import KafkaAdminClient

    create_topic(cluster, "admin-move")
    owners = wait_for(lambda: agreed(cluster, "admin-move", {1, 2, 3}), 20, "agreement")
    target = 1 if owners[0] != 1 else 2
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap.split(","))
    try:
        result = admin.alter_partition_reassignments({KTP("admin-move", 0): [target]})
        assert result.get(KTP("admin-move", 0)) is None, result
        wait_for(
            lambda: view(cluster.bootstrap.split(",")[0], "admin-move")[1][0] == target, 15, "move"
        )
        wait_for(lambda: not admin.list_partition_reassignments(), 15, "reassignment done")
        # Two replicas make no sense when the data is in the object store.
        bad = admin.alter_partition_reassignments({KTP("admin-move", 0): [1, 2]})
        assert bad.get(KTP("admin-move", 0)) is not None
    finally:
        admin.close()


def test_zone_aware_fetch_names_a_broker_in_the_consumers_rack(tmp_path: Path) -> None:
    """A Fetch with rack_id to the owner is answered with preferred_read_replica
    = a live broker in that rack (KIP-392): every broker can read every stream."""
    from wire import RawClient, fetch_request

    c = Cluster(tmp_path, racks=["az-a", "az-b", "az-c"]).start()
    try:
        create_topic(c, "zoned")

        def owner_answers() -> tuple[int, int, bytes, Any] | None:
            """The owner's answer to a fetch from another broker's rack, once
            the broker Metadata names as owner has taken the partition (on
            a busy machine Metadata can name it a moment before it has)."""
            owners = agreed(c, "zoned", {1, 2, 3})
            if owners is None:
                return None
            owner = owners[0]
            other = next(n for n in (1, 2, 3) if n != owner)
            body = fetch_request("zoned", {0: 0}, rack_id=["az-a", "az-b", "az-c"][other - 1])
            with RawClient(c.brokers[owner].bootstrap) as raw:
                part = raw.call(1, 12, body).responses[0].partitions[0]
            return (owner, other, body, part) if part.error_code == 0 else None

        _owner, other, body, part = wait_for(owner_answers, 20, "the owner to answer")
        assert part.preferred_read_replica == other
        # That broker serves the consumer of its own rack.
        with RawClient(c.brokers[other].bootstrap) as raw:
            part = raw.call(1, 12, body).responses[0].partitions[0]
        assert part.error_code == 0
    finally:
        c.stop()


def test_new_broker_takes_its_share_under_load(tmp_path: Path) -> None:
    """With the balancer on, a fourth broker added under load gets partitions
    within a minute; nothing acknowledged is lost or doubled meanwhile."""
    c = Cluster(
        tmp_path,
        env={
            "SHOAL_BALANCER_ENABLE": "true",
            "SHOAL_BALANCER_INTERVAL_MS": "1000",
            "SHOAL_BALANCER_COOLDOWN_MS": "2000",
            "SHOAL_BALANCER_MAX_MOVES": "1",
        },
    ).start()
    try:
        create_topic(c, "share")
        wait_for(lambda: agreed(c, "share", {1, 2, 3}), 20, "agreement")
        load = Load(c.bootstrap, "share").start()
        wait_for(lambda: len(load.acked) > 1000, 60, "initial load")
        c.add(4)
        owners = wait_for(
            lambda: (o := agreed(c, "share", {1, 2, 3, 4})) and 4 in o.values() and o,
            60,
            "the fourth broker to own a partition",
        )
        print("owners with four brokers:", owners)
        time.sleep(1)
        load.stop()
        assert not load.errors, load.errors[:5]
        check_exactly_once(load, consume_all(c.bootstrap, "share", len(load.acked)))
    finally:
        c.stop()
