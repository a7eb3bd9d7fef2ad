"""Network partitions in cluster mode: brokers in network namespaces on a
private bridge (tests/netns.py), links cut under load. Every case ends with
the exactly-once check over all acknowledged records. The longer schedules
(object-store cuts, asymmetric and flapping links, broker-to-broker) are in
bench/partition_bench.py."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_harness import wait_for
from netns import NetCluster, unavailable
from test_cluster_failover import Load, agreed, check_exactly_once, consume_all, create_topic, view

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal cluster mode"
)


@pytest.fixture
def netcluster(tmp_path: Path) -> Iterator[NetCluster]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    c = NetCluster(tmp_path)
    try:
        c.start()
        yield c
    finally:
        c.close()


def test_broker_cut_from_postgres_not_clients(netcluster: NetCluster) -> None:
    """Broker 2 loses PostgreSQL (both directions, silently) but keeps its
    clients: it stops acknowledging within its lease, its partitions are
    served by the others, and when the link heals it rejoins."""
    c = netcluster
    create_topic(c, "cut-pg")
    owners = wait_for(lambda: agreed(c, "cut-pg", {1, 2, 3}), 30, "agreement")
    load = Load(c.bootstrap, "cut-pg").start()
    wait_for(lambda: len(load.acked) > 1000, 30, "initial load")
    moved = [p for p, o in owners.items() if o == 2]
    c.net.partition("b2", "pg")
    cut = time.monotonic()
    others = c.brokers[1].bootstrap
    wait_for(
        lambda: all(view(others, "cut-pg")[1][p] != 2 for p in moved),
        30,
        "the cut-off broker's partitions to move",
    )
    wait_for(
        lambda: all(any(t > cut for t in load.ack_times.get(p, [])) for p in moved),
        30,
        "the moved partitions to take writes again",
    )
    c.net.heal_all()
    wait_for(lambda: agreed(c, "cut-pg", {1, 2, 3}), 60, "broker 2 back after the heal")
    load.stop()
    assert not load.errors, load.errors[:5]
    check_exactly_once(load, consume_all(c.bootstrap, "cut-pg", len(load.acked)))
