"""The edge gateway end to end: a real MQTT broker (amqtt), a real central
Shoal broker subprocess behind a TCP proxy that cuts the uplink, and the
gateway itself as a subprocess (killed -9 where the test says so)."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from edge_harness import (
    GatewayProcess,
    Rec,
    apublish,
    consume_all,
    gateway_config,
    publish,
    wait_for,
)
from harness import BrokerProcess
from mqtt_broker import MqttBroker
from proxy import CuttingProxy

ORIGIN = "shoal.origin"
JSON = ("--format", "json")


@pytest.fixture(scope="module")
def proxy_and_central(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CuttingProxy, BrokerProcess]]:
    """The central cluster, reachable only through a proxy (clients are told
    the proxy's address), so a test can take the uplink down."""
    from harness import free_port

    port = free_port()
    proxy = CuttingProxy(port).start()
    central = BrokerProcess(
        tmp_path_factory.mktemp("central") / "data", port=port, args=["--advertise", proxy.address]
    ).start()
    yield proxy, central
    central.stop()
    proxy.stop()


@pytest.fixture
def uplink(proxy_and_central: tuple[CuttingProxy, BrokerProcess]) -> Iterator[CuttingProxy]:
    proxy, _ = proxy_and_central
    proxy.set_down(False)
    yield proxy
    proxy.set_down(False)


@pytest.fixture
def central(proxy_and_central: tuple[CuttingProxy, BrokerProcess]) -> BrokerProcess:
    return proxy_and_central[1]


@pytest.fixture(scope="module")
def mqtt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttBroker]:
    b = MqttBroker(tmp_path_factory.mktemp("mqtt")).start()
    yield b
    b.stop()


@pytest.fixture
def names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"site": f"site-{tag}", "topic": f"telemetry-{tag}", "tag": tag}


def make_gateway(
    tmp_path: Path, gateways: list[GatewayProcess], names: dict[str, str], **kw: Any
) -> GatewayProcess:
    kw.setdefault("site", names["site"])
    kw.setdefault(
        "routes",
        [{"filter": f"{names['tag']}/+/data", "topic": names["topic"], "key_level": 1}],
    )
    g = GatewayProcess(tmp_path / "gw", gateway_config(tmp_path / "gw" / "data", **kw))
    gateways.append(g)
    return g


def device_messages(
    tag: str, devices: int, per_device: int, start: int = 0
) -> list[tuple[str, bytes]]:
    out = []
    for i in range(start, start + per_device):
        for d in range(devices):
            out.append((f"{tag}/dev{d}/data", f"dev{d}:{i:06d}".encode()))
    return out


def seqs_by_device(recs: list[Rec]) -> dict[bytes, list[int]]:
    out: dict[bytes, list[int]] = collections.defaultdict(list)
    for key, value, _h, _ts, _p in recs:
        assert key is not None and value is not None
        dev, _, seq = value.partition(b":")
        assert dev == key, "the record key is the device id from the MQTT topic"
        out[key].append(int(seq))
    return out


def local_produce(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    key: bytes | None = None,
    batch_size: int = 1_000_000,
) -> None:
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "enable.idempotence": True,
            "batch.size": batch_size,
        }
    )
    for v in values:
        p.produce(topic, v, key=key)
        p.poll(0)
    assert p.flush(60) == 0


def record_bytes(rec: Rec) -> int:
    key, value, headers, _ts, _p = rec
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v) for k, v in headers.items())


# -- delivery through an outage ---------------------------------------------------


