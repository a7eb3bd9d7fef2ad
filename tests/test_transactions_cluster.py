"""Cluster mode on PostgreSQL: a transaction across partitions owned by two
brokers commits and aborts whole; the coordinator's broker asks the other
for its markers through the metadata store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from cluster_harness import Cluster, wait_for
from test_transactions import consume_all, txn_producer
from wire import RawClient, create_topic


def coordinator(cluster: Cluster, key: str, key_type: int) -> int:
    from kio.schema.find_coordinator.v3.request import FindCoordinatorRequest

    with RawClient(cluster.brokers[1].bootstrap) as c:
        return int(c.call(10, 3, FindCoordinatorRequest(key=key, key_type=key_type)).node_id)


pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal cluster mode"
)


def test_transaction_across_brokers(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, size=2).start()
    try:
        assert int(create_topic(cluster.brokers[1].bootstrap, "t", partitions=4)) == 0
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})

        def leaders() -> set[int]:
            meta = admin.list_topics("t", timeout=10).topics["t"].partitions
            return {p.leader for p in meta.values()} if len(meta) == 4 else set()

        wait_for(lambda: leaders() == {1, 2}, 20, "partitions on both brokers")
        p = txn_producer(cluster.bootstrap, "tx-cluster")
        p.begin_transaction()
        for i in range(8):
            p.produce("t", value=f"a{i}".encode(), partition=i % 4)
        p.flush(30)
        p.abort_transaction(30)
        p.begin_transaction()
        for i in range(8):
            p.produce("t", value=f"c{i}".encode(), partition=i % 4)
        p.commit_transaction(30)
        committed = consume_all(cluster.bootstrap, "t", 4, "read_committed", 8)
        assert sorted(committed) == sorted(f"c{i}".encode() for i in range(8))
        everything = consume_all(cluster.bootstrap, "t", 4, "read_uncommitted", 16)
        assert len(everything) == 16
        logs = "".join(b.log() for b in cluster.brokers.values())
        assert "marker for producer" in logs
        # offsets sent to the transaction, with the group coordinated by the
        # other broker: visible there once committed, not before
        group = next(
            g
            for g in (f"g{i}" for i in range(50))
            if coordinator(cluster, g, 0) != (coordinator(cluster, "tx-cluster", 1))
        )
        c = Consumer(
            {
                "bootstrap.servers": cluster.bootstrap,
                "group.id": group,
                "isolation.level": "read_committed",
            }
        )
        try:
            p.begin_transaction()
            p.produce("t", value=b"o", partition=0)
            tps = [TopicPartition("t", 0, 5), TopicPartition("t", 3, 9)]
            p.send_offsets_to_transaction(tps, c.consumer_group_metadata(), 30)
            p.commit_transaction(30)
            got = c.committed([TopicPartition("t", 0), TopicPartition("t", 3)], timeout=20)
            assert [t.offset for t in got] == [5, 9]
        finally:
            c.close()
        # the coordinator's broker killed -9 mid-transaction: the survivor
        # takes the id and the dead broker's partitions, and the commit
        # completes there, whole
        p.begin_transaction()
        for i in range(8):
            p.produce("t", value=f"k{i}".encode(), partition=i % 4)
        p.flush(30)
        cluster.brokers[coordinator(cluster, "tx-cluster", 1)].kill()
        p.commit_transaction(90)
        after = consume_all(cluster.bootstrap, "t", 4, "read_committed", 17)
        assert sorted(after) == sorted(
            [f"c{i}".encode() for i in range(8)] + [b"o"] + [f"k{i}".encode() for i in range(8)]
        )
    finally:
        cluster.stop()
