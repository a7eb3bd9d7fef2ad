"""One confluent-kafka group member in its own process, so a test can SIGKILL it.

    python group_worker.py BOOTSTRAP GROUP TOPIC '{"librdkafka": "settings"}'

Prints one JSON line per event on stdout, with `t` (the system-wide monotonic
clock, comparable between workers): `assign` / `revoke` with partitions,
and `msg` for each record, printed only after its offset is committed
synchronously, so a record printed by a member that is then killed is never
delivered again. A failed commit rewinds to the record instead. SIGTERM closes
the consumer gracefully (LeaveGroup); SIGKILL leaves the group to expire.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition


def out(**event: Any) -> None:
    print(json.dumps({**event, "t": time.monotonic()}), flush=True)


def main() -> None:
    bootstrap, group, topic = sys.argv[1:4]
    extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 3000,
        "heartbeat.interval.ms": 250,
        **extra,
    }
    if conf.get("group.protocol") == "consumer":  # KIP-848: the broker sets these
        conf.pop("session.timeout.ms")
        conf.pop("heartbeat.interval.ms")
    consumer = Consumer(conf)
    running = True

    def stop(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)

    def on_assign(c: Consumer, parts: list[TopicPartition]) -> None:
        out(event="assign", partitions=sorted(p.partition for p in parts))

    def on_revoke(c: Consumer, parts: list[TopicPartition]) -> None:
        out(event="revoke", partitions=sorted(p.partition for p in parts))

    consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    out(event="started")
    while running:
        m = consumer.poll(0.1)
        if m is None:
            continue
        if m.error():
            out(event="error", error=str(m.error()))
            continue
        try:
            consumer.commit(message=m, asynchronous=False)
        except KafkaException as exc:
            out(event="commit_failed", partition=m.partition(), offset=m.offset(), error=str(exc))
            try:
                consumer.seek(TopicPartition(m.topic(), m.partition(), m.offset()))
            except KafkaException:
                pass  # no longer ours: the next owner starts from the commit
            continue
        value = m.value()
        out(
            event="msg",
            partition=m.partition(),
            offset=m.offset(),
            value=value.decode() if value is not None else None,
        )
    consumer.close()
    out(event="closed")


if __name__ == "__main__":
    main()