def test_qos1_through_uplink_outage_every_record_once_in_order(
    tmp_path: Path,
    uplink: CuttingProxy,
    central: BrokerProcess,
    mqtt: MqttBroker,
    names: dict[str, str],
    gateways: list[GatewayProcess],
) -> None:
    gw = make_gateway(
        tmp_path,
        gateways,
        names,
        mqtt_port=mqtt.port,
        central=uplink.address,
        local={"partitions": 2},
    )
    gw.start()
    uplink.set_down(True)
    msgs = device_messages(names["tag"], devices=6, per_device=300)
    publish(mqtt.port, msgs, client_id=f"pub-{names['tag']}")
    lane = wait_for(
        lambda: (
            (x := gw.lane("default"))["uplinks"]["central"]["backlog_records"] == len(msgs) and x
        ),
        20,
        "the backlog to hold every message",
    )
    assert lane["uplinks"]["central"]["oldest_unsent_age_s"] > 0
    up = gw.uplink()
    assert up["state"] != "connected", "no produce can succeed through a cut uplink"
    # QoS 1: the gateway acknowledged every message (once durable locally)
    wait_for(lambda: len(mqtt.acked(f"shoal-edge-{names['site']}")) == len(msgs), 10, "acks")
    time.sleep(1.5)  # let the outage last across backoff rounds
    assert gw.uplink()["state"] in ("backoff", "connecting")
    uplink.set_down(False)
    wait_for(lambda: gw.uplink()["sent_records"] >= len(msgs), 60, "the backlog to drain")
    assert wait_for(lambda: gw.uplink()["state"] == "connected", 10, "connected")
    recs = consume_all(central.bootstrap, names["topic"], len(msgs))
    origins = [r[2][ORIGIN] for r in recs]
    assert len(recs) == len(msgs) and len(set(origins)) == len(msgs), "every record once"
    by_dev = seqs_by_device(recs)
    assert sorted(by_dev) == [f"dev{d}".encode() for d in range(6)]
    for dev, seqs in by_dev.items():
        assert seqs == list(range(300)), f"{dev!r} out of order or incomplete"
    # origin header: site/topic/partition/offset, and the MQTT topic is kept
    site, topic, part, off = origins[0].decode().split("/")
    assert (site, topic) == (names["site"], names["topic"]) and int(part) in (0, 1)
    assert int(off) >= 0
    assert recs[0][2]["mqtt.topic"].startswith(names["tag"].encode())
    assert gw.stop() == 0


# -- kill -9 during ingest and forwarding ----------------------------------------------


def test_kill9_at_random_moments_loses_no_acknowledged_record(
    tmp_path: Path,
    uplink: CuttingProxy,
    central: BrokerProcess,
    mqtt: MqttBroker,
    names: dict[str, str],
    gateways: list[GatewayProcess],
) -> None:
    max_unconfirmed = 400
    gw = make_gateway(
        tmp_path,
        gateways,
        names,
        mqtt_port=mqtt.port,
        central=uplink.address,
        uplink={"max_inflight_records": max_unconfirmed, "progress_interval_ms": 100},
    )
    gw.start()
    devices, per_device = 4, 1500
    stop = threading.Event()
    published = [0]
    kills = 0

    def devices_publish() -> None:
        # At least per_device messages per device, and on until three kills
        # have landed during ingest (a gateway restart takes seconds on a busy
        # machine; a fixed count could end before the kills), within a bound.
        start = 0
        while not stop.is_set() and start < 4 * per_device:
            if start >= per_device and kills >= 3:
                return
            msgs = device_messages(names["tag"], devices, 100, start)
            publish(mqtt.port, msgs, client_id=f"pub-{names['tag']}")
            published[0] += len(msgs)
            start += 100
            time.sleep(0.25)  # a steady stream, so kills land during ingest

    t = threading.Thread(target=devices_publish)
    t.start()
    rng = random.Random(7)
    try:
        while t.is_alive() and kills < 6:
            time.sleep(rng.uniform(0.2, 1.2))
            gw.kill()
            kills += 1
            time.sleep(rng.uniform(0, 0.3))
            gw.start()
    finally:
        stop.set()
        t.join(120)
    assert kills >= 3
    # The gateway works through what the MQTT broker queued while it was
    # down: on a busy machine that takes a while after the last publish.
    wait_for(
        lambda: len(mqtt.acked(f"shoal-edge-{names['site']}")) > 1000,
        60,
        "over 1000 messages acknowledged",
    )
    acked = mqtt.acked(f"shoal-edge-{names['site']}")
    wait_for(
        lambda: (
            gw.lane("default")["uplinks"]["central"]["backlog_records"] == 0
            and gw.uplink()["inflight_records"] == 0
        ),
        60,
        "the backlog to drain",
    )
    recs = consume_all(central.bootstrap, names["topic"], len({p for _t, p in acked}))
    got_values = collections.Counter(r[1] for r in recs)
    missing = [p for _t, p in acked if p not in got_values]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:3]}"
    # duplicates: only re-sent records, each carrying the same origin header
    by_origin: dict[bytes, set[bytes | None]] = collections.defaultdict(set)
    for r in recs:
        by_origin[r[2][ORIGIN]].add(r[1])
    assert all(len(v) == 1 for v in by_origin.values()), "one origin, one record"
    dup_copies = len(recs) - len(by_origin)
    # A message stored but not yet acknowledged when the gateway died is
    # delivered again by the MQTT broker (at least once): stored twice, under
    # two origins. Only messages in flight at a kill can be, and the copy
    # says so when the broker flags the redelivery.
    origins_of: dict[bytes | None, list[Rec]] = collections.defaultdict(list)
    for r in recs:
        if all(r[2][ORIGIN] != x[2][ORIGIN] for x in origins_of[r[1]]):
            origins_of[r[1]].append(r)
    redelivered = [v for v in origins_of.values() if len(v) > 1]
    print(
        f"redelivered by MQTT: {len(redelivered)}; flagged "
        f"{sum(1 for v in redelivered if any('mqtt.dup' in x[2] for x in v))}"
    )
    assert len(redelivered) <= kills * 2000  # receive window, per kill
    assert dup_copies <= kills * max_unconfirmed, (dup_copies, kills)
    # First copies keep each device's order as the gateway received it. (Not
    # always the publish order: amqtt delivers what it queued for an offline
    # session concurrently with live messages, so after a restart a device's
    # newer message can reach the gateway before older ones. The gateway's
    # acknowledgements, in arrival order, are the reference.)
    seen: set[bytes | None] = set()
    firsts = []
    for r in recs:
        if r[1] not in seen:
            seen.add(r[1])
            firsts.append(r)
    acked_order = seqs_by_device([(p.split(b":")[0], p, {}, 0, 0) for _t, p in acked])
    central_order = seqs_by_device(firsts)
    for dev, seqs in acked_order.items():
        acked_set = set(seqs)
        assert [x for x in central_order[dev] if x in acked_set] == seqs, f"{dev!r} reordered"
    print(f"kills={kills} acked={len(acked)} central={len(recs)} duplicates={dup_copies}")
    assert gw.stop() == 0


