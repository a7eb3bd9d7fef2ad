"""`shoal bench replay` checks itself for consistency against a real broker.

Short runs (a few seconds, 5-20 sites): nothing asserts speed, only that the
numbers add up: every record arrived exactly once, lag peaks near the outage
length, catch-up is measured, percentiles are ordered, JSON round-trips.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import BrokerProcess
from shoal.tools import replay as r
from shoal.tools.bench import LatencyStats
from shoal.tools.bench_cli import bench


def assert_ordered(s: LatencyStats) -> None:
    assert s.min_ms <= s.p50_ms <= s.p95_ms <= s.p99_ms <= s.p999_ms <= s.max_ms


def assert_consistent(res: r.ReplayResult, offline_s: float) -> None:
    assert res.produce_errors == 0 and res.backlog_left == 0
    assert res.produced == res.acked == res.received_unique == res.received
    assert res.duplicates == 0 and res.lost == 0 and res.gaps == 0
    assert res.unacked_received == 0
    assert res.consistent()
    assert res.backlog_records > 0
    assert sum(p.records for p in res.lag) == res.received
    assert res.caught_up and res.catchup_s is not None and res.catchup_s >= 0
    # The oldest buffered record waits the whole outage: lag peaks near its length.
    assert offline_s * 1000 * 0.8 <= res.peak_lag_ms <= (offline_s + 10) * 1000
    assert res.outage_at_s < res.reconnect_at_s <= res.last_reconnect_at_s < res.end_at_s
    for s in (
        res.e2e_latency,
        res.produce_latency_before,
        res.produce_latency_burst,
        res.produce_latency_after,
        res.replay_produce_latency,
    ):
        assert_ordered(s)
    assert res.produce_latency_before.count > 0
    assert res.replay_produce_latency.count == res.backlog_records
    assert res.baseline_lag_p99_ms > 0 and res.catchup_threshold_ms >= res.baseline_lag_p99_ms


def test_replay_cli_all_at_once(broker: BrokerProcess, tmp_path: Path) -> None:
    out = tmp_path / "replay.json"
    chart = tmp_path / "replay.png"
    args = ["replay", "--bootstrap", broker.bootstrap, "--sites", "20", "--rate", "20"]
    args += ["--offline", "2", "--before", "1.5", "--after", "2", "--partitions", "3"]
    args += ["--json", str(out), "--chart", str(chart), "--quiet"]
    res = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "catch-up time" in res.output and "peak consumer lag" in res.output
    data = json.loads(out.read_text())
    result = r.ReplayResult.from_dict(data)
    assert json.loads(result.to_json()) == data
    assert r.ReplayResult.from_dict(json.loads(result.to_json())) == result
    assert_consistent(result, 2.0)
    assert result.spec["actual_partitions"] == 3
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_replay_jitter_and_replay_rate(broker: BrokerProcess, topic_name: str) -> None:
    spec = r.ReplaySpec(
        bootstrap=broker.bootstrap,
        topic=topic_name,
        sites=5,
        rate=20,
        offline_s=2.0,
        before_s=1.5,
        after_s=2.0,
        reconnect="jitter",
        jitter_s=1.0,
        replay_rate=40.0,  # 40 records/s of backlog: 2 s of buffering takes ~1 s
        partitions=2,
    )
    res = r.run_replay(spec)
    assert_consistent(res, 2.0)
    assert res.last_reconnect_at_s > res.reconnect_at_s
    # Rate-limited replay cannot catch up faster than backlog / replay rate.
    per_site = res.backlog_records / spec.sites
    assert res.catchup_s is not None and res.catchup_s >= per_site / 40.0 * 0.8


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--sites", "0"], "--sites"),
        (["--offline", "-1"], "--offline"),
        (["--rate", "0"], "--rate"),
        (["--record-size", "8"], "--record-size"),
        (["--reconnect", "later"], "--reconnect"),
        (["--replay-rate", "-5"], "--replay-rate"),
        (["-X", "novalue"], "-X"),
        (["--chart", "lag.svg"], "--chart"),
    ],
)
def test_replay_bad_input_names_the_option(args: list[str], option: str) -> None:
    res = CliRunner().invoke(bench, ["replay", "--bootstrap", "127.0.0.1:1", *args])
    assert res.exit_code == 2
    assert option in res.output


def test_replay_unreachable_cluster_is_a_clean_error() -> None:
    from harness import free_port

    args = ["replay", "--bootstrap", f"127.0.0.1:{free_port()}", "--sites", "2", "--quiet"]
    args += ["-X", "socket.connection.setup.timeout.ms=1000"]
    res = CliRunner().invoke(bench, args)
    assert res.exit_code == 1
    assert "Error:" in res.output
