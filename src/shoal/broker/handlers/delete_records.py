"""DeleteRecords: move a partition's log start offset forward."""

from __future__ import annotations

import datetime
import logging
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import AclOperation, ResourceType
from shoal.storage.errors import OffsetOutOfRange, StorageError

log = logging.getLogger("shoal.delete_records")


async def handle_delete_records(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(21, header.api_version)
    topics = []
    for t in body.topics:
        parts = []
        for p in t.partitions:
            code, low = ErrorCode.none, -1
            try:
                broker.require(client, AclOperation.DELETE, ResourceType.TOPIC, t.name)
                _topic, rec = broker.partition(t.name, p.partition_index)
                broker.check_owner(rec)
                offset = int(p.offset)
                if offset == -1:  # "up to the high watermark"
                    offset = (await broker.engine.bounds(rec.stream_id))[1]
                if offset < 0:
                    raise OffsetOutOfRange(offset, 0, 0)
                low = await broker.engine.trim(rec.stream_id, offset)
                log.info(
                    "deleted records of %s-%d before %d for %s",
                    t.name,
                    p.partition_index,
                    low,
                    client,
                )
            except KafkaError as exc:
                code = exc.code
            except OffsetOutOfRange:
                code = ErrorCode.offset_out_of_range
            except StorageError as exc:
                log.warning("delete records %s-%d: %s", t.name, p.partition_index, exc)
                code = ErrorCode.kafka_storage_error
            broker.audit.admin(
                client, "DeleteRecords", "TOPIC", t.name, code.name,
                partition=p.partition_index, offset=int(p.offset), low_watermark=low,
            )  # fmt: skip
            parts.append(
                s.DeleteRecordsPartitionResult(
                    partition_index=p.partition_index, low_watermark=low, error_code=code
                )
            )
        topics.append(s.DeleteRecordsTopicResult(name=t.name, partitions=tuple(parts)))
    return s.DeleteRecordsResponse(throttle_time=datetime.timedelta(0), topics=tuple(topics))