# -- lanes: disk budget, TTL, priorities under a cap -------------------------------


def test_disk_budget_block_holds_producers_then_resumes(
    tmp_path: Path,
    uplink: CuttingProxy,
    central: BrokerProcess,
    names: dict[str, str],
    gateways: list[GatewayProcess],
) -> None:
    topic = names["topic"]
    budget = 200_000
    gw = make_gateway(
        tmp_path,
        gateways,
        names,
        central=uplink.address,
        lanes=[
            {"name": "bulk", "topics": [topic], "disk_budget_bytes": budget, "when_full": "block"}
        ],
    )
    gw.start()
    uplink.set_down(True)
    values = [f"{i:06d}".encode() + b"x" * 994 for i in range(600)]  # ~600 kB, 3x the budget
    done = threading.Event()
    err: list[BaseException] = []

    def produce() -> None:
        try:
            local_produce(gw.kafka, topic, values, key=b"k", batch_size=20_000)
        except BaseException as exc:
            err.append(exc)
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    lane = wait_for(lambda: (x := gw.lane("bulk"))["blocked"] and x, 20, "the lane to block")
    time.sleep(1.0)
    lane = gw.lane("bulk")
    assert lane["blocked"] and not done.is_set(), "the producer is held, not refused"
    assert lane["disk_used_bytes"] <= budget + 70_000  # one produce request over at most
    assert lane["drops"] == {}
    uplink.set_down(False)
    assert done.wait(60) and not err, err
    wait_for(lambda: gw.uplink()["sent_records"] >= len(values), 60, "everything forwarded")
    recs = consume_all(central.bootstrap, topic, len(values))
    assert [r[1] for r in recs] == values
    assert gw.lane("bulk")["drops"] == {}
    assert gw.stop() == 0


