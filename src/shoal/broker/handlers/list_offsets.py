"""ListOffsets: earliest, latest, max timestamp, and offset by timestamp."""

from __future__ import annotations

import datetime
import logging
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.broker.isolation import read_committed
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import AclOperation, ResourceType
from shoal.storage.errors import StorageError

log = logging.getLogger("shoal.list_offsets")

LATEST = -1
EARLIEST = -2
MAX_TIMESTAMP = -3
EARLIEST_LOCAL = -4  # tiered storage's "earliest local": everything is local here
LATEST_TIERED = -5  # v9+ (KIP-1005): nothing is tiered, so -1 as Kafka without remote storage


async def handle_list_offsets(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(2, header.api_version)
    topics = []
    committed = read_committed(body)
    for t in body.topics:
        parts = []
        for p in t.partitions:
            code, offset, ts, epoch = ErrorCode.none, -1, -1, -1
            try:
                broker.require(client, AclOperation.DESCRIBE, ResourceType.TOPIC, t.name)
                _topic, rec = broker.partition(t.name, p.partition_index)
                broker.check_owner(rec)
                broker.check_leader_epoch(rec, getattr(p, "current_leader_epoch", -1))
                epoch = rec.leader_epoch
                offset, ts = await _lookup(broker, rec.stream_id, p.timestamp, committed)
            except KafkaError as exc:
                code = exc.code
            except StorageError as exc:
                log.warning(
                    "list offsets %s-%d from %s: %s", t.name, p.partition_index, client, exc
                )
                code = ErrorCode.kafka_storage_error
            parts.append(
                s.ListOffsetsPartitionResponse(
                    partition_index=p.partition_index,
                    error_code=code,
                    timestamp=ts,
                    offset=offset,
                    leader_epoch=epoch,
                )
            )
        topics.append(s.ListOffsetsTopicResponse(name=t.name, partitions=tuple(parts)))
    return s.ListOffsetsResponse(throttle_time=datetime.timedelta(0), topics=tuple(topics))


async def _lookup(
    broker: Broker, stream_id: int, timestamp: int, committed: bool
) -> tuple[int, int]:
    start, end = await broker.engine.bounds(stream_id)
    if timestamp == LATEST:
        # read_committed: the last stable offset, as Kafka answers
        return (await broker.engine.last_stable_offset(stream_id) if committed else end), -1
    if timestamp in (EARLIEST, EARLIEST_LOCAL):
        return start, -1
    if timestamp == LATEST_TIERED:
        return -1, -1
    if timestamp == MAX_TIMESTAMP:
        found = await broker.engine.max_timestamp(stream_id)
        return found if found is not None else (-1, -1)
    if timestamp < 0:
        raise KafkaError(ErrorCode.invalid_request, f"unknown timestamp spec {timestamp}")
    found = await broker.engine.offset_for_timestamp(stream_id, timestamp)
    # Kafka answers "no record that late" with offset -1... except v0; we start at v1.
    return found if found is not None else (-1, -1)
