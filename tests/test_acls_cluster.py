"""Cluster mode: ACLs live in PostgreSQL; a change made through one broker
takes effect on every other within about a second (acl.refresh.interval.ms)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from kio.schema.errors import ErrorCode

from acl_helpers import ALL, ALLOW, ANON, DENY, LITERAL, TOPIC, WRITE, allow, delete_acls
from cluster_harness import Cluster, wait_for
from wire import create_topic, make_batch, produce, record

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal cluster mode"
)

OPEN = {"SHOAL_AUTHORIZER_CLASS_NAME": "shoal", "SHOAL_ALLOW_EVERYONE_IF_NO_ACL_FOUND": "true"}


def test_acl_change_through_one_broker_applies_on_another(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, size=2, env=OPEN).start()
    try:
        one, two = cluster.brokers[1].bootstrap, cluster.brokers[2].bootstrap
        assert create_topic(one, "t") == ErrorCode.none
        batch = make_batch([record(None, b"v", 0)])

        def code_on_two() -> ErrorCode:
            return ErrorCode(produce(two, "t", batch).error_code)

        # Broker 2 knows the topic, and does not refuse the write yet (it may
        # not own the partition: authorization is checked first).
        wait_for(lambda: code_on_two() != ErrorCode.unknown_topic_or_partition, 10, "topic on 2")
        assert code_on_two() != ErrorCode.topic_authorization_failed
        allow(one, (TOPIC, "t", LITERAL, ANON, "*", ALL, ALLOW))
        allow(one, (TOPIC, "t", LITERAL, ANON, "*", WRITE, DENY))
        start = time.monotonic()
        wait_for(lambda: code_on_two() == ErrorCode.topic_authorization_failed, 5, "deny on 2")
        denied_after = time.monotonic() - start
        # And back: deleted through broker 2, broker 1 lets writes through again.
        delete_acls(two, (TOPIC, "t", LITERAL, ANON, "*", WRITE, DENY))
        start = time.monotonic()
        wait_for(
            lambda: (
                ErrorCode(produce(one, "t", batch).error_code)
                != ErrorCode.topic_authorization_failed
            ),
            5,
            "allow on 1",
        )
        allowed_after = time.monotonic() - start
        assert denied_after < 1.5, denied_after
        assert allowed_after < 1.5, allowed_after
    finally:
        cluster.stop()