def test_disk_budget_drop_oldest_counts_every_drop(
    tmp_path: Path,
    uplink: CuttingProxy,
    central: BrokerProcess,
    names: dict[str, str],
    gateways: list[GatewayProcess],
) -> None:
    topic = names["topic"]
    budget = 150_000
    gw = make_gateway(
        tmp_path,
        gateways,
        names,
        central=uplink.address,
        lanes=[
            {
                "name": "bulk",
                "topics": [topic],
                "disk_budget_bytes": budget,
                "when_full": "drop-oldest",
            }
        ],
    )
    gw.start()
    uplink.set_down(True)
    values = [f"{i:06d}".encode() + b"y" * 994 for i in range(800)]
    for i in range(0, len(values), 50):  # many small appends, many ranges
        local_produce(gw.kafka, topic, values[i : i + 50], key=b"k")
    lane = wait_for(
        lambda: (
            (x := gw.lane("bulk"))["drops"].get("disk-budget", {}).get("records", 0) > 0
            and x["disk_used_bytes"] <= budget
            and x
        ),
        20,
        "oldest data dropped to fit the budget",
    )
    uplink.set_down(False)
    # Drained: nothing left to read and nothing in flight. Records in flight
    # when the cut came are counted only once their delivery fails, so the
    # backlog alone can reach 0 before the drop count is final.
    wait_for(
        lambda: (
            gw.lane("bulk")["uplinks"]["central"]["backlog_records"] == 0
            and gw.uplink()["inflight_records"] == 0
        ),
        60,
        "drained",
    )
    lane = gw.lane("bulk")
    dropped = lane["drops"]["disk-budget"]["records"]
    recs = consume_all(central.bootstrap, topic, len(values) - dropped)
    got = [int(r[1][:6]) for r in recs]
    # On failure, the gateway's trims and forwarding decisions say which
    # records went uncounted. Twice in CI (600 counted, 67 missing; 567 and
    # 100): a trim skipped a range an earlier trim took in flight, once the
    # producer's teardown had rewound the forwarder (the sequence is
    # replayed in test_edge_units.py).
    assert len(got) + dropped == len(values), (
        f"every record delivered or counted as dropped: got {got[:3]}..., dropped {dropped}\n"
        f"{json.dumps(lane)}\n{json.dumps(gw.uplink())}\n{gw.log()[-20000:]}"
    )
    # the oldest went (records already handed to the producer when the cut
    # came were delivered, not dropped: a record is counted once, either way)
    assert got == sorted(got) and set(range(len(values) - 100, len(values))) <= set(got)
    assert min(got) >= len(values) - budget // 1000 - 300
    assert gw.stop() == 0


def test_ttl_expired_records_are_not_sent_and_are_counted(
    tmp_path: Path,
    uplink: CuttingProxy,
    central: BrokerProcess,
    mqtt: MqttBroker,
    names: dict[str, str],
    gateways: list[GatewayProcess],
) -> None:
    topic = names["topic"]
    gw = make_gateway(
        tmp_path,
        gateways,
        names,
        mqtt_port=mqtt.port,
        central=uplink.address,
        lanes=[{"name": "live", "topics": [topic], "ttl_ms": 6000}],
    )
    gw.start()
    uplink.set_down(True)
    old = device_messages(names["tag"], 2, 200)
    publish(mqtt.port, old, client_id=f"pub-{names['tag']}")
    # TTL applies when records are handed to the producer: wait until they
    # are older than it (the condition is time itself) and what went to the
    # producer during the outage has been taken back (stall timeout, rewind).
    # The new records then have the whole TTL to reach the central broker,
    # enough on a busy machine too (4 s was not).
    time.sleep(6.2)
    wait_for(lambda: gw.uplink()["inflight_records"] == 0, 10, "nothing in flight")
    new = device_messages(names["tag"], 2, 50, start=1000)
    publish(mqtt.port, new, client_id=f"pub-{names['tag']}")
    uplink.set_down(False)
    wait_for(lambda: gw.uplink()["sent_records"] >= len(new), 30, "new records forwarded")
    recs = consume_all(central.bootstrap, topic, len(new))
    assert sorted(r[1] for r in recs) == sorted(p for _t, p in new)
    lane = gw.lane("live")
    assert lane["drops"]["ttl"]["records"] == len(old)
    assert lane["uplinks"]["central"]["backlog_records"] == 0
    assert gw.stop() == 0


