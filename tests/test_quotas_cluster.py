"""Cluster mode: client quotas live in PostgreSQL; a change made through one
broker applies on another within about a second (quota.refresh.interval.ms),
which then throttles the client."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cluster_harness import Cluster, wait_for
from test_quotas import Admin
from test_quotas_throttle import call
from wire import RawClient, create_topic, make_batch, produce_request, record

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal cluster mode"
)


def test_quota_set_through_one_broker_throttles_on_another(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, size=2).start()
    try:
        one, two = cluster.brokers[1].bootstrap, cluster.brokers[2].bootstrap
        a1, a2 = Admin(one), Admin(two)
        start = time.monotonic()
        assert a1.alter(({"client-id": "site-9"}, {"producer_byte_rate": 1000.0})) == [(0, None)]
        wait_for(lambda: "client-id=site-9" in a2.all(), 5, "quota on 2")
        assert time.monotonic() - start < 1.5
        # broker 2 enforces it: a 20 KB produce against 1000 B/s is throttled
        # (whatever the answer's error: broker 2 may not own the partition)
        assert create_topic(one, "t") == 0
        batch = make_batch([record(None, b"v" * 1000, i) for i in range(20)])

        def throttled() -> bool:
            # DescribeClientQuotas reads the store; broker 2 applies the quota
            # at its next reload (quota.refresh.interval.ms)
            with RawClient(two) as raw:
                resp = call(raw, 0, 9, produce_request("t", batch), "site-9")
            return bool(resp.throttle_time.total_seconds() > 1)

        wait_for(throttled, 5, "broker 2 to throttle site-9")
        # removed through broker 2: gone on broker 1
        assert a2.alter(({"client-id": "site-9"}, {"producer_byte_rate": None})) == [(0, None)]
        wait_for(lambda: a1.all() == {}, 5, "removal on 1")
        a1.client.close()
        a2.client.close()
    finally:
        cluster.stop()
