"""Idempotent producers: retries never create a second copy, gaps are refused,
and the state survives a restart."""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from kio.schema.errors import ErrorCode

from harness import BrokerProcess
from proxy import CuttingProxy
from test_bad_input import create_topic
from wire import RawClient, make_batch


def init_producer_id(bootstrap: str, pid: int = -1, epoch: int = -1) -> tuple[int, int]:
    from kio.schema.init_producer_id.v4.request import InitProducerIdRequest

    with RawClient(bootstrap) as c:
        r = c.call(
            22,
            4,
            InitProducerIdRequest(
                transactional_id=None,
                transaction_timeout=datetime.timedelta(seconds=60),
                producer_id=pid,
                producer_epoch=epoch,
            ),
        )
    assert r.error_code == ErrorCode.none
    return int(r.producer_id), int(r.producer_epoch)


def produce(c: RawClient, topic: str, records: bytes) -> Any:
    from kio.schema.produce.v9 import request as pr

    body = pr.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(seconds=10),
        topic_data=(
            pr.TopicProduceData(
                name=topic, partition_data=(pr.PartitionProduceData(index=0, records=records),)
            ),
        ),
    )
    return c.call(0, 9, body).responses[0].partition_responses[0]


def end_offset(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "eo"})
    try:
        return int(c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1])
    finally:
        c.close()


def test_duplicate_gap_and_epoch(fresh_broker: BrokerProcess, topic_name: str) -> None:
    b = fresh_broker.start()
    assert create_topic(b.bootstrap, topic_name) == ErrorCode.none
    pid, epoch = init_producer_id(b.bootstrap)
    pid2, _ = init_producer_id(b.bootstrap)
    assert pid2 != pid

    def batch(seq: int, n: int = 2, e: int = epoch) -> bytes:
        return make_batch(
            [b"v%d" % (seq + i) for i in range(n)],
            producer_id=pid,
            producer_epoch=e,
            base_sequence=seq,
        )

    with RawClient(b.bootstrap) as c:
        first = produce(c, topic_name, batch(0))
        assert (first.error_code, first.base_offset) == (ErrorCode.none, 0)
        again = produce(c, topic_name, batch(0))  # the retry of a lost response
        assert (again.error_code, again.base_offset) == (ErrorCode.none, 0)
        assert end_offset(b.bootstrap, topic_name) == 2  # stored once
        gap = produce(c, topic_name, batch(5))
        assert gap.error_code == ErrorCode.out_of_order_sequence_number
        nxt = produce(c, topic_name, batch(2))
        assert (nxt.error_code, nxt.base_offset) == (ErrorCode.none, 2)
        stale = produce(c, topic_name, batch(4, e=epoch - 1 if epoch > 0 else -2))
        assert stale.error_code in (
            ErrorCode.invalid_producer_epoch,
            ErrorCode.out_of_order_sequence_number,
        )

    # The state survives a restart: the last batch is still known as a duplicate.
    b.restart()
    with RawClient(b.bootstrap) as c:
        dup = produce(c, topic_name, batch(2))
        assert (dup.error_code, dup.base_offset) == (ErrorCode.none, 2)
        assert end_offset(b.bootstrap, topic_name) == 4
        cont = produce(c, topic_name, batch(4))
        assert (cont.error_code, cont.base_offset) == (ErrorCode.none, 4)
    # An epoch bump (KIP-360) keeps the id and restarts sequences at 0.
    same_pid, bumped = init_producer_id(b.bootstrap, pid, epoch)
    assert (same_pid, bumped) == (pid, epoch + 1)
    with RawClient(b.bootstrap) as c:
        r = produce(c, topic_name, batch(0, e=bumped))
        assert (r.error_code, r.base_offset) == (ErrorCode.none, 6)
        r = produce(c, topic_name, batch(3, e=bumped))
        assert r.error_code == ErrorCode.out_of_order_sequence_number


def test_confluent_idempotent_through_connection_cuts(
    fresh_broker: BrokerProcess, topic_name: str
) -> None:
    """librdkafka with enable.idempotence=true, its connections cut repeatedly:
    every value arrives exactly once, in order."""
    proxy = CuttingProxy(fresh_broker.port)
    proxy.start()
    b = fresh_broker
    b.args = ["--advertise", proxy.address]
    b.start()
    assert create_topic(b.bootstrap, topic_name, 1) == ErrorCode.none
    producer = Producer(
        {
            "bootstrap.servers": proxy.address,
            "enable.idempotence": True,
            "linger.ms": 2,
            "message.timeout.ms": 120000,
        }
    )
    acked: list[int] = []
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            acked.append(int(msg.value()))

    stop = threading.Event()

    def cutter() -> None:
        while not stop.wait(0.7):
            proxy.cut()

    t = threading.Thread(target=cutter, daemon=True)
    t.start()
    n = 3000
    for i in range(n):
        producer.produce(topic_name, value=b"%d" % i, on_delivery=on_delivery)
        if i % 50 == 0:
            producer.poll(0)
            time.sleep(0.1)  # about 6 s of producing, through several cuts
    remaining = producer.flush(90)
    stop.set()
    t.join()
    assert remaining == 0 and not errors, errors[:3]
    assert proxy.cuts > 3
    consumer = Consumer(
        {"bootstrap.servers": b.bootstrap, "group.id": "idem", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic_name, 0, 0)])
    values: list[int] = []
    deadline = time.monotonic() + 60
    while len(values) < n and time.monotonic() < deadline:
        for m in consumer.consume(1000, 1.0):
            if m.error() is None:
                values.append(int(m.value()))
    consumer.close()
    proxy.stop()
    assert values == list(range(n)), f"dups or gaps: {len(values)} values"
