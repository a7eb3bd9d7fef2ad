"""The consumer group protocol (KIP-848) in cluster mode: two brokers on one
embedded PostgreSQL and one moto S3 bucket. The broker coordinating a group
of consumer-protocol members is killed -9 under continuous produce; the group
moves to the other broker, which loads its members, epochs, assignments and
committed offsets from PostgreSQL; the members go on there at their epochs,
from their commits: no acknowledged record is lost, none is consumed twice,
and no partition is ever owned by two members at once.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from kio.schema.consumer_group_describe.v1 import request as cgd
from kio.schema.find_coordinator.v3.request import FindCoordinatorRequest
from kio.schema.offset_fetch.v9 import request as of

from cluster_harness import Cluster, wait_for
from shoal.protocol.errors import ErrorCode
from test_groups_confluent import Worker, all_values
from test_groups_kip848 import ENV, Member, ownership, shared
from wire import RawClient, create_topic

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal cluster mode"
)

PARTITIONS = 4
TIMEOUT = 60.0


class Load:
    """Values produced without pause until stopped; `acked` holds those the
    cluster acknowledged (the producer retries through the failover)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.timeout.ms": 60_000}
        )
        self.topic = topic
        self.acked: set[tuple[int, int]] = set()  # (partition, offset)
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _done(self, err: object, msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))
        else:
            self.acked.add((msg.partition(), msg.offset()))

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(0.02):
            for p in range(PARTITIONS):
                self.producer.produce(
                    self.topic, f"{p}-{n}".encode(), partition=p, on_delivery=self._done
                )
            n += 1
            self.producer.poll(0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        assert self.producer.flush(TIMEOUT) == 0
        assert not self.failed, f"{len(self.failed)} records failed"


def consumed(members: list[Worker]) -> set[tuple[int, int]]:
    """(partition, offset) of the records the members consumed: printed after
    their commit, or whose commit failed. A commit that fails because its
    coordinator died before answering may be durable all the same (as in
    Kafka): then the next owner starts after it, and the record is never
    printed, but it was consumed."""
    return {
        (e["partition"], e["offset"])
        for m in members
        for e in m.events
        if e["event"] in ("msg", "commit_failed")
    }


def epochs(bootstrap: str, group: str) -> dict[str, int]:
    """Member id -> member epoch, from ConsumerGroupDescribe."""
    with RawClient(bootstrap) as c:
        request = cgd.ConsumerGroupDescribeRequest(
            group_ids=(group,), include_authorized_operations=False
        )
        described = c.call(69, 1, request).groups[0]
    assert described.error_code == ErrorCode.none
    return {m.member_id: m.member_epoch for m in described.members}


def coordinator(bootstrap: str, group: str) -> int:
    with RawClient(bootstrap) as c:
        r = c.call(10, 3, FindCoordinatorRequest(key=group, key_type=0))
    return int(r.node_id) if r.error_code == ErrorCode.none else -1


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, size=2, env=ENV).start()
    try:
        yield c
    finally:
        c.stop()


def test_coordinator_killed_under_consumer_protocol_members(
    cluster: Cluster, workers: list[Worker]
) -> None:
    topic = f"k848-{uuid.uuid4().hex[:8]}"
    assert int(create_topic(cluster.brokers[1].bootstrap, topic, partitions=PARTITIONS)) == 0
    group = f"kc-{uuid.uuid4().hex[:8]}"
    bootstrap = cluster.bootstrap
    victim = coordinator(cluster.brokers[1].bootstrap, group)
    survivor = next(n for n in cluster.brokers if n != victim)
    load = Load(bootstrap, topic)
    try:
        workers.extend(Member(bootstrap, group, topic) for _ in range(2))
        wait_for(lambda: shared(workers, PARTITIONS), TIMEOUT, "two members sharing the topic")
        wait_for(lambda: len(all_values(workers)) > 100, TIMEOUT, "records consumed")
        before_kill = epochs(cluster.brokers[victim].bootstrap, group)
        assert len(before_kill) == 2
        cluster.brokers[victim].kill()
        moved = cluster.brokers[survivor].bootstrap
        wait_for(lambda: coordinator(moved, group) == survivor, TIMEOUT, "the group to move")
        before = len(all_values(workers))
        wait_for(
            lambda: shared(workers, PARTITIONS) and len(all_values(workers)) > before + 100,
            TIMEOUT,
            "the members consuming again through the new coordinator",
        )
        # The same members at the same epochs: the group went on without a rebalance.
        assert epochs(moved, group) == before_kill
    finally:
        load.stop()
    wait_for(lambda: consumed(workers) >= load.acked, TIMEOUT, "every acknowledged record")
    for m in workers:
        m.stop()
    printed = [
        (e["partition"], e["offset"]) for m in workers for e in m.events if e["event"] == "msg"
    ]
    assert len(printed) == len(set(printed)), "a record consumed twice: a commit was lost"
    ownership(workers, PARTITIONS)
    # The commits made through the new coordinator reach the end of the log.
    with RawClient(moved) as c:
        r = c.call(9, 9, of.OffsetFetchRequest(
            groups=(of.OffsetFetchRequestGroup(
                group_id=group, member_id=None, member_epoch=-1, topics=None
            ),),
            require_stable=False,
        ))  # fmt: skip
    committed = {
        p.partition_index: p.committed_offset for t in r.groups[0].topics for p in t.partitions
    }
    assert committed == {p: 1 + max(o for q, o in load.acked if q == p) for p in range(PARTITIONS)}
