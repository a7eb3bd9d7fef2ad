"""Exactly-once forwarding: the central offsets topic and transaction figures.

An exactly-once uplink commits the records it forwarded and its forwarding
progress in one Kafka transaction, as Kafka Connect's exactly-once source
connectors do: the progress is a record in a compacted central topic (default
`_shoal_edge_offsets`), key `site/uplink/topic/partition`, value the next
local offset to forward. Only the standard protocol is used, so it works
against Apache Kafka as well as Shoal.

Every uplink writes its records to one partition of that topic (chosen by a
hash of `site/uplink`), so reading its positions back reads one partition.
To know it has read everything it committed, the uplink first commits a sync
record carrying a fresh nonce, then reads read_committed until it sees that
nonce: every earlier commit of its own lies before it.

The functions that talk to the cluster block (librdkafka calls); the uplink
runs them on a worker thread.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

log = logging.getLogger("shoal.edge.txn")

OFFSETS_TOPIC_PARTITIONS = 8
# librdkafka codes that mean another instance took the transactional id.
FENCED = {
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
}


def is_fenced(err: KafkaError) -> bool:
    """Another producer took the transactional id. librdkafka raises the
    fatal state as _FATAL on the calls that follow, with the cause in the
    text."""
    if err.code() in FENCED:
        return True
    return err.code() == KafkaError._FATAL and "fenced" in (err.str() or "").lower()


def is_fatal(err: KafkaError) -> bool:
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


class OffsetsTopicError(Exception):
    """The offsets topic is missing and cannot be created, or unusable."""


def progress_key(site: str, uplink: str, topic: str, partition: int) -> bytes:
    return f"{site}/{uplink}/{topic}/{partition}".encode()


def sync_key(site: str, uplink: str) -> bytes:
    # Three levels: never a progress key (topic names have no '/').
    return f"{site}/{uplink}/_sync".encode()


def encode_progress(next_offset: int) -> bytes:
    return json.dumps({"next_offset": next_offset}).encode()


def partition_for(site: str, uplink: str, partitions: int) -> int:
    """The offsets topic partition an uplink writes to and reads from."""
    return zlib.crc32(f"{site}/{uplink}".encode()) % max(partitions, 1)


def parse_positions(
    site: str, uplink: str, records: Iterable[tuple[bytes | None, bytes | None]]
) -> dict[tuple[str, int], int]:
    """Positions from (key, value) records in log order: the last value of
    each of this uplink's keys wins; a null value (tombstone) removes it;
    other sites' and uplinks' keys, and unreadable values, are ignored."""
    prefix = f"{site}/{uplink}/"
    out: dict[tuple[str, int], int] = {}
    for key, value in records:
        if key is None:
            continue
        try:
            k = key.decode()
        except UnicodeDecodeError:
            continue
        if not k.startswith(prefix):
            continue
        topic, sep, part = k[len(prefix) :].rpartition("/")
        if not sep or not topic or not part.isdigit():
            continue
        if value is None:
            out.pop((topic, int(part)), None)
            continue
        try:
            nxt = json.loads(value)["next_offset"]
        except (ValueError, KeyError, TypeError):
            log.warning("offsets topic: unreadable value for %s: %r", k, value[:100])
            continue
        if isinstance(nxt, int) and nxt >= 0:
            out[(topic, int(part))] = nxt
    return out


def ensure_offsets_topic(conf: dict[str, Any], topic: str, timeout: float) -> int:
    """The offsets topic's partition count, creating it (compacted) if it is
    missing. Raises OffsetsTopicError naming the topic when it cannot."""
    admin = AdminClient(conf)
    # All topics: a Metadata request naming a missing topic may create it
    # (auto-creation: not compacted).
    tm = admin.list_topics(timeout=timeout).topics.get(topic)
    if tm is not None and tm.error is None and tm.partitions:
        return len(tm.partitions)
    fut = admin.create_topics(
        [
            NewTopic(
                topic,
                num_partitions=OFFSETS_TOPIC_PARTITIONS,
                replication_factor=-1,
                config={"cleanup.policy": "compact"},
            )
        ],
        operation_timeout=timeout,
        request_timeout=timeout,
    )[topic]
    try:
        fut.result(timeout)
        log.info(
            "offsets topic %s created (compacted, %d partitions)", topic, OFFSETS_TOPIC_PARTITIONS
        )
    except KafkaException as exc:
        err = exc.args[0]
        if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise OffsetsTopicError(
                f"offsets topic {topic!r} is missing and cannot be created: {err.str()}; "
                "create it with cleanup.policy=compact or set uplinks[].offsets_topic"
            ) from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tm = admin.list_topics(timeout=timeout).topics.get(topic)
        if tm is not None and tm.error is None and tm.partitions:
            return len(tm.partitions)
        time.sleep(0.1)
    raise OffsetsTopicError(f"offsets topic {topic!r}: created but no partitions seen")


def read_positions(
    conf: dict[str, Any],
    topic: str,
    partition: int,
    site: str,
    uplink: str,
    nonce: bytes,
    timeout: float,
) -> dict[tuple[str, int], int]:
    """Read one partition of the offsets topic read_committed from the start
    until the sync record carrying `nonce`; this uplink's positions."""
    c = Consumer(
        {
            **conf,
            "group.id": f"shoal-edge-offsets-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
        }
    )
    records: list[tuple[bytes | None, bytes | None]] = []
    skey = sync_key(site, uplink)
    try:
        c.assign([TopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"offsets topic {topic!r} partition {partition}: sync record not seen "
                    f"within {timeout:.0f}s ({len(records)} records read)"
                )
            for m in c.consume(1000, 0.2):
                err = m.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    continue
                key, value = m.key(), m.value()
                if key == skey:
                    if value == nonce:
                        return parse_positions(site, uplink, records)
                    continue
                records.append((key, value))
    finally:
        c.close()


def new_nonce() -> bytes:
    return json.dumps({"sync": uuid.uuid4().hex}).encode()


@dataclass(slots=True)
class TxnStats:
    """What status and metrics show of an exactly-once uplink."""

    committed: int = 0
    aborted: int = 0
    init_timeouts: int = 0  # init_transactions found the cluster unreachable
    last_abort_reason: str | None = None
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    latency_sum_s: float = 0.0

    def commit_took(self, seconds: float) -> None:
        self.committed += 1
        self.latency_sum_s += seconds
        self.latencies_ms.append(seconds * 1000)

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        xs = sorted(self.latencies_ms)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1)
