"""DescribeLogDirs and AlterReplicaLogDirs.

Shoal keeps no log directories: every partition lives in the object store. A
broker answers with that store as its one log directory, holding the
partitions it owns, each at the size of its stored ranges (one grouped query
over the metadata store, no object is read). Moving a replica between
directories cannot mean anything, so AlterReplicaLogDirs is refused with
Kafka's error for a directory the broker does not have.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from sqlalchemy import func, select

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.meta import schema as ms
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType

log = logging.getLogger("shoal.log_dirs")
ZERO = datetime.timedelta(0)
UNKNOWN_BYTES = -1  # total and usable bytes of an object store: not known


async def stream_sizes(broker: Broker, stream_ids: list[int]) -> dict[int, int]:
    """Bytes stored per stream (committed ranges not yet trimmed away)."""
    if not stream_ids:
        return {}
    r, st = ms.stream_ranges, ms.streams
    rows = await broker.meta.execute_read(
        select(r.c.stream_id, func.sum(r.c.size))
        .select_from(r.join(st, st.c.id == r.c.stream_id))
        .where(r.c.stream_id.in_(stream_ids), r.c.end_offset > st.c.start_offset)
        .group_by(r.c.stream_id)
    )
    return {int(sid): int(size or 0) for sid, size in rows}


async def handle_describe_log_dirs(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(35, header.api_version)
    if not broker.authorize(client, AclOperation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME):
        return s.DescribeLogDirsResponse(
            throttle_time=ZERO, error_code=ErrorCode.cluster_authorization_failed, results=()
        )
    wanted: dict[str, set[int] | None]
    if body.topics is None:
        wanted = {t.name: None for t in broker.topics.all()}
    else:
        wanted = {t.topic: set(t.partitions) for t in body.topics}
    chosen: list[tuple[str, int, int]] = []  # topic, partition, stream id
    for name, parts in wanted.items():
        topic = broker.topics.get(name)
        if topic is None:
            continue  # Kafka leaves out what the broker does not host
        for p in topic.partitions:
            if (parts is None or p.partition in parts) and broker.owns(p):
                chosen.append((name, p.partition, p.stream_id))
    sizes = await stream_sizes(broker, [sid for _, _, sid in chosen])
    by_topic: dict[str, list[Any]] = {}
    for name, index, sid in chosen:
        by_topic.setdefault(name, []).append(
            s.DescribeLogDirsPartition(
                partition_index=index,
                partition_size=sizes.get(sid, 0),
                offset_lag=0,
                is_future_key=False,
            )
        )
    result = s.DescribeLogDirsResult(
        error_code=ErrorCode.none,
        log_dir=broker.config.objects_url,
        topics=tuple(
            s.DescribeLogDirsTopic(name=n, partitions=tuple(ps)) for n, ps in by_topic.items()
        ),
        total_bytes=UNKNOWN_BYTES,
        usable_bytes=UNKNOWN_BYTES,
    )
    return s.DescribeLogDirsResponse(
        throttle_time=ZERO, error_code=ErrorCode.none, results=(result,)
    )


async def handle_alter_replica_log_dirs(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(34, header.api_version)
    allowed = broker.authorize(client, AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME)
    by_topic: dict[str, list[Any]] = {}
    for d in body.dirs:
        for t in d.topics:
            for index in t.partitions:
                if not allowed:
                    code = ErrorCode.cluster_authorization_failed
                elif broker.topics.get(t.name) is None:
                    code = ErrorCode.unknown_topic_or_partition
                else:
                    # Kafka's answer for a directory the broker does not have
                    code = ErrorCode.log_dir_not_found
                by_topic.setdefault(t.name, []).append(
                    s.AlterReplicaLogDirPartitionResult(partition_index=index, error_code=code)
                )
            log.info(
                "alter replica log dirs %s to %r from %s refused: data lives in the object store",
                t.name,
                d.path,
                client,
            )
    return s.AlterReplicaLogDirsResponse(
        throttle_time=ZERO,
        results=tuple(
            s.AlterReplicaLogDirTopicResult(topic_name=n, partitions=tuple(ps))
            for n, ps in by_topic.items()
        ),
    )
