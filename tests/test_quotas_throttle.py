"""Quotas enforced by throttling, end to end with confluent-kafka: a producer
and a consumer over their byte rates keep near their quota over the run, see
throttle events (throttle_cb), stay connected, and every record arrives once.

The broker measures over 2 one-second samples (quota.window.num=2) so that
the burst a fresh client may make before it is throttled (about one window of
its quota) stays small against a run of a few seconds.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from kafka.protocol.admin import AlterClientQuotasRequest
from kio.index import load_response_schema
from kio.schema.api_versions.v0.request import ApiVersionsRequest
from kio.serial import entity_reader

from harness import BrokerProcess
from test_quotas import Admin
from wire import (
    RawClient,
    create_topic,
    fetch_request,
    make_batch,
    produce_request,
    record,
    request_frame,
)

RATE = 200_000  # bytes/s
RECORDS = 1500
SIZE = 1000  # value bytes per record: 1.5 MB in all, seven and a half times the quota
E = AlterClientQuotasRequest.EntryData


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(
        tmp_path_factory.mktemp("throttle") / "data",
        env={"SHOAL_QUOTA_WINDOW_NUM": "2", "SHOAL_QUOTA_WINDOW_SIZE_SECONDS": "1"},
    ).start()
    a = Admin(b.bootstrap)
    quotas = {
        "slow-producer": "producer_byte_rate",
        "held-producer": "producer_byte_rate",
        "slow-consumer": "consumer_byte_rate",
        "sized-consumer": "consumer_byte_rate",
        "busy-client": "request_percentage",
    }
    # request_percentage 0.01: a tenth of a millisecond of handling per second
    value = {"request_percentage": 0.01}
    entries = [
        ({"client-id": cid}, {key: value.get(key, float(RATE))}) for cid, key in quotas.items()
    ]
    assert a.alter(*entries) == [(0, None)] * len(entries)
    a.client.close()
    yield b
    b.stop()


class Watch:
    """What librdkafka tells: throttle events and, from its statistics, how
    often it (re)connected to the broker."""

    def __init__(self) -> None:
        self.throttles: list[int] = []
        self.connects = 0
        self.disconnects = 0

    def on_throttle(self, event: Any) -> None:
        self.throttles.append(int(event.throttle_time * 1000))

    def on_stats(self, text: str) -> None:
        stats = json.loads(text)
        for b in stats["brokers"].values():
            if b.get("nodeid", -1) >= 0:  # not the bootstrap placeholder
                self.connects = max(self.connects, int(b["connects"]))
                self.disconnects = max(self.disconnects, int(b["disconnects"]))

    def settings(self) -> dict[str, Any]:
        return {
            "throttle_cb": self.on_throttle,
            "stats_cb": self.on_stats,
            "statistics.interval.ms": 200,
        }


def produce(boot: str, topic: str, client_id: str, watch: Watch | None) -> float:
    """Send RECORDS records as fast as the client may; seconds taken until all
    are acknowledged."""
    conf: dict[str, Any] = {
        "bootstrap.servers": boot,
        "client.id": client_id,
        # the application may only run 100 KB ahead of what was sent, so the
        # run lasts as long as the broker lets the bytes in
        "queue.buffering.max.kbytes": 100,
    }
    if watch is not None:
        conf.update(watch.settings())
    p = Producer(conf)
    failed: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err)

    start = time.monotonic()
    for i in range(RECORDS):
        value = f"{i:08d}".encode() + b"x" * (SIZE - 8)
        while True:
            try:
                p.produce(topic, value, partition=0, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(120) == 0
    elapsed = time.monotonic() - start
    p.poll(0.5)  # the last statistics
    assert failed == []
    return elapsed


def consume_all(
    boot: str, topic: str, client_id: str, watch: Watch | None
) -> tuple[list[int], float]:
    conf: dict[str, Any] = {
        "bootstrap.servers": boot,
        "client.id": client_id,
        "group.id": f"g-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    if watch is not None:
        conf.update(watch.settings())
    c = Consumer(conf)
    c.subscribe([topic])
    seen: list[int] = []
    start: float | None = None
    deadline = time.monotonic() + 120
    try:
        while len(seen) < RECORDS and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            if start is None:
                start = time.monotonic()
            seen.append(int(msg.value()[:8]))
        elapsed = time.monotonic() - (start or time.monotonic())
        end = time.monotonic() + 0.5
        while time.monotonic() < end:  # nothing more than RECORDS, and the last stats
            msg = c.poll(0.1)
            if msg is not None and msg.error() is None:
                seen.append(int(msg.value()[:8]))
    finally:
        c.close()
    return seen, elapsed


def test_producer_over_quota_is_throttled_not_dropped(broker: BrokerProcess) -> None:
    topic = f"q-{uuid.uuid4().hex[:8]}"
    assert create_topic(broker.bootstrap, topic) == 0
    watch = Watch()
    elapsed = produce(broker.bootstrap, topic, "slow-producer", watch)
    sent = RECORDS * SIZE
    rate = sent / elapsed
    print(
        f"producer: {rate / 1000:.0f} KB/s against {RATE / 1000:.0f}, throttles {watch.throttles}"
    )
    # near the quota: above it by about the first window's burst (one of
    # the run's five seconds, so up to 1.3x), and not starved
    assert RATE * 0.6 < rate < RATE * 1.5, (rate, elapsed, watch.throttles)
    assert watch.throttles and max(watch.throttles) > 0
    assert watch.connects == 1 and watch.disconnects == 0
    seen, _ = consume_all(broker.bootstrap, topic, "fast-consumer", None)
    assert sorted(seen) == list(range(RECORDS))  # every record, once


def test_producer_without_quota_is_not_throttled(broker: BrokerProcess) -> None:
    topic = f"q-{uuid.uuid4().hex[:8]}"
    assert create_topic(broker.bootstrap, topic) == 0
    watch = Watch()
    elapsed = produce(broker.bootstrap, topic, "free-producer", watch)
    assert watch.throttles == [] or max(watch.throttles) == 0
    assert RECORDS * SIZE / elapsed > RATE * 2  # the quota's client is what is slow


def test_consumer_over_quota_is_throttled_not_dropped(broker: BrokerProcess) -> None:
    topic = f"q-{uuid.uuid4().hex[:8]}"
    assert create_topic(broker.bootstrap, topic) == 0
    produce(broker.bootstrap, topic, "fast-producer", None)
    watch = Watch()
    seen, elapsed = consume_all(broker.bootstrap, topic, "slow-consumer", watch)
    assert sorted(seen) == list(range(RECORDS))  # every record, once
    rate = RECORDS * SIZE / elapsed
    print(
        f"consumer: {rate / 1000:.0f} KB/s against {RATE / 1000:.0f}, throttles {watch.throttles}"
    )
    assert RATE * 0.6 < rate < RATE * 1.5, (rate, elapsed, watch.throttles)
    assert watch.throttles and max(watch.throttles) > 0
    assert watch.connects == 1 and watch.disconnects == 0


def call(raw: RawClient, api_key: int, version: int, body: Any, client_id: str) -> Any:
    """One request with our client id; its response."""
    raw.send_raw(request_frame(api_key, version, body, client_id=client_id))
    frame = raw.read_frame()
    cls = load_response_schema(api_key, version)
    pos = 5 if cls.__flexible__ and api_key != 18 else 4
    return entity_reader(cls)(frame, pos)[0]


def test_fetch_answers_are_sized_to_the_quota_and_throttled(broker: BrokerProcess) -> None:
    """A consumer over its quota gets at most one window of it per answer
    (plus one batch, KIP-74) even when asking for 50 MiB, and throttle_time."""
    topic = f"q-{uuid.uuid4().hex[:8]}"
    assert create_topic(broker.bootstrap, topic) == 0
    produce(broker.bootstrap, topic, "fast-producer", None)
    throttles = []
    with RawClient(broker.bootstrap) as raw:
        offset = 0
        for _ in range(4):
            resp = call(
                raw, 1, 12, fetch_request(topic, {0: offset}, 50 << 20, 50 << 20), "sized-consumer"
            )
            part = resp.responses[0].partitions[0]
            assert 0 < len(part.records) <= RATE + 20_000, (
                len(throttles),
                len(part.records),
                Admin(broker.bootstrap).all(),
            )
            throttles.append(resp.throttle_time.total_seconds())
    # ~100 KB per answer (whole batches within 200 KB) against 200 KB/s over
    # one second: the first is within, then the answers earn throttles
    assert throttles[0] == 0 and max(throttles) > 0.4, throttles


def test_throttled_produce_holds_the_channel(broker: BrokerProcess) -> None:
    """Produce v9 over the quota: data stored, throttle_time in the answer,
    and the broker reads nothing more from the connection for that long."""
    topic = f"q-{uuid.uuid4().hex[:8]}"
    assert create_topic(broker.bootstrap, topic) == 0
    batch = make_batch([record(None, b"v" * 1000, i) for i in range(400)])  # ~400 KB
    api = ApiVersionsRequest()
    with RawClient(broker.bootstrap) as raw:
        resp = call(raw, 0, 9, produce_request(topic, batch), "held-producer")
        part = resp.responses[0].partition_responses[0]
        assert part.error_code == 0 and part.base_offset == 0
        throttle = resp.throttle_time.total_seconds()
        assert throttle > 0.5  # 400 KB over one second against 200 KB/s
        start = time.monotonic()
        call(raw, 18, 0, api, "held-producer")
        held = time.monotonic() - start
    assert held >= throttle * 0.8, (held, throttle)
    # a client without a quota is answered at once
    with RawClient(broker.bootstrap) as raw:
        resp = call(raw, 0, 9, produce_request(topic, batch), "free-producer")
        assert resp.throttle_time.total_seconds() == 0


def test_request_percentage_throttles_any_request(broker: BrokerProcess) -> None:
    """Metadata requests over a request-time quota: throttle_time set, at most
    one window (Kafka bounds this one), the connection kept."""
    from kio.schema.metadata.v12.request import MetadataRequest

    body = MetadataRequest(
        topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False
    )
    throttles = []
    with RawClient(broker.bootstrap) as raw:
        deadline = time.monotonic() + 20
        while not any(throttles) and time.monotonic() < deadline:
            throttles.append(call(raw, 3, 12, body, "busy-client").throttle_time.total_seconds())
        assert any(throttles), throttles
        assert max(throttles) <= 1.0
        # ApiVersions is exempt, and the connection still answers
        assert call(raw, 18, 0, ApiVersionsRequest(), "busy-client").error_code == 0
