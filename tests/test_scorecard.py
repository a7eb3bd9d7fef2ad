"""`shoal scorecard` against a Shoal broker: every check passes, the optional
transactions check included (issue 11)."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner

from harness import BrokerProcess, free_port
from shoal.cli import cli
from shoal.tools import scorecard as sc
from shoal.tools.kafka_proxy import KafkaProxy


def test_scorecard_all_pass_on_shoal(broker: BrokerProcess) -> None:
    t0 = time.monotonic()
    res = CliRunner().invoke(
        cli, ["scorecard", "--bootstrap", broker.bootstrap, "--format", "json"]
    )
    elapsed = time.monotonic() - t0
    data = json.loads(res.output)
    failed = [r for r in data["results"] if r["status"] != "pass" and r["mandatory"]]
    assert res.exit_code == 0, failed
    assert data["passed"] is True
    card = sc.Scorecard.from_dict(data)
    assert card.to_dict() == data
    assert [r.id for r in card.results] == sc.check_ids()
    tx = card.get("transactions")
    assert tx.status == "pass" and not tx.mandatory, tx.evidence
    assert "read_committed saw the 7 committed records only" in tx.evidence
    for r in card.results:
        assert r.evidence and r.seconds >= 0
        if r.id.startswith("security."):  # no security options: skipped
            assert r.status == "skip" and "not run: needs --" in r.evidence, r
        else:
            assert r.status == "pass", (r.id, r.evidence)
    assert "0 duplicates" in card.get("idempotence.retries").evidence
    assert elapsed < 60


def test_scorecard_table_and_subset(broker: BrokerProcess) -> None:
    args = ["scorecard", "--bootstrap", broker.bootstrap, "--check", "produce.headers"]
    res = CliRunner().invoke(cli, [*args, "--check", "list_offsets"])
    assert res.exit_code == 0, res.output
    assert "produce.headers" in res.output and "list_offsets" in res.output
    assert "groups.classic" not in res.output


def test_scorecard_unreachable_fails_fast() -> None:
    port = free_port()
    args = ["scorecard", "--bootstrap", f"127.0.0.1:{port}", "--timeout", "3", "--format", "json"]
    t0 = time.monotonic()
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    data = json.loads(res.output)
    assert data["passed"] is False
    assert all(r["status"] == "fail" for r in data["results"])
    assert time.monotonic() - t0 < 15


def test_scorecard_bad_input_names_the_option() -> None:
    res = CliRunner().invoke(cli, ["scorecard", "--check", "nope"])
    assert res.exit_code == 2 and "--check" in res.output
    res = CliRunner().invoke(cli, ["scorecard", "--timeout", "0"])
    assert res.exit_code == 2 and "--timeout" in res.output


def test_proxy_routes_every_connection_and_cuts(broker: BrokerProcess, topic_name: str) -> None:
    from confluent_kafka import Producer

    from shoal.tools.bench import ensure_topic

    ensure_topic(broker.bootstrap, topic_name, 1)
    with KafkaProxy(broker.bootstrap) as px:
        p = Producer({"bootstrap.servers": px.address, "log_level": 0})
        p.produce(topic_name, b"before")
        assert p.flush(10) == 0
        assert px.rewrites >= 1  # Metadata pointed the client at the proxy
        assert px.cut() >= 1  # the producer's broker connection ran through it
        p.produce(topic_name, b"after")
        assert p.flush(10) == 0
        assert px.connections >= 2
