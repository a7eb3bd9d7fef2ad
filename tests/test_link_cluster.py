"""A migration link into a Shoal cluster (PostgreSQL metadata): each mirror
partition is copied by its owner, and when that broker is killed the new owner
continues from the committed end, nothing doubled or lost. The same holds for
the reverse link after promotion, which copies back to the source."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from cluster_harness import Cluster, wait_for
from harness import BrokerProcess
from test_link import create_topic, ends, name, produce, raw_batches, values

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal cluster mode"
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster", size=2).start()
    try:
        yield c
    finally:
        c.stop()


def test_owner_killed_new_owner_continues(tmp_path: Path, cluster: Cluster) -> None:
    from click.testing import CliRunner

    from shoal.link.cli import link

    src = BrokerProcess(tmp_path / "src").start()
    try:
        topic = name("fleet")
        create_topic(src.bootstrap, topic, 4)
        produce(src.bootstrap, topic, 400, 4)
        r = CliRunner().invoke(
            link,
            [
                "create",
                name("L"),
                "--source",
                src.bootstrap,
                "--topics",
                topic,
                "--metadata",
                cluster.url,
            ],
        )
        assert r.exit_code == 0, r.output
        first = ends(src.bootstrap, topic, 4)
        wait_for(lambda: ends(cluster.bootstrap, topic, 4) == first, 30, "the mirror")
        md = AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics(topic, timeout=10)
        owners = {p.leader for p in md.topics[topic].partitions.values()}
        victim = cluster.brokers[md.topics[topic].partitions[0].leader]
        victim.kill()
        produce(src.bootstrap, topic, 400, 4, start=400)
        final = ends(src.bootstrap, topic, 4)
        wait_for(lambda: ends(cluster.bootstrap, topic, 4) == final, 40, "the new owner")
        [survivor] = [b for b in cluster.brokers.values() if b is not victim]
        for p, (lo, hi) in enumerate(final):  # type: ignore[arg-type]
            assert raw_batches(survivor.bootstrap, topic, p, lo, hi) == raw_batches(
                src.bootstrap, topic, p, lo, hi
            )
        assert len(owners) == 2  # both brokers had mirror partitions to copy
    finally:
        src.kill()


def test_reverse_link_owner_killed_new_owner_continues(tmp_path: Path, cluster: Cluster) -> None:
    from click.testing import CliRunner

    from shoal.link.cli import link

    def cli(*args: str) -> None:
        r = CliRunner().invoke(link, [*args, "--metadata", cluster.url])
        assert r.exit_code == 0, r.output

    src = BrokerProcess(tmp_path / "src").start()
    try:
        topic = name("fleet")
        create_topic(src.bootstrap, topic, 4)
        produce(src.bootstrap, topic, 200, 4)
        cli("create", name("L"), "--source", src.bootstrap, "--topics", topic)
        first = ends(src.bootstrap, topic, 4)
        wait_for(lambda: ends(cluster.bootstrap, topic, 4) == first, 30, "the mirror")
        cli("promote", topic, "--reverse", "--timeout", "20")
        produce(cluster.bootstrap, topic, 200, 4, start=200)
        md = AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics(topic, timeout=10)
        owners = {p.leader for p in md.topics[topic].partitions.values()}
        cluster.brokers[md.topics[topic].partitions[0].leader].kill()
        produce(cluster.bootstrap, topic, 200, 4, start=400)
        final = ends(cluster.bootstrap, topic, 4)
        assert final == [(0, 150)] * 4
        wait_for(lambda: ends(src.bootstrap, topic, 4) == final, 40, "the copy back")
        seen = []
        for p in range(4):
            here = values(cluster.bootstrap, topic, p, 0, 150)
            assert values(src.bootstrap, topic, p, 0, 150) == here  # same offsets there
            seen += [v for _o, v in here]
        assert sorted(seen) == sorted(b"v%d" % i for i in range(600))  # once each
        assert len(owners) == 2  # both brokers copied partitions back
    finally:
        src.kill()
