"""The edge gateway on a data directory that fills up (a small tmpfs the
test mounts and fills): MQTT QoS 1 acknowledgements are withheld while
nothing can be stored, reads from the local log go on, and once space is
back every record is stored once and acknowledged, by itself. Below
local.min_free_bytes, lanes act on their when_full policy."""

from __future__ import annotations

from pathlib import Path

import test_edge_gateway as eg
from diskfull import small_fs
from edge_harness import GatewayProcess, consume_all, publish, wait_for
from mqtt_broker import MqttBroker

# the MQTT broker and unique names, as the gateway tests have them (gateways is in conftest)
mqtt = eg.mqtt
names = eg.names


def test_full_data_directory_withholds_mqtt_acks_until_space_returns(
    tmp_path: Path,
    mqtt: MqttBroker,
    names: dict[str, str],
    gateways: list[GatewayProcess],
) -> None:
    with small_fs(tmp_path / "gw" / "data") as fs:
        gw = eg.make_gateway(tmp_path, gateways, names, mqtt_port=mqtt.port)
        gw.start()
        client = f"shoal-edge-{names['site']}"
        first = eg.device_messages(names["tag"], devices=4, per_device=50)
        publish(mqtt.port, first, client_id=f"pub1-{names['tag']}")
        wait_for(lambda: len(mqtt.acked(client)) == len(first), 20, "acks before the fill")
        fs.fill()
        second = eg.device_messages(names["tag"], devices=4, per_device=50, start=50)
        publish(mqtt.port, second, client_id=f"pub2-{names['tag']}")
        status = wait_for(
            lambda: (
                (s := gw.status())["local"]["disk_low"] and s["mqtt"]["received"] > len(first) and s
            ),
            30,
            "the gateway to hold records on a full disk",
        )
        assert "objects disk full" in status["local"]["disk_low"]
        assert status["lanes"][0]["disk_capped"]
        # nothing of the second lot is acknowledged while it cannot be stored
        assert len(mqtt.acked(client)) == len(first)
        assert status["mqtt"]["acked"] == len(first) and status["mqtt"]["pending_acks"] > 0
        assert f'shoal_edge_disk_low{{site="{names["site"]}"}} 1.0' in gw.metrics()
        # reads go on: the local log serves what was stored before
        before = consume_all(gw.kafka, names["topic"], len(first), timeout=30)
        assert sorted(r[1] for r in before) == sorted(p for _t, p in first)
        fs.release()
        everything = first + second
        # amqtt forgets a QoS 1 message it has waited 5 s for (it stops
        # tracking it, without resending), so the late PUBACKs are counted
        # by the gateway, not in amqtt's log
        wait_for(
            lambda: (
                (m := gw.status()["mqtt"])["acked"] == len(everything) and m["pending_acks"] == 0
            ),
            60,
            "every message acknowledged after the release",
        )
        recs = consume_all(gw.kafka, names["topic"], len(everything), timeout=30)
        values = [r[1] for r in recs]
        assert sorted(values) == sorted(p for _t, p in everything), "every record, once"
        by_dev = eg.seqs_by_device(recs)
        for dev, seqs in by_dev.items():
            assert seqs == list(range(100)), f"{dev!r} out of order or incomplete"
        wait_for(lambda: gw.status()["local"]["disk_low"] is None, 20, "the low state to end")
        log = gw.log()
        assert log.count("data directory low on space") == 1
        assert log.count("objects disk full: writes refused") == 1
        assert gw.stop() == 0


def test_low_space_turns_lanes_to_their_when_full_policy(
    tmp_path: Path, names: dict[str, str], gateways: list[GatewayProcess]
) -> None:
    """Below local.min_free_bytes a block lane holds its producer and a
    drop-oldest lane drops (and counts) its oldest records; above it both
    go back to their budgets."""
    held, dropping = f"{names['topic']}-held", f"{names['topic']}-drop"
    with small_fs(tmp_path / "gw" / "data", size="16m") as fs:
        gw = eg.make_gateway(
            tmp_path,
            gateways,
            names,
            lanes=[
                {"name": "held", "topics": [held], "when_full": "block"},
                {"name": "dropping", "topics": [dropping], "when_full": "drop-oldest"},
            ],
            local={"min_free_bytes": 4 * 1024 * 1024},
        )
        gw.start()
        eg.local_produce(gw.kafka, dropping, [b"old%05d" % i + b"x" * 992 for i in range(300)])
        fs.fill(leave=2 * 1024 * 1024)
        wait_for(lambda: gw.status()["local"]["disk_low"], 20, "the low-space state")
        assert "local.min_free_bytes=4194304" in gw.status()["local"]["disk_low"]
        # drop-oldest: new records go in, the oldest go out, counted
        eg.local_produce(gw.kafka, dropping, [b"new%05d" % i + b"x" * 992 for i in range(300)])
        lane = wait_for(
            lambda: (x := gw.lane("dropping"))["drops"].get("low-disk") and x,
            20,
            "drops counted as low-disk",
        )
        assert lane["drops"]["low-disk"]["records"] > 0
        # block: the producer waits, nothing is refused or dropped
        import threading

        done = threading.Event()
        threading.Thread(
            target=lambda: (
                eg.local_produce(gw.kafka, held, [b"h%04d" % i for i in range(50)]),
                done.set(),
            ),
            daemon=True,
        ).start()
        wait_for(lambda: gw.lane("held")["blocked"], 20, "the block lane to hold its producer")
        assert not done.is_set()
        fs.release()
        assert done.wait(30), "the held producer did not resume"
        recs = consume_all(gw.kafka, held, 50, timeout=30)
        assert [r[1] for r in recs] == [b"h%04d" % i for i in range(50)]
        assert gw.lane("held")["drops"] == {}
        assert gw.log().count("data directory low on space") == 1, gw.log()[-4000:]
        assert gw.stop() == 0
