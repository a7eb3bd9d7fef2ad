"""Network partitions and zone failure in cluster mode: brokers in network
namespaces on a private bridge (tests/netns.py), links cut under load; a
whole zone killed at once. Every case ends with the exactly-once check over
all acknowledged records, read back without a consumer group (a group
rebalance would re-read from the start and look like duplicates). The
longer schedules (object-store cuts, asymmetric and flapping links,
broker-to-broker, timings) are in bench/partition_bench.py."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from cluster_harness import Cluster, postgres, wait_for
from netns import NetCluster, unavailable
from test_cluster_failover import PARTITIONS, Load, agreed, check_exactly_once, create_topic, view

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


def read_back(
    bootstrap: str, topic: str, expected: int, rack: str | None = None
) -> list[tuple[int, int, bytes]]:
    """Every record of every partition from the start, by assignment (no
    group), then two quiet seconds to catch anything past the acknowledged
    ones; `rack` makes it a consumer in that zone (KIP-392 fetch from a
    replica in the client's rack)."""
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": "unused",
        "enable.auto.commit": False,
        "topic.metadata.refresh.interval.ms": 1000,
    }
    if rack is not None:
        conf["client.rack"] = rack
    consumer = Consumer(conf)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    got: list[tuple[int, int, bytes]] = []
    deadline = time.monotonic() + 60
    quiet_until: float | None = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                got.append((msg.partition(), msg.offset(), msg.value()))
            if len(got) >= expected and quiet_until is None:
                quiet_until = time.monotonic() + 2
            if quiet_until is not None and time.monotonic() > quiet_until:
                break
    finally:
        consumer.close()
    return got


def pg_activity(c: NetCluster) -> str:
    """PostgreSQL's sessions and ungranted locks for the cluster's database:
    what a failover that did not happen was waiting on (see RELIABILITY.md,
    "One stall not explained")."""
    from sqlalchemy import make_url

    db = make_url(c.url).database
    return postgres().psql(
        "select pid, client_addr, state, wait_event_type, wait_event, now() - xact_start, "
        f"left(query, 100) from pg_stat_activity where datname = '{db}'; "
        "select locktype, relation::regclass, mode, pid from pg_locks where not granted;"
    )


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
    try:
        wait_for(
            lambda: all(any(t > cut for t in load.ack_times.get(p, [])) for p in moved),
            30,
            "the moved partitions to take writes again",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{pg_activity(c)}") from None
    c.net.heal_all()
    wait_for(lambda: agreed(c, "cut-pg", {1, 2, 3}), 60, "broker 2 back after the heal")
    load.stop()
    assert not load.errors, load.errors[:5]
    check_exactly_once(load, read_back(c.bootstrap, "cut-pg", len(load.acked)))


def test_zone_failure_moves_partitions_and_reads_fall_back(tmp_path: Path) -> None:
    """Three brokers, two in zone a and one in zone b; both of zone a killed
    with SIGKILL at once under load: their partitions move to zone b, writes go on, and a
    consumer in zone a (whose preferred replicas are gone) reads every
    acknowledged record once from zone b. Timings: bench/partition_bench.py."""
    c = Cluster(tmp_path, size=3, racks=["a", "b"])
    try:
        c.start()
        create_topic(c, "zone")
        owners = wait_for(lambda: agreed(c, "zone", {1, 2, 3}), 30, "agreement")
        load = Load(c.bootstrap, "zone").start()
        wait_for(lambda: len(load.acked) > 1000, 30, "initial load")
        zone_a = [1, 3]  # racks are dealt round-robin: nodes 1 and 3 are in a
        moved = [p for p, o in owners.items() if o in zone_a]
        killed = time.monotonic()
        for n in zone_a:
            c.brokers[n].kill()
        zone_b = c.brokers[2].bootstrap
        wait_for(
            lambda: all(view(zone_b, "zone")[1][p] == 2 for p in moved),
            30,
            "zone a's partitions to move to zone b",
        )
        wait_for(
            lambda: all(any(t > killed for t in load.ack_times.get(p, [])) for p in moved),
            30,
            "the moved partitions to take writes again",
        )
        load.stop()
        assert not load.errors, load.errors[:5]
        check_exactly_once(load, read_back(zone_b, "zone", len(load.acked), rack="a"))
    finally:
        c.stop()