def test_priority_lanes_drain_in_order_under_the_bandwidth_cap(
    tmp_path: Path,
    uplink: CuttingProxy,
    central: BrokerProcess,
    names: dict[str, str],
    gateways: list[GatewayProcess],
) -> None:
    alerts, bulk = f"alerts-{names['tag']}", f"bulk-{names['tag']}"
    admin = AdminClient({"bootstrap.servers": central.bootstrap})
    futs = admin.create_topics(
        [
            NewTopic(t, 1, 1, config={"message.timestamp.type": "LogAppendTime"})
            for t in (alerts, bulk)
        ]
    )
    for f in futs.values():
        f.result(10)
    cap = 300_000
    gw = make_gateway(
        tmp_path,
        gateways,
        names,
        central=uplink.address,
        lanes=[
            {"name": "alerts", "priority": 0, "topics": [alerts]},
            {"name": "bulk", "priority": 1, "topics": [bulk]},
        ],
        bandwidth={"cap_bytes_per_sec": cap, "burst_bytes": 16_384},
    )
    gw.start()
    uplink.set_down(True)
    local_produce(gw.kafka, bulk, [f"b{i:05d}".encode() + b"b" * 994 for i in range(1200)], b"k")
    local_produce(gw.kafka, alerts, [f"a{i:05d}".encode() + b"a" * 994 for i in range(300)], b"k")
    wait_for(
        lambda: (
            gw.lane("bulk")["uplinks"]["central"]["backlog_records"] == 1200
            and gw.lane("alerts")["uplinks"]["central"]["backlog_records"] == 300
        ),
        20,
        "both backlogs",
    )
    uplink.set_down(False)
    wait_for(lambda: gw.uplink()["sent_records"] >= 1500, 60, "both lanes drained", 0.5)
    a = consume_all(central.bootstrap, alerts, 300)
    b = consume_all(central.bootstrap, bulk, 1200)
    assert len(a) == 300 and len(b) == 1200
    last_alert = max(r[3] for r in a)
    bulk_before = sum(1 for r in b if r[3] < last_alert)
    print(
        "bulk before the last alert:",
        [r[2][ORIGIN].rsplit(b"/", 1)[1] for r in b if r[3] < last_alert][:200],
    )
    print(
        "alerts:",
        sorted({r[3] for r in a})[:5],
        "...",
        last_alert,
        "bulk",
        sorted({r[3] for r in b})[:10],
    )
    assert bulk_before <= 0.05 * len(b), f"{bulk_before} bulk records went before the alerts"
    # the measured rate, from the central append times, after the initial burst
    recs = sorted(a + b, key=lambda r: r[3])
    sizes = [record_bytes(r) for r in recs]
    skip = len(recs) // 10
    span_ms = recs[-1][3] - recs[skip][3]
    rate = sum(sizes[skip + 1 :]) / (span_ms / 1000)
    assert abs(rate - cap) <= 0.10 * cap, f"measured {rate:.0f} B/s for a cap of {cap}"
    assert gw.stop() == 0


# -- integrity -------------------------------------------------------------------------


