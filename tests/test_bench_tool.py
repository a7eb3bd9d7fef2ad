"""The load bench checks itself for internal consistency against a real broker.

Runs are 1-2 s; nothing here asserts how fast anything is, only that the numbers
add up: every record sent is delivered or counted as an error, a fresh topic is
read back completely, percentiles are ordered, and results survive JSON.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import BrokerProcess, free_port
from shoal.tools import bench as b
from shoal.tools.bench_cli import bench as bench_cli


def assert_ordered(s: b.LatencyStats) -> None:
    assert s.min_ms <= s.p50_ms <= s.p95_ms <= s.p99_ms <= s.p999_ms <= s.max_ms
    assert sum(count for _, _, count in s.histogram) == s.count


def assert_round_trips(result: b.BenchResult) -> None:
    again = b.BenchResult.from_dict(json.loads(result.to_json()))
    assert again == result
    assert again.to_dict() == result.to_dict()


def assert_produce_consistent(p: b.ProduceStats) -> None:
    assert p.sent == p.delivered + p.errors
    assert p.throughput.records == p.delivered
    assert sum(p.throughput.per_second_records) == p.delivered
    assert sum(p.throughput.per_second_bytes) == p.throughput.bytes
    assert p.latency.count == p.delivered
    assert_ordered(p.latency)


# ----------------------------------------------------------------- no broker needed


def test_percentile_is_exact_nearest_rank() -> None:
    values = list(range(1, 1001))
    assert b.percentile(values, 0.50) == 500
    assert b.percentile(values, 0.99) == 990
    assert b.percentile(values, 0.999) == 999
    assert b.percentile(values, 1.0) == 1000
    assert b.percentile([7], 0.999) == 7
    assert b.percentile([], 0.5) == 0


def test_latency_stats_from_samples() -> None:
    samples = [5_000_000, 1_000, 250_000, 3_000_000_000, 42]  # ns, unsorted
    s = b.LatencyStats.from_ns(samples)
    assert s.count == 5
    assert s.min_ms == pytest.approx(0.000042)
    assert s.max_ms == pytest.approx(3000.0)
    assert s.p50_ms == pytest.approx(0.25)
    assert_ordered(s)
    empty = b.LatencyStats.from_ns([])
    assert empty.count == 0 and empty.histogram == []
    assert b.LatencyStats.from_dict(json.loads(json.dumps(s.__dict__))) == s


def test_key_distributions() -> None:
    none = b._key_sequence(b.ProduceSpec("x:1", "t", key_dist="none"))
    assert none is None
    uniform = b._key_sequence(b.ProduceSpec("x:1", "t", key_dist="uniform", keys=10))
    zipf = b._key_sequence(b.ProduceSpec("x:1", "t", key_dist="zipf", keys=100))
    assert uniform is not None and zipf is not None
    assert set(uniform) == {b"key-%d" % i for i in range(10)}
    counts = Counter(zipf)
    assert counts.most_common(1)[0][0] == b"key-00"
    assert counts[b"key-00"] > counts[b"key-01"] > counts[b"key-09"]
    assert all(k.startswith(b"key-") and int(k[4:]) < 100 for k in counts)


def test_spec_rejects_bad_values() -> None:
    for kw in (
        {"acks": "5"},
        {"record_size": -1},
        {"rate": 0.0},
        {"compression": "brotli"},
        {"partitions": 0},
        {"duration_s": 0.0},
        {"key_dist": "pareto"},
    ):
        with pytest.raises(ValueError):
            b.ProduceSpec("x:1", "t", **kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        b.ConsumeSpec("x:1", "t", max_records=-1)


def test_unreachable_cluster_is_a_bench_error() -> None:
    with pytest.raises(b.BenchError, match="cannot reach"):
        b.ensure_topic(f"127.0.0.1:{free_port()}", "t", 1, timeout_s=2.0)


def test_chart_from_result_alone(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    lat = b.LatencyStats.from_ns([1_000_000 + 1_000 * i for i in range(1000)])
    tl = b._Timeline()
    tl.add(0, 600, 600_000)
    tl.add(1, 400, 400_000)
    tput = b.Throughput.of(1000, 1_000_000, 1_500_000_000, tl)
    produce = b.ProduceStats(1000, 1000, 0, {}, 0, 1000.0, 1000.0, tput, lat)
    consume = b.ConsumeStats(1000, 0, {}, 6, True, 0, tput)
    result = b.BenchResult(
        "e2e", "x:1", "t", "2024-01-01T00:00:00+00:00", {}, {}, produce, consume, lat
    )
    again = b.BenchResult.from_dict(json.loads(result.to_json()))
    out = tmp_path / "chart.png"
    b.write_chart(again, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------- against a broker


def test_produce_at_rate_is_consistent(broker: BrokerProcess, topic_name: str) -> None:
    spec = b.ProduceSpec(
        broker.bootstrap,
        topic_name,
        record_size=200,
        key_dist="uniform",
        keys=50,
        partitions=3,
        rate=2000.0,
        duration_s=1.5,
    )
    result = b.run_produce(spec, quiet=True)
    p = result.produce
    assert p is not None and result.kind == "produce"
    assert_produce_consistent(p)
    assert p.errors == 0, p.error_counts
    assert p.delivered > 0
    assert p.throughput.bytes == sum(200 + len(b"key-00") for _ in range(p.delivered))
    assert result.spec["actual_partitions"] == 3
    assert_round_trips(result)


def test_per_record_send_path_is_consistent(broker: BrokerProcess, topic_name: str) -> None:
    # Clients without produce_batch take this path; the counts must add up the same way.
    spec = b.ProduceSpec(
        broker.bootstrap,
        topic_name,
        record_size=300,
        key_dist="zipf",
        keys=7,
        partitions=2,
        rate=3000.0,
        duration_s=1.0,
    )
    b.ensure_topic(spec.bootstrap, spec.topic, spec.partitions)
    run = b._ProducerRun(spec, stamp=False, nonce=bytes(8), batch=False)
    try:
        run.warm_up()
        run.run(b._Progress(quiet=True), "produce")
        run.finish()
    finally:
        run.close()
    stats = run.stats()
    assert_produce_consistent(stats)
    assert stats.errors == 0, stats.error_counts
    assert stats.throughput.bytes == stats.delivered * (300 + len(b"key-0"))


def test_consume_reads_back_a_fresh_topic(broker: BrokerProcess, topic_name: str) -> None:
    spec = b.ProduceSpec(
        broker.bootstrap,
        topic_name,
        record_size=100,
        key_dist="zipf",
        keys=20,
        partitions=4,
        duration_s=1.0,
        compression="lz4",
    )
    produced = b.run_produce(spec, quiet=True)
    assert produced.produce is not None
    assert_produce_consistent(produced.produce)
    assert produced.produce.errors == 0, produced.produce.error_counts

    consumed = b.run_consume(
        b.ConsumeSpec(broker.bootstrap, topic_name, duration_s=60.0), quiet=True
    )
    c = consumed.consume
    assert c is not None and consumed.kind == "consume"
    assert c.end_reached
    assert c.errors == 0, c.error_counts
    assert c.partitions == 4
    assert c.consumed == produced.produce.delivered
    assert c.throughput.bytes == produced.produce.throughput.bytes
    assert sum(c.throughput.per_second_records) == c.consumed
    assert_round_trips(consumed)

    first = b.run_consume(b.ConsumeSpec(broker.bootstrap, topic_name, max_records=10), quiet=True)
    assert first.consume is not None and first.consume.consumed == 10


def test_e2e_receives_everything_it_sent(broker: BrokerProcess, topic_name: str) -> None:
    spec = b.ProduceSpec(
        broker.bootstrap,
        topic_name,
        record_size=64,
        partitions=2,
        rate=500.0,
        duration_s=1.5,
        acks="1",
    )
    result = b.run_e2e(spec, quiet=True, drain_timeout_s=30.0)
    p, c, e2e = result.produce, result.consume, result.e2e_latency
    assert p is not None and c is not None and e2e is not None
    assert_produce_consistent(p)
    assert p.errors == 0, p.error_counts
    assert c.consumed == p.delivered
    assert c.foreign == 0 and c.errors == 0
    assert e2e.count == c.consumed
    assert_ordered(e2e)
    assert_round_trips(result)


def test_cli_produce_then_consume(broker: BrokerProcess, topic_name: str, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "produce.json"
    res = runner.invoke(
        bench_cli,
        [
            "produce",
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            topic_name,
            "--record-size",
            "512",
            "--partitions",
            "2",
            "--rate",
            "1000",
            "--duration",
            "1",
            "--acks",
            "1",
            "--compression",
            "zstd",
            "--linger-ms",
            "1",
            "-X",
            "client.id=bench-test",
            "--json",
            str(out),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    produced = b.BenchResult.from_dict(json.loads(out.read_text()))
    assert produced.produce is not None
    assert_produce_consistent(produced.produce)
    assert produced.spec["extra"] == {"client.id": "bench-test"}
    assert produced.spec["compression"] == "zstd"

    out2 = tmp_path / "consume.json"
    res = runner.invoke(
        bench_cli,
        [
            "consume",
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            topic_name,
            "--json",
            str(out2),
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    consumed = b.BenchResult.from_dict(json.loads(out2.read_text()))
    assert consumed.consume is not None
    assert consumed.consume.consumed == produced.produce.delivered


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["produce", "--acks", "5"], "--acks"),
        (["produce", "--record-size", "-1"], "--record-size"),
        (["produce", "-X", "no-equals-sign"], "-X"),
        (["produce", "-X", "=value"], "-X"),
        (["produce", "--rate", "fast"], "--rate"),
        (["produce", "--rate", "-5"], "--rate"),
        (["produce", "--key-dist", "pareto"], "--key-dist"),
        (["produce", "--partitions", "0"], "--partitions"),
        (["produce", "--duration", "0"], "--duration"),
        (["produce", "--compression", "brotli"], "--compression"),
        (["produce", "--linger-ms", "-1"], "--linger-ms"),
        (["produce", "--chart", "out.svg"], "--chart"),
        (["consume"], "--topic"),
        (["consume", "--topic", "t", "--records", "0"], "--records"),
        (["e2e", "--rate", "unlimited"], "--rate"),
        (["e2e", "--record-size", "8"], "--record-size"),
        (["e2e", "--consumer-X", "oops"], "--consumer-X"),
        (["fleet", "--sites", "0"], "--sites"),
        (["fleet", "--rate-per-device", "0"], "--rate-per-device"),
        (["fleet", "--record-size", "8"], "--record-size"),
        (["fleet", "--broker-pid", "0"], "--broker-pid"),
    ],
)
def test_cli_rejects_bad_values(args: list[str], option: str) -> None:
    # No broker is contacted: every one of these fails while parsing.
    res = CliRunner().invoke(bench_cli, [*args, "--bootstrap", "127.0.0.1:1"])
    assert res.exit_code == 2, res.output
    assert option in res.output


def test_cli_fleet_runs_and_reports(broker: BrokerProcess, tmp_path: Path) -> None:
    """A small fleet against a real broker: every record sent is delivered and
    seen by the tailing consumer, and the broker's usage is read from /proc."""
    assert broker.proc is not None
    out = tmp_path / "fleet.json"
    args = ["fleet", "--bootstrap", broker.bootstrap, "--sites", "2", "--topics-per-site", "2"]
    args += ["--partitions", "2", "--devices-per-site", "5", "--rate-per-device", "10"]
    args += ["--duration", "1", "--producers", "2", "--broker-pid", str(broker.proc.pid)]
    res = CliRunner().invoke(bench_cli, [*args, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "end-to-end latency ms" in res.output
    result = json.loads(out.read_text())
    assert (result["topics"], result["partitions"]) == (4, 8)
    assert result["sent"] == result["delivered"] + result["errors"]
    assert result["errors"] == 0 and result["unanswered"] == 0 and result["sent"] > 0
    assert result["received"] == result["delivered"]
    assert result["duplicates"] == 0
    for kind in ("produce_latency", "e2e_latency"):
        stats = b.LatencyStats.from_dict(result[kind])
        assert stats.count == result["delivered"]
        assert_ordered(stats)
    assert result["broker"]["pid"] == broker.proc.pid
    assert result["broker"]["cpu_s"] > 0 and result["broker"]["rss_mb"] > 0


def test_cli_fleet_names_a_pid_it_cannot_read() -> None:
    pid = 2**22 + 1  # above Linux's pid_max: no such process
    res = CliRunner().invoke(
        bench_cli, ["fleet", "--bootstrap", "127.0.0.1:1", "--broker-pid", str(pid)]
    )
    assert res.exit_code == 1, res.output
    assert f"/proc/{pid}" in res.output
