"""The cost model against hand-computed numbers, its invariants, and `shoal cost` errors.

Every expected number below is worked out by hand in the comment above it from
the list prices (inter-AZ 0.01 $/GB each way, EBS gp3 0.08, S3 0.023 $/GB-month,
PUT 0.005 and GET 0.0004 $ per 1,000, m7g.xlarge 0.1632 $/h) and a 30-day month
of 2,592,000 s = 720 h, so a wrong formula or a wrong default price fails here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from shoal.tools.cost import (
    ARCHITECTURES,
    CATEGORIES,
    LINE_ITEMS,
    MONTH_S,
    SCENARIOS,
    PriceError,
    ProfileError,
    brokers_needed,
    cross_zone_copies,
    evaluate,
    load_prices,
    load_profile,
    rebuild_cross_zone_share,
    wal_objects_per_s,
)
from shoal.tools.cost_cli import cost

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "profiles" / "iot-fleet.toml"


def base(**sections: dict[str, Any]) -> dict[str, Any]:
    """10 MB/s in (100 sites x 100 devices x 1 msg/s x 1,000 B, no compression),
    one day of retention (864 GB), one consumer group, 3 zones, no cross-zone
    clients, no events. Tests switch on what they check."""
    profile: dict[str, Any] = {
        "workload": {
            "sites": 100,
            "devices_per_site": 100,
            "messages_per_device_per_s": 1.0,
            "message_bytes": 1000,
            "record_overhead_bytes": 0,
            "compression_ratio": 1.0,
            "retention_days": 1,
            "consumer_fanout": 1,
        },
        "outage": {"per_month": 0},
        "replay": {"per_month": 0},
        "failover": {"broker_losses_per_month": 0},
        "network": {"azs": 3, "producer_cross_zone_share": 0.0, "consumer_cross_zone_share": 0.0},
        "brokers": {"instance": "m7g.xlarge", "throughput_mb_s": 100, "min_brokers": 3},
        "kafka": {"replication_factor": 3, "disk_max_fill": 1.0},
        "shoal": {"compaction_rewrites": 0.0, "metadata_db_multi_az": False},
    }
    for name, values in sections.items():
        profile[name] = {**profile.get(name, {}), **values}
    return profile


def run(profile: dict[str, Any]) -> Any:
    return evaluate(load_profile(profile))


# --- hand-computed examples -----------------------------------------------------------


def test_rf3_cross_zone_replication_at_10_mb_s() -> None:
    # RF=3 over 3 zones: the leader's 2 followers sit in the 2 other zones, so
    # 2 cross-AZ copies x 10 MB/s x 2,592,000 s = 51,840,000 MB = 51,840 GB/month.
    # Each byte pays 0.01 leaving its zone + 0.01 entering the other = 0.02 $/GB:
    # 51,840 GB x 0.02 = 1,036.80 $/month.
    report = run(base())
    repl = report.get("shared_nothing", "steady").line("replication")
    assert repl.quantity == pytest.approx(51_840.0)
    assert repl.cost == pytest.approx(1_036.80)
    # Tiered storage still replicates its hot set the same way.
    assert report.get("tiered", "steady").line("replication").cost == pytest.approx(1_036.80)


def test_shared_storage_has_no_replication_traffic() -> None:
    report = run(base(network={"producer_cross_zone_share": 0.5}))
    for scenario in SCENARIOS:
        line = report.get("shared_storage", scenario).line("replication")
        assert line.quantity == 0.0
        assert line.cost == 0.0


def test_kafka_steady_compute_and_disk() -> None:
    # Load per direction: in = 10 x RF 3 = 30 MB/s, out = 10 (consumer) + 20
    # (followers) = 30 MB/s; at 100 MB/s a broker that is 1, so the minimum 3.
    # Compute: 3 x 720 h x 0.1632 = 352.512; controllers 3 x 720 x 0.0816 = 176.256.
    # Disk: 10 MB/s x 86,400 s = 864 GB x RF 3 = 2,592 GB (fill 1.0) x 0.08 = 207.36.
    r = run(base()).get("shared_nothing", "steady")
    assert r.brokers == 3
    assert r.line("brokers").cost == pytest.approx(352.512)
    assert r.line("metadata").cost == pytest.approx(176.256)
    assert r.line("broker_disk").quantity == pytest.approx(2_592.0)
    assert r.line("broker_disk").cost == pytest.approx(207.36)
    assert r.line("object_storage").cost == 0.0
    assert r.requests == 0.0


def test_disk_headroom_inflates_ebs() -> None:
    # 2,592 GB of replicas kept at most 80 % full: 2,592 / 0.8 = 3,240 GB x 0.08 = 259.20.
    r = run(base(kafka={"disk_max_fill": 0.8})).get("shared_nothing", "steady")
    assert r.line("broker_disk").cost == pytest.approx(259.20)


def test_shoal_storage_and_wal_puts() -> None:
    # S3 keeps one copy: 864 GB x 0.023 = 19.872.
    # WAL: 3 brokers each flush every 250 ms = 12 objects/s (10 MB/s / 8 MB = 1.25/s
    # is less, so linger decides): 12 x 2,592,000 = 31,104,000 PUTs x 0.005 / 1000
    # = 155.52. Compaction is switched off in base(), so that is every PUT.
    r = run(base()).get("shared_storage", "steady")
    assert r.line("object_storage").cost == pytest.approx(19.872)
    assert r.line("broker_disk").cost == 0.0
    assert r.line("object_put").quantity == pytest.approx(31_104_000)
    assert r.line("object_put").cost == pytest.approx(155.52)
    assert r.line("object_get").quantity == 0.0
    # Metadata: one Single-AZ db.m7g.large, 720 h x 0.168 = 120.96; 20 GB x 0.115 = 2.30.
    assert r.line("metadata").cost == pytest.approx(120.96)
    assert r.line("metadata_storage").cost == pytest.approx(2.30)


def test_shoal_compaction_requests() -> None:
    # Compaction rewrites each byte once in 16 MB parts:
    # 10 MB/s x 2,592,000 s / 16 MB = 1,620,000 PUTs (8.10 $) on top of the 31,104,000
    # WAL PUTs. It reads every WAL object once; 25,920,000 MB / 4 MB = 6,480,000 block
    # reads is fewer, so 31,104,000 GETs x 0.0004 / 1000 = 12.4416 $.
    r = run(base(shoal={"compaction_rewrites": 1.0})).get("shared_storage", "steady")
    assert r.line("object_put").quantity == pytest.approx(31_104_000 + 1_620_000)
    assert r.line("object_put").cost == pytest.approx(155.52 + 8.10)
    assert r.line("object_get").quantity == pytest.approx(31_104_000)
    assert r.line("object_get").cost == pytest.approx(12.4416)


def test_wal_objects_fill_by_size_at_high_rate() -> None:
    # 3 brokers at 100 MB/s total with 8 MB objects: 12.5 objects/s beats 3 x 4 = 12.
    assert wal_objects_per_s(3, 100e6, 250, 8e6) == pytest.approx(12.5)
    assert wal_objects_per_s(3, 10e6, 250, 8e6) == pytest.approx(12.0)


def test_cross_zone_clients_private_link_and_egress() -> None:
    # Producers: 25,920 GB/month, 2/3 of it to a leader in another zone = 17,280 GB;
    # consumers (fan-out 1) the same 25,920 GB with 1/2 cross-zone = 12,960 GB;
    # (17,280 + 12,960) x 0.02 = 604.80 $.
    # PrivateLink: all producer bytes 25,920 GB x 0.01 = 259.20 $, plus 2 endpoints
    # x 3 zones x 720 h x 0.01 = 43.20 $.
    # Internet: 1 group x 25,920 GB x 0.09 = 2,332.80 $. Cross-region: 1 copy x 25,920
    # x 0.02 = 518.40 $.
    report = run(
        base(
            workload={"consumer_fanout": 2},
            network={
                "producer_cross_zone_share": 2 / 3,
                "consumer_cross_zone_share": 0.25,
                "private_link_producer_share": 1.0,
                "private_link_endpoints": 2,
                "internet_consumer_groups": 1,
                "cross_region_copies": 1,
            },
        )
    )
    for arch in ARCHITECTURES:
        r = report.get(arch, "steady")
        # fan-out 2 doubles consumer bytes: 51,840 GB x 0.25 = 12,960 GB cross-zone.
        assert r.line("cross_zone").quantity == pytest.approx(17_280 + 12_960)
        assert r.line("cross_zone").cost == pytest.approx(604.80)
        assert r.line("private_link").cost == pytest.approx(259.20)
        assert r.line("private_link_endpoints").cost == pytest.approx(43.20)
        assert r.line("internet_egress").cost == pytest.approx(2_332.80)
        assert r.line("cross_region").cost == pytest.approx(518.40)
        assert r.line("producer_ingress").cost == 0.0  # internet ingress is free


def test_default_cross_zone_share_follows_azs() -> None:
    # Unset shares default to (azs-1)/azs: with 2 zones 1/2 of 25,920 GB each way
    # = 25,920 GB cross-zone x 0.02 = 518.40 $.
    profile = base()
    del profile["network"]["producer_cross_zone_share"]
    del profile["network"]["consumer_cross_zone_share"]
    profile["network"]["azs"] = 2
    profile["kafka"]["replication_factor"] = 2
    r = run(profile).get("shared_nothing", "steady")
    assert r.line("cross_zone").cost == pytest.approx(518.40)


def test_follower_fetching_and_zone_local_reads_remove_consumer_cross_zone() -> None:
    profile = base(
        network={"consumer_cross_zone_share": 1.0},
        kafka={"follower_fetching": True},
        shoal={"zone_local_reads": True},
    )
    report = run(profile)
    for arch in ARCHITECTURES:
        assert report.get(arch, "steady").line("cross_zone").cost == 0.0
    # Shoal pays with GETs instead: each of the 2 other zones reads each of the
    # 31,104,000 WAL objects once = 62,208,000 GETs.
    assert report.get("shared_storage", "steady").line("object_get").quantity == pytest.approx(
        62_208_000
    )


def test_tiered_storage_split() -> None:
    # Hot set 12 h: 10 MB/s x 43,200 s = 432 GB x RF 3 = 1,296 GB EBS x 0.08 = 103.68;
    # remote: the whole day once, 864 GB x 0.023 = 19.872.
    # Uploads: 25,920,000 MB / 512 MB = 50,625 segments x 6 PUTs = 303,750 PUTs
    # x 0.005 / 1000 = 1.51875 $.
    r = run(base(tiered={"local_retention_hours": 12})).get("tiered", "steady")
    assert r.line("broker_disk").cost == pytest.approx(103.68)
    assert r.line("object_storage").cost == pytest.approx(19.872)
    assert r.line("object_put").quantity == pytest.approx(303_750)
    assert r.line("object_put").cost == pytest.approx(1.51875)


def test_reconnect_burst_kafka_provisions_peak_shoal_scales() -> None:
    # 2 outages of 3 h, all sites, replay at 4x: peak = 10 x 4 = 40 MB/s, catch-up
    # = 3 h / (4 - 1) = 1 h. Brokers of 25 MB/s.
    # Kafka: steady in 30 / 25 -> 2, min 3 -> 3; peak in 120, out 40 + 80 = 120 ->
    # 4.8 -> 5 -> 6 (multiple of 3 zones), all month: 6 x 720 x 0.1632 = 705.024.
    # Shoal: steady in 10, out 10 + 10 -> 3 (min); peak in 40, out 80 -> 4 -> 6, but
    # only for the catch-up plus 15 min: 3 extra x 2 events x 1.25 h = 7.5 h x 0.1632
    # = 1.224 $.
    profile = base(
        outage={"per_month": 2, "hours": 3, "site_share": 1.0, "replay_rate_multiple": 4},
        brokers={"throughput_mb_s": 25},
    )
    report = run(profile)
    assert report.volumes.peak_ingest_bytes_s == pytest.approx(40e6)
    assert report.volumes.catch_up_hours == pytest.approx(1.0)
    kafka = report.get("shared_nothing", "reconnect_burst")
    assert kafka.brokers == 6
    assert kafka.line("brokers").cost == pytest.approx(705.024)
    assert report.get("shared_nothing", "steady").brokers == 3
    shoal = report.get("shared_storage", "reconnect_burst")
    assert (shoal.brokers, shoal.peak_brokers) == (3, 6)
    assert shoal.line("brokers").cost == pytest.approx(352.512)
    assert shoal.line("elastic_brokers").quantity == pytest.approx(7.5)
    assert shoal.line("elastic_brokers").cost == pytest.approx(1.224)
    # WAL PUTs: 12/s for 2,592,000 - 7,200 s, then 6 brokers x 4 = 24/s for 7,200 s:
    # 31,017,600 + 172,800 = 31,190,400.
    assert shoal.line("object_put").quantity == pytest.approx(31_190_400)
    # The backlog is the same bytes, later: network is unchanged.
    assert shoal.network == pytest.approx(report.get("shared_storage", "steady").network)
    assert kafka.network == pytest.approx(report.get("shared_nothing", "steady").network)


def test_partial_outage_peak() -> None:
    # 40 % of sites replay at 6x, the rest send live: 10 x (0.6 + 0.4 x 6) = 30 MB/s.
    profile = base(
        outage={"per_month": 1, "hours": 5, "site_share": 0.4, "replay_rate_multiple": 6}
    )
    v = run(profile).volumes
    assert v.peak_ingest_bytes_s == pytest.approx(30e6)
    assert v.catch_up_hours == pytest.approx(1.0)


def test_failover_rereplication() -> None:
    # Kafka: a lost broker held 864 GB x 3 / 3 brokers = 864 GB, all re-copied from
    # other zones: 864 x 0.02 = 17.28 $ on top of 1,036.80 of steady replication.
    # Tiered: only its hot share, 432 GB x 3 / 3 = 432 GB -> 8.64 $. Shoal: nothing.
    report = run(
        base(failover={"broker_losses_per_month": 1}, tiered={"local_retention_hours": 12})
    )
    assert report.get("shared_nothing", "failover").line("replication").cost == pytest.approx(
        1_036.80 + 17.28
    )
    assert report.get("tiered", "failover").line("replication").cost == pytest.approx(
        1_036.80 + 8.64
    )
    assert report.get("shared_storage", "failover").total == pytest.approx(
        report.get("shared_storage", "steady").total
    )


def test_replay_reads() -> None:
    # One group re-reads 24 h = 864 GB twice a month = 1,728 GB.
    # Shoal: 864,000 MB / 4 MB = 216,000 GETs per replay x 2 = 432,000 GETs x 0.0004 /
    # 1000 = 0.1728 $. Tiered with a 6 h hot set: 3/4 of it is remote:
    # 1,296 GB / 4 MB = 324,000 GETs.
    # At 100 MB/s on brokers of 100 MB/s: Shoal steady out = 20 -> 3 brokers; with
    # the replay out = 120 -> 2 -> 3: no elastic brokers needed.
    report = run(
        base(
            replay={"per_month": 2, "history_hours": 24, "read_mb_s": 100},
            tiered={"local_retention_hours": 6},
        )
    )
    shoal = report.get("shared_storage", "replay")
    steady = report.get("shared_storage", "steady")
    assert shoal.line("object_get").quantity - steady.line("object_get").quantity == (
        pytest.approx(432_000)
    )
    assert shoal.line("elastic_brokers").quantity == 0.0
    assert report.get("tiered", "replay").line("object_get").quantity == pytest.approx(324_000)
    assert shoal.line("consumer_egress").quantity == pytest.approx(25_920 + 1_728)


def test_replay_elastic_brokers() -> None:
    # Replay at 200 MB/s on brokers of 100 MB/s: Shoal out = 20 + 200 = 220 -> 3;
    # in = 10 + 200 = 210 -> 3: still 3. With 3 groups: 620 -> 7 -> 9 brokers, 6 extra
    # for 864,000 MB / 200 MB/s = 4,320 s = 1.2 h + 0.25 h = 1.45 h: 8.7 broker-hours.
    report = run(
        base(replay={"per_month": 1, "history_hours": 24, "read_mb_s": 200, "consumer_groups": 3})
    )
    shoal = report.get("shared_storage", "replay")
    assert shoal.peak_brokers == 9
    assert shoal.line("elastic_brokers").quantity == pytest.approx(8.7)
    # Kafka serves it from its disks: out = 10 + 20 + 600 = 630 -> 7 -> 9 all month.
    assert report.get("shared_nothing", "replay").brokers == 9


def test_helpers() -> None:
    assert cross_zone_copies(3, 3) == pytest.approx(2.0)
    assert cross_zone_copies(3, 2) == pytest.approx(4 / 3)
    assert cross_zone_copies(3, 1) == pytest.approx(0.0)
    assert cross_zone_copies(1, 3) == pytest.approx(0.0)
    assert rebuild_cross_zone_share(3, 3) == pytest.approx(1.0)
    assert rebuild_cross_zone_share(3, 2) == pytest.approx(2 / 3)
    assert rebuild_cross_zone_share(3, 1) == pytest.approx(0.0)
    assert brokers_needed(30e6, 30e6, 100e6, 3, 3) == 3
    assert brokers_needed(120e6, 90e6, 25e6, 3, 3) == 6
    assert brokers_needed(401e6, 0, 100e6, 1, 1) == 5
    assert brokers_needed(400e6, 0, 100e6, 1, 2) == 4


# --- invariants ----------------------------------------------------------------------


def test_totals_are_the_sum_of_parts_for_every_architecture_and_scenario() -> None:
    report = evaluate(load_profile(EXAMPLE))
    assert len(report.results) == len(ARCHITECTURES) * len(SCENARIOS)
    for r in report.results:
        assert [line.item for line in r.lines] == [item for _, item, _ in LINE_ITEMS]
        parts = [r.compute, r.storage, r.network, r.requests]
        assert r.total == pytest.approx(sum(parts))
        assert r.total == pytest.approx(sum(line.cost for line in r.lines))
        assert all(line.cost >= 0 and line.quantity >= 0 for line in r.lines)
        assert r.total > 0
    data = report.to_dict()
    for res in data["results"]:
        totals = res["totals"]
        assert totals["total"] == pytest.approx(sum(totals[c] for c in CATEGORIES))
        for c in CATEGORIES:
            assert totals[c] == pytest.approx(
                sum(line["cost"] for line in res["lines"] if line["category"] == c)
            )


def test_example_profile_volumes() -> None:
    # 1,000 x 50 x 1 msg/s = 50,000 msg/s x (200 + 60) B / 2 = 6.5 MB/s; 7 days:
    # 6.5 MB/s x 604,800 s = 3,931.2 GB; fan-out 3 -> 19.5 MB/s read.
    v = evaluate(load_profile(EXAMPLE)).volumes
    assert v.messages_per_s == pytest.approx(50_000)
    assert v.ingest_bytes_s == pytest.approx(6.5e6)
    assert v.stored_bytes == pytest.approx(3_931.2e9)
    assert v.consumer_bytes_s == pytest.approx(19.5e6)
    assert v.month_ingest_bytes == pytest.approx(6.5e6 * MONTH_S)


# --- prices --------------------------------------------------------------------------


def test_price_sheet_entries_are_documented() -> None:
    prices = load_prices()
    assert prices.sheet["region"] == "us-east-1"
    assert "check" in prices.sheet["notice"]
    for key, src in prices.sources.items():
        assert src.source.startswith("https://aws.amazon.com/"), key
        assert len(src.as_of) >= 7, key
        assert src.unit, key
    assert prices.inter_az_gb_each_direction == 0.01
    assert prices.instance["m7g.xlarge"] == pytest.approx(0.1632)


def test_price_overrides_from_profile_and_file(tmp_path: Path) -> None:
    # Profile [prices] doubles the inter-AZ price: replication 51,840 GB x 0.04 = 2,073.60.
    profile = base()
    profile["prices"] = {"inter_az_gb_each_direction": 0.02, "instance": {"m7g.xlarge": 0.2}}
    report = run(profile)
    r = report.get("shared_nothing", "steady")
    assert r.line("replication").cost == pytest.approx(2_073.60)
    assert r.line("brokers").cost == pytest.approx(3 * 720 * 0.2)
    assert report.prices.sources["instance.m7g.xlarge"].source == "override"

    # --prices FILE wins over the profile's [prices].
    (tmp_path / "p.toml").write_text("[inter_az_gb_each_direction]\nvalue = 0.005\n")
    (tmp_path / "w.toml").write_text(
        "[workload]\nsites = 100\ndevices_per_site = 100\nmessage_bytes = 1000\n"
        "retention_days = 1\n[outage]\nper_month = 0\n[network]\n"
        "producer_cross_zone_share = 0.0\nconsumer_cross_zone_share = 0.0\n"
        "[prices]\ninter_az_gb_each_direction = 0.02\n"
    )
    result = CliRunner().invoke(
        cost,
        [
            "--profile",
            str(tmp_path / "w.toml"),
            "--prices",
            str(tmp_path / "p.toml"),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    res = next(
        x
        for x in data["results"]
        if x["architecture"] == "shared_nothing" and x["scenario"] == "steady"
    )
    repl = next(line for line in res["lines"] if line["item"] == "replication")
    # 51,840 GB x (0.005 x 2) = 518.40
    assert repl["cost"] == pytest.approx(518.40)


def test_bad_prices() -> None:
    with pytest.raises(PriceError, match="s3_put_per_1000"):
        load_prices({"s3_put_per_1000": -1})
    with pytest.raises(PriceError, match="no_such_price"):
        load_prices({"no_such_price": 1})
    with pytest.raises(PriceError, match=r"instance\.x1"):
        load_prices({"instance": {"x1": "cheap"}})


# --- bad profiles ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"workload": {"sites": -1}}, "workload.sites"),
        ({"workload": {"messages_per_device_per_s": -0.5}}, "workload.messages_per_device_per_s"),
        ({"workload": {"sites": "many"}}, "workload.sites"),
        ({"workload": {"sites": 1.5}}, "workload.sites"),
        ({"workload": {"consumer_fanout": True}}, "workload.consumer_fanout"),
        ({"workload": {"compression_ratio": 0}}, "workload.compression_ratio"),
        ({"workload": {"sitez": 3}}, "workload.sitez"),
        ({"network": {"producer_cross_zone_share": 1.5}}, "network.producer_cross_zone_share"),
        ({"network": {"azs": 0}}, "network.azs"),
        ({"network": {"internet_consumer_groups": 5}}, "network.internet_consumer_groups"),
        (
            {"outage": {"per_month": 1, "hours": 2, "replay_rate_multiple": 1.0}},
            "outage.replay_rate_multiple",
        ),
        ({"kafka": {"follower_fetching": "yes"}}, "kafka.follower_fetching"),
        ({"brokers": {"instance": 7}}, "brokers.instance"),
        ({"brokers": {"throughput_mb_s": 0}}, "brokers.throughput_mb_s"),
    ],
)
def test_bad_profile_values_name_the_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ProfileError) as err:
        load_profile(base(**change))
    assert err.value.key == key


def test_unknown_section_and_unpriced_instance() -> None:
    with pytest.raises(ProfileError) as err:
        load_profile({"wrokload": {}})
    assert err.value.key == "wrokload"
    with pytest.raises(ProfileError) as err:
        evaluate(load_profile(base(brokers={"instance": "m99.huge"})))
    assert err.value.key == "brokers.instance"


# --- CLI -----------------------------------------------------------------------------


def test_cli_table_and_json() -> None:
    runner = CliRunner()
    table = runner.invoke(cost, ["--profile", str(EXAMPLE)], terminal_width=160)
    assert table.exit_code == 0, table.output
    assert "reconnect burst" in table.output and "Shoal" in table.output
    assert "list prices as of" in table.output
    out = runner.invoke(cost, ["--profile", str(EXAMPLE), "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert {(r["architecture"], r["scenario"]) for r in data["results"]} == {
        (a, s) for a in ARCHITECTURES for s in SCENARIOS
    }
    assert data["volumes"]["ingest_mb_s"] == pytest.approx(6.5)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[workload]\nsites = -5\n", "workload.sites"),
        ("[workload]\nsites = 'lots'\n", "workload.sites"),
        ("[network]\nazs = 3\nzones = 2\n", "network.zones"),
        ("[prices]\ns3_get_per_1000 = -1\n", "prices.s3_get_per_1000"),
        ("[workload\n", "profile"),
    ],
)
def test_cli_bad_profile_is_a_usage_error(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = CliRunner().invoke(cost, ["--profile", str(path)])
    assert result.exit_code == 2
    assert key in result.output
    assert "--profile" in result.output
    assert "Traceback" not in result.output


def test_cli_bad_price_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[instance]\n'm7g.xlarge' = -3\n")
    result = CliRunner().invoke(cost, ["--profile", str(EXAMPLE), "--prices", str(path)])
    assert result.exit_code == 2
    assert "instance.m7g.xlarge" in result.output and "--prices" in result.output


def test_cli_chart_needs_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(
        cost, ["--profile", str(EXAMPLE), "--chart", str(tmp_path / "c.png")]
    )
    assert result.exit_code == 1
    assert "pip install 'matplotlib" in result.output


def test_cli_chart(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "cost.png"
    result = CliRunner().invoke(
        cost, ["--profile", str(EXAMPLE), "--chart", str(png), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
