"""OffsetForLeaderEpoch: where an epoch ends, for client-side truncation checks.

Each partition's leader epoch only changes when its leadership moves; within
one epoch the answer is the high watermark.
"""

from __future__ import annotations

import datetime
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import AclOperation, ResourceType


async def handle_offset_for_leader_epoch(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(23, header.api_version)
    topics = []
    for t in body.topics:
        parts = []
        for p in t.partitions:
            code, epoch, end = ErrorCode.none, -1, -1
            try:
                broker.require(client, AclOperation.DESCRIBE, ResourceType.TOPIC, t.topic)
                _topic, rec = broker.partition(t.topic, p.partition)
                broker.check_owner(rec)
                broker.check_leader_epoch(rec, p.current_leader_epoch)
                if p.leader_epoch <= rec.leader_epoch:
                    epoch = rec.leader_epoch
                    end = (await broker.engine.bounds(rec.stream_id))[1]
            except KafkaError as exc:
                code = exc.code
            parts.append(
                s.EpochEndOffset(
                    error_code=code, partition=p.partition, leader_epoch=epoch, end_offset=end
                )
            )
        topics.append(s.OffsetForLeaderTopicResult(topic=t.topic, partitions=tuple(parts)))
    return s.OffsetForLeaderEpochResponse(throttle_time=datetime.timedelta(0), topics=tuple(topics))