def test_torn_last_write_is_repaired_at_start(
    tmp_path: Path, names: dict[str, str], gateways: list[GatewayProcess]
) -> None:
    topic = names["topic"]
    gw = make_gateway(tmp_path, gateways, names, lanes=[{"name": "l", "topics": [topic]}])
    gw.start()
    for i in range(10):  # ten appends: ten WAL objects
        local_produce(gw.kafka, topic, [f"{i}-{j}".encode() * 20 for j in range(50)], b"k")
    assert gw.stop() == 0
    wal = sorted(
        (
            p
            for p in (gw.workdir / "data" / "log" / "objects").rglob("*")
            if p.is_file() and p.parent.name != "_spare"  # storage/spares.py
        ),
        key=lambda p: p.stat().st_mtime,
    )
    newest = wal[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # power loss
    check = subprocess.run(
        [sys.executable, "-m", "shoal", "edge", "check", "--config", str(gw.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1 and "torn" in check.stdout, check.stdout + check.stderr
    gw.start()
    st = gw.status()
    findings = st["integrity"]["findings"]
    assert [f["kind"] for f in findings] == ["torn"]
    lost = findings[0]["records_lost"]
    assert 0 < lost <= 50
    assert gw.lane("l")["drops"]["torn"]["records"] == lost
    # the log is whole again: dense offsets up to the cut, and appends go on
    local_produce(gw.kafka, topic, [b"after-repair"], b"k")
    c = Consumer({"bootstrap.servers": gw.kafka, "group.id": "t", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not got or got[-1][1] != b"after-repair"):
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append((m.offset(), m.value()))
    c.close()
    assert [o for o, _v in got] == list(range(500 - lost + 1))
    assert got[-1][1] == b"after-repair"
    assert gw.stop() == 0
    again = subprocess.run(
        [sys.executable, "-m", "shoal", "edge", "check", "--config", str(gw.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stdout + again.stderr


# -- central errors ------------------------------------------------------------------


def test_missing_central_topic_is_reported_and_data_kept(
    tmp_path: Path, names: dict[str, str], gateways: list[GatewayProcess]
) -> None:
    central = BrokerProcess(
        tmp_path / "strict", env={"SHOAL_AUTO_CREATE_TOPICS_ENABLE": "false"}
    ).start()
    try:
        topic = names["topic"]
        gw = make_gateway(
            tmp_path,
            gateways,
            names,
            central=central.bootstrap,
            uplink={
                "kafka": {
                    "topic.metadata.propagation.max.ms": 1000,
                    "topic.metadata.refresh.interval.ms": 500,
                }
            },
        )
        gw.start()
        local_produce(gw.kafka, topic, [f"{i}".encode() for i in range(100)], b"k")
        up = wait_for(
            lambda: (
                (u := gw.uplink())["partitions"]
                and u["partitions"][0]["error_kind"] == "topic-missing"
                and u
            ),
            30,
            "the missing topic in status",
        )
        assert up["state"] == "error", "a TCP connection without a successful produce"
        assert up["last_error_kind"] == "topic-missing" and topic in up["last_error"]
        lane = gw.lane("default")
        assert lane["uplinks"]["central"]["backlog_records"] == 100, "the data is kept"
        assert "shoal_edge_uplink_state" in gw.metrics()
        admin = AdminClient({"bootstrap.servers": central.bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
        wait_for(lambda: gw.uplink()["state"] == "connected", 30, "recovery")
        recs = consume_all(central.bootstrap, topic, 100)
        assert [r[1] for r in recs] == [f"{i}".encode() for i in range(100)]
        assert gw.stop() == 0
    finally:
        central.stop()


def test_authentication_failure_is_reported_and_data_kept(
    tmp_path: Path,
    central: BrokerProcess,
    names: dict[str, str],
    gateways: list[GatewayProcess],
) -> None:
    gw = make_gateway(
        tmp_path,
        gateways,
        names,
        central=central.bootstrap,
        uplink={"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "wrong"},
    )
    gw.start()
    local_produce(gw.kafka, names["topic"], [b"kept"] * 10, b"k")
    up = wait_for(lambda: (u := gw.uplink())["last_error_kind"] == "auth" and u, 30, "auth failure")
    assert up["state"] in ("error", "backoff", "connecting") and up["sent_records"] == 0
    assert gw.lane("default")["uplinks"]["central"]["backlog_records"] == 10
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "edge", "status", "--config", str(gw.path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # An uplink refused by the central cluster is down: exit 2 for monitoring.
    assert out.returncode == 2 and "auth" in out.stdout, out.stdout + out.stderr
    assert "DOWN" in out.stdout
    assert gw.stop() == 0


# -- HTTP ingest, status and metrics ---------------------------------------------------


def test_http_ingest_and_observability(
    tmp_path: Path,
    central: BrokerProcess,
    names: dict[str, str],
    gateways: list[GatewayProcess],
) -> None:
    import urllib.error
    import urllib.request

    from harness import free_port

    topic = names["topic"]
    listen = f"127.0.0.1:{free_port()}"
    gw = make_gateway(
        tmp_path,
        gateways,
        names,
        central=central.bootstrap,
        http={"listen": listen, "topics": [topic]},
    )
    gw.start()

    def post(path: str, body: bytes, ctype: str) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"http://{listen}{path}",
            data=body,
            method="POST",
            headers={"Content-Type": ctype, "X-Shoal-Header-unit": "C"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    assert post(f"/topics/{topic}?key=d1", b'{"t": 21.5}', "application/json")[0] == 200
    assert post(f"/topics/{topic}?key=d1", b"raw\x00bytes", "application/octet-stream")[0] == 200
    assert post(f"/topics/{topic}?key=d2", b'{"a":1}\n{"a":2}\n', "application/x-ndjson") == (
        200,
        b'{"records": 2}\n',
    )
    assert post(f"/topics/{topic}", b"{nope", "application/json")[0] == 400
    assert post("/topics/elsewhere", b"x", "text/plain")[0] == 404
    recs = consume_all(central.bootstrap, topic, 4)
    assert [(r[0], r[1]) for r in recs] == [
        (b"d1", b'{"t": 21.5}'),
        (b"d1", b"raw\x00bytes"),
        (b"d2", b'{"a":1}'),
        (b"d2", b'{"a":2}'),
    ]
    assert recs[0][2]["unit"] == b"C" and recs[0][2]["content-type"] == b"application/json"
    wait_for(lambda: gw.uplink()["state"] == "connected", 10, "connected")
    metrics = gw.metrics()
    for name in (
        "shoal_edge_lane_backlog_records",
        "shoal_edge_lane_backlog_bytes",
        "shoal_edge_lane_oldest_unsent_age_seconds",
        "shoal_edge_uplink_rate_bytes_per_second",
        "shoal_edge_lane_dropped_records_total",
        "shoal_edge_lane_disk_used_bytes",
        "shoal_edge_lane_disk_budget_bytes",
        "shoal_edge_disk_used_bytes",
    ):
        assert name in metrics, name
    assert (
        f'shoal_edge_uplink_state{{site="{names["site"]}",state="connected",uplink="central"}} 1.0'
        in metrics
    )
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "edge", "status", "--config", str(gw.path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and "connected" in out.stdout, out.stdout + out.stderr
    assert gw.stop() == 0
    # stopped: the status file still tells the last state, and says so
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "edge", "status", "--config", str(gw.path), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 3 and '"running": false' in out.stdout
    fmt = subprocess.run(
        [sys.executable, "-m", "shoal", "edge", "status", "--config", str(gw.path), *JSON],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert fmt.returncode == 3 and json.loads(fmt.stdout)["running"] is False


def test_bad_config_exits_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.toml"
    cfg.write_text('site = "s"\n[[uplinks]]\nbootstrap = "h:1"\ncompression = "brotli"\n')
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "edge", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "uplinks[0].compression" in out.stderr


# -- MQTT 5 (mosquitto, a Debian package: skipped where it is not installed) -----


def _mosquitto() -> str | None:
    import shutil

    found = shutil.which("mosquitto")
    if found is None and Path("/usr/sbin/mosquitto").exists():
        found = "/usr/sbin/mosquitto"
    return found


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    from harness import free_port

    binary = _mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: _listening(port), 10, "mosquitto")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_mqtt5_user_properties_and_topic_become_headers(
    tmp_path: Path,
    central: BrokerProcess,
    mosquitto: int,
    names: dict[str, str],
    gateways: list[GatewayProcess],
) -> None:
    gw = make_gateway(tmp_path, gateways, names, mqtt_port=mosquitto, central=central.bootstrap)
    gw.config["mqtt"]["protocol"] = "5"
    gw.start()
    wait_for(lambda: gw.status()["mqtt"]["connected"], 10, "MQTT connected")
    msgs = device_messages(names["tag"], 2, 20)
    asyncio.run(
        apublish(
            mosquitto,
            msgs,
            f"dev-{names['tag']}",
            user_properties=[("unit", "celsius"), ("fw", "2.1")],
            content_type="application/json",
        )
    )
    recs = consume_all(central.bootstrap, names["topic"], len(msgs))
    assert sorted(r[1] for r in recs) == sorted(p for _t, p in msgs)
    for key, _value, headers, _ts, _p in recs:
        assert headers["unit"] == b"celsius" and headers["fw"] == b"2.1"
        assert headers["content-type"] == b"application/json"
        assert headers["mqtt.topic"] == f"{names['tag']}/{key.decode()}/data".encode()
    for dev, seqs in seqs_by_device(recs).items():
        assert seqs == list(range(20)), dev
    assert gw.stop() == 0
