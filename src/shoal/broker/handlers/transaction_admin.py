"""ListTransactions, DescribeTransactions, DescribeProducers and
WriteTxnMarkers: what operators (`kafka-transactions.sh`, admin clients)
ask about transactions, and the marker that ends a hanging one."""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType
from shoal.storage.errors import StorageError
from shoal.storage.producers import SequenceError
from shoal.txn.state import TxnState

log = logging.getLogger("shoal.transactions")
ZERO = datetime.timedelta(0)
#: Kafka's -1 "no time" through kio's non-nullable timestamp field
NO_TIME = datetime.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=datetime.UTC)
STATES = {s.value for s in TxnState}


def _time(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC) if ms >= 0 else NO_TIME


async def handle_list_transactions(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """The ids this broker coordinates that the client may DESCRIBE, filtered
    by state, producer id and (v1) time open."""
    s = Schema(66, header.api_version)
    states = set(body.state_filters)
    unknown = tuple(sorted(states - STATES))
    pids = {int(p) for p in body.producer_id_filters}
    min_open_ms = int(getattr(body, "duration_filter", -1))
    now = int(time.time() * 1000)
    listed = []
    for m in await broker.txn.coordinated():
        if states and m.state.value not in states:
            continue
        if pids and m.producer_id not in pids:
            continue
        if min_open_ms >= 0 and (m.state != TxnState.ONGOING or now - m.start_ms < min_open_ms):
            continue
        if not broker.authorize(
            client, AclOperation.DESCRIBE, ResourceType.TRANSACTIONAL_ID, m.transactional_id, False
        ):
            continue
        listed.append(
            s.TransactionState(
                transactional_id=m.transactional_id,
                producer_id=m.producer_id,
                transaction_state=m.state.value,
            )
        )
    return s.ListTransactionsResponse(
        throttle_time=ZERO,
        error_code=ErrorCode.none,
        unknown_state_filters=unknown,
        transaction_states=tuple(listed),
    )


async def handle_describe_transactions(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(65, header.api_version)
    out = []
    for tid in body.transactional_ids:
        code, meta = ErrorCode.none, None
        if not broker.authorize(client, AclOperation.DESCRIBE, ResourceType.TRANSACTIONAL_ID, tid):
            code = ErrorCode.transactional_id_authorization_failed
        elif broker.coordinator_node(tid).node_id != broker.node.node_id:
            code = ErrorCode.not_coordinator
        else:
            meta = await broker.txn.describe(tid)
            if meta is None:
                code = ErrorCode.transactional_id_not_found
        topics: dict[str, list[int]] = {}
        for t, p in sorted(meta.partitions) if meta is not None else ():
            topics.setdefault(t, []).append(p)
        out.append(
            s.TransactionState(
                error_code=code,
                transactional_id=tid,
                transaction_state=meta.state.value if meta else "",
                transaction_timeout=datetime.timedelta(milliseconds=meta.timeout_ms if meta else 0),
                # an error entry carries the field's default, 0, as Kafka's
                transaction_start_time=_time(meta.start_ms if meta else 0),
                producer_id=meta.producer_id if meta else -1,
                producer_epoch=meta.producer_epoch if meta else -1,
                topics=tuple(
                    s.TopicData(topic=t, partitions=tuple(ps)) for t, ps in topics.items()
                ),
            )
        )
    return s.DescribeTransactionsResponse(throttle_time=ZERO, transaction_states=tuple(out))


async def handle_describe_producers(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """Active producers of each partition the broker owns (Kafka: READ on the topic)."""
    s = Schema(61, header.api_version)
    topics = []
    for t in body.topics:
        allowed = broker.authorize(client, AclOperation.READ, ResourceType.TOPIC, t.name)
        parts = []
        for index in t.partition_indexes:
            code, message, active = ErrorCode.none, None, []
            try:
                if not allowed:
                    raise KafkaError(ErrorCode.topic_authorization_failed)
                _topic, rec = broker.partition(t.name, int(index))
                broker.check_owner(rec)
                for pid, e in sorted((await broker.engine.producers(rec.stream_id)).items()):
                    active.append(
                        s.ProducerState(
                            producer_id=pid,
                            producer_epoch=e.epoch,
                            last_sequence=e.last_seq,
                            last_timestamp=e.last_timestamp_ms,
                            coordinator_epoch=-1,
                            current_txn_start_offset=e.txn_first,
                        )
                    )
            except KafkaError as exc:
                code, message = exc.code, str(exc)
            except StorageError as exc:
                log.warning("DescribeProducers %s-%d from %s: %s", t.name, index, client, exc)
                code, message = ErrorCode.kafka_storage_error, str(exc)
            parts.append(
                s.PartitionResponse(
                    partition_index=index,
                    error_code=code,
                    error_message=message,
                    active_producers=tuple(active),
                )
            )
        topics.append(s.TopicResponse(name=t.name, partitions=tuple(parts)))
    return s.DescribeProducersResponse(throttle_time=ZERO, topics=tuple(topics))


async def handle_write_txn_markers(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """Markers written on request (Kafka: the coordinator's own request to
    partition leaders; here, `kafka-transactions.sh abort` or `shoal
    transactions abort` ending a hanging transaction). CLUSTER_ACTION on the
    cluster; each partition must be owned here."""
    s = Schema(27, header.api_version)
    allowed = broker.authorize(
        client, AclOperation.CLUSTER_ACTION, ResourceType.CLUSTER, CLUSTER_NAME
    )
    results = []
    for m in body.markers:
        topics = []
        for t in m.topics:
            parts = []
            for index in t.partition_indexes:
                code = ErrorCode.none
                try:
                    if not allowed:
                        raise KafkaError(ErrorCode.cluster_authorization_failed)
                    _topic, rec = broker.partition(t.name, int(index))
                    broker.check_owner(rec)
                    fut = await broker.engine.write_marker(
                        rec.stream_id,
                        int(m.producer_id),
                        int(m.producer_epoch),
                        bool(m.transaction_result),
                        int(m.coordinator_epoch),
                        rec.leader_epoch,
                    )
                    await fut
                    log.info(
                        "WriteTxnMarkers from %s: %s marker for producer %d on %s-%d",
                        client,
                        "commit" if m.transaction_result else "abort",
                        m.producer_id,
                        t.name,
                        index,
                    )
                except KafkaError as exc:
                    code = exc.code
                except SequenceError as exc:
                    code = ErrorCode[exc.code]
                except StorageError as exc:
                    log.warning("WriteTxnMarkers %s-%d from %s: %s", t.name, index, client, exc)
                    code = ErrorCode.kafka_storage_error
                parts.append(
                    s.WritableTxnMarkerPartitionResult(partition_index=index, error_code=code)
                )
            topics.append(s.WritableTxnMarkerTopicResult(name=t.name, partitions=tuple(parts)))
        results.append(s.WritableTxnMarkerResult(producer_id=m.producer_id, topics=tuple(topics)))
    return s.WriteTxnMarkersResponse(markers=tuple(results))
