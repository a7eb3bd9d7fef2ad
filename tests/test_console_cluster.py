"""The console on one broker of a cluster reads partitions another broker
owns without taking them: opening a stream for its offsets would bump the
stream's epoch and fence its owner (the producers' next commit fails). Its
transactions page lists the transactional ids every broker coordinates."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from cluster_harness import Cluster, wait_for
from harness import free_port
from security_helpers import PASSWORD, store_users


def test_console_reads_partitions_of_other_brokers_without_taking_them(tmp_path: Path) -> None:
    port = free_port()
    cluster = Cluster(tmp_path, size=2)
    cluster.brokers[1].env["SHOAL_CONSOLE_LISTEN"] = f"127.0.0.1:{port}"
    cluster.start()
    try:
        store_users(cluster.url, ("admin",))
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        admin.create_topics([NewTopic("t", 4, 1)])["t"].result(30)
        p = Producer({"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True})

        def produce(n: int) -> list[Any]:
            errors: list[Any] = []
            for i in range(n):
                p.produce(
                    "t", key=str(i).encode(), on_delivery=lambda e, _m: e and errors.append(e)
                )
            p.flush(30)
            return errors

        token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()

        def api(path: str) -> dict[str, Any]:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/{path}",
                headers={"Authorization": f"Basic {token}"},
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                doc: dict[str, Any] = json.loads(r.read())
                return doc

        def topic() -> dict[str, Any]:
            return api("topics/t")

        assert produce(200) == []
        t = wait_for(
            lambda: (t := topic()) and sum(x["end_offset"] for x in t["partitions"]) == 200 and t,
            30,
            "the console to see 200 records",
        )
        assert {x["owner"] for x in t["partitions"]} == {1, 2}, "both brokers own partitions"
        epochs = [x["leader_epoch"] for x in t["partitions"]]
        assert produce(200) == [], "the owners were fenced"
        t = topic()
        assert sum(x["end_offset"] for x in t["partitions"]) == 400
        assert [x["leader_epoch"] for x in t["partitions"]] == epochs
        assert "Fenced" not in cluster.brokers[1].log()
        # transactional ids until both brokers coordinate one (the ids hash
        # to brokers the same way every run); the console lists them all
        made: dict[str, int] = {}
        for i in range(16):
            tid = f"tx-{i}"
            txn = Producer({"bootstrap.servers": cluster.bootstrap, "transactional.id": tid})
            txn.init_transactions(30)
            rows = api(f"transactions?id={tid}")["transactions"]
            assert [r["transactional_id"] for r in rows] == [tid]
            made[tid] = rows[0]["coordinator"]
            if set(made.values()) == {1, 2}:
                break
        listed = {
            r["transactional_id"]: r["coordinator"] for r in api("transactions")["transactions"]
        }
        assert listed == made and set(made.values()) == {1, 2}, made
    finally:
        cluster.stop()
