"""AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and TxnOffsetCommit (and
InitProducerId with a transactional id, from producer_ids): the transactional
producer's requests to its coordinator. The state machine is
`shoal.txn.coordinator`; these handlers check authorization and translate."""

from __future__ import annotations

import datetime
import logging
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType
from shoal.storage.errors import StorageError
from shoal.txn.state import TV2, PendingOffset, TopicPartition, TxnError

log = logging.getLogger("shoal.transactions")
ZERO = datetime.timedelta(0)

#: first version of each API that knows PRODUCER_FENCED (KIP-588); older
#: ones get INVALID_PRODUCER_EPOCH for the same situation
FENCED_SINCE = {22: 4, 24: 2, 25: 2, 26: 2, 28: 3}


def fenced_code(header: RequestHeader) -> ErrorCode:
    if header.api_version >= FENCED_SINCE[header.api_key]:
        return ErrorCode.producer_fenced
    return ErrorCode.invalid_producer_epoch


async def run(
    broker: Broker, client: Client, what: str, tid: str, op: Any, coordinator: bool = True
) -> ErrorCode:
    """Await a coordinator call: a TxnError becomes its code, a storage or
    metadata failure a retriable COORDINATOR_NOT_AVAILABLE (the decision, once
    saved, is finished by the retry or the next sweep). `coordinator`: the
    request must reach the id's coordinator (all but TxnOffsetCommit, which
    goes to the group's)."""
    if coordinator and broker.coordinator_node(tid).node_id != broker.node.node_id:
        op.close()
        return ErrorCode.not_coordinator
    try:
        await op
    except TxnError as exc:
        log.info("%s for %r from %s: %s (%s)", what, tid, client, exc.code.name, exc)
        return exc.code
    except (StorageError, OSError, RuntimeError) as exc:
        log.warning("%s for %r from %s failed: %s", what, tid, client, exc)
        return ErrorCode.coordinator_not_available
    except Exception as exc:  # SQLAlchemy errors from the metadata store
        log.warning("%s for %r from %s failed: %r", what, tid, client, exc)
        return ErrorCode.coordinator_not_available
    return ErrorCode.none


def may_write_txn(broker: Broker, client: Client, tid: str) -> bool:
    return broker.authorize(client, AclOperation.WRITE, ResourceType.TRANSACTIONAL_ID, tid)


async def handle_add_partitions_to_txn(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """v0-3: the client's form, one transaction per request. v4+: the
    broker-to-broker form (Kafka's brokers send it to verify or add the
    partitions of a transactional produce): a batch of transactions, each
    verify-only or an add, answered per transaction."""
    s = Schema(24, header.api_version)
    if header.api_version >= 4:
        return await _add_partitions_batch(broker, client, header, body, s)
    tid = body.v3_and_below_transactional_id
    topics = body.v3_and_below_topics
    codes = await _add_one(
        broker,
        client,
        header,
        tid,
        int(body.v3_and_below_producer_id),
        int(body.v3_and_below_producer_epoch),
        topics,
        verify_only=False,
    )
    return s.AddPartitionsToTxnResponse(
        throttle_time=ZERO, results_by_topic_v3_and_below=_topic_results(s, topics, codes)
    )


async def _add_partitions_batch(
    broker: Broker, client: Client, header: RequestHeader, body: Any, s: Schema
) -> Any:
    """Kafka authorizes the batch with CLUSTER_ACTION (it comes from a
    broker) instead of WRITE on each transactional id. A transactional id
    named twice makes the batch INVALID_REQUEST (Kafka keys the batch by id)."""
    tids = [t.transactional_id for t in body.transactions]
    top = ErrorCode.none
    if not broker.authorize(
        client, AclOperation.CLUSTER_ACTION, ResourceType.CLUSTER, CLUSTER_NAME
    ):
        top = ErrorCode.cluster_authorization_failed
    elif len(set(tids)) != len(tids):
        top = ErrorCode.invalid_request
    if top != ErrorCode.none:
        log.info("AddPartitionsToTxn v%d from %s: %s", header.api_version, client, top.name)
        return s.AddPartitionsToTxnResponse(
            throttle_time=ZERO, error_code=top, results_by_transaction=()
        )
    results = []
    for t in body.transactions:
        codes = await _add_one(
            broker,
            client,
            header,
            t.transactional_id,
            int(t.producer_id),
            int(t.producer_epoch),
            t.topics,
            verify_only=bool(t.verify_only),
        )
        if header.api_version < 5:
            # TRANSACTION_ABORTABLE is v5's; Kafka gives older callers this
            codes = {
                tp: ErrorCode.invalid_txn_state if c == ErrorCode.transaction_abortable else c
                for tp, c in codes.items()
            }
        results.append(
            s.AddPartitionsToTxnResult(
                transactional_id=t.transactional_id,
                topic_results=_topic_results(s, t.topics, codes),
            )
        )
    return s.AddPartitionsToTxnResponse(
        throttle_time=ZERO, error_code=ErrorCode.none, results_by_transaction=tuple(results)
    )


def _topic_results(s: Schema, topics: Any, codes: dict[TopicPartition, ErrorCode]) -> Any:
    return tuple(
        s.AddPartitionsToTxnTopicResult(
            name=t.name,
            results_by_partition=tuple(
                s.AddPartitionsToTxnPartitionResult(
                    partition_index=p, partition_error_code=codes[(t.name, int(p))]
                )
                for p in t.partitions
            ),
        )
        for t in topics
    )


async def _add_one(
    broker: Broker,
    client: Client,
    header: RequestHeader,
    tid: str,
    producer_id: int,
    epoch: int,
    topics: Any,
    verify_only: bool,
) -> dict[TopicPartition, ErrorCode]:
    """One transaction's partitions: checked (authorization before v4, the
    topics exist), then added, or with `verify_only` looked up."""
    wanted = [(t.name, int(p)) for t in topics for p in t.partitions]
    if header.api_version < 4 and not may_write_txn(broker, client, tid):
        return dict.fromkeys(wanted, ErrorCode.transactional_id_authorization_failed)
    if not tid:
        # Kafka's coordinator: a transaction needs an id
        log.info("AddPartitionsToTxn from %s without a transactional id", client)
        return dict.fromkeys(wanted, ErrorCode.invalid_request)
    bad: dict[TopicPartition, ErrorCode] = {}
    for name in {t.name for t in topics}:
        if not broker.authorize(client, AclOperation.WRITE, ResourceType.TOPIC, name):
            bad.update(
                dict.fromkeys(
                    [tp for tp in wanted if tp[0] == name], ErrorCode.topic_authorization_failed
                )
            )
    for tp in wanted:
        if tp not in bad:
            topic = broker.topics.get(tp[0])
            if topic is None or not 0 <= tp[1] < len(topic.partitions):
                bad[tp] = ErrorCode.unknown_topic_or_partition
    if bad:
        # Kafka: nothing is added; the rest are OPERATION_NOT_ATTEMPTED
        log.info(
            "AddPartitionsToTxn for %r from %s refused: %s",
            tid,
            client,
            ", ".join(f"{t}-{p} {c.name}" for (t, p), c in sorted(bad.items())),
        )
        return {tp: bad.get(tp, ErrorCode.operation_not_attempted) for tp in wanted}
    if verify_only:
        out: list[dict[TopicPartition, ErrorCode]] = []

        async def verify() -> None:
            out.append(await broker.txn.verify(tid, producer_id, epoch, wanted))

        code = await run(broker, client, "AddPartitionsToTxn (verify)", tid, verify())
        return out[0] if out and code == ErrorCode.none else dict.fromkeys(wanted, code)
    code = await run(
        broker,
        client,
        "AddPartitionsToTxn",
        tid,
        broker.txn.add_partitions(tid, producer_id, epoch, wanted, fenced_code(header)),
    )
    return dict.fromkeys(wanted, code)


async def handle_add_offsets_to_txn(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(25, header.api_version)
    tid = body.transactional_id
    if not may_write_txn(broker, client, tid):
        code = ErrorCode.transactional_id_authorization_failed
    elif not broker.authorize(client, AclOperation.READ, ResourceType.GROUP, body.group_id):
        code = ErrorCode.group_authorization_failed
    else:
        code = await run(
            broker,
            client,
            "AddOffsetsToTxn",
            tid,
            broker.txn.add_offsets(
                tid,
                int(body.producer_id),
                int(body.producer_epoch),
                body.group_id,
                fenced_code(header),
            ),
        )
    return s.AddOffsetsToTxnResponse(throttle_time=ZERO, error_code=code)


async def handle_end_txn(broker: Broker, client: Client, header: RequestHeader, body: Any) -> Any:
    """v5 is KIP-890's (transaction version 2): the end bumps the epoch and
    the answer carries the producer id and epoch to go on with."""
    s = Schema(26, header.api_version)
    tid = body.transactional_id
    out: list[tuple[int, int]] = []

    async def end() -> None:
        out.append(
            await broker.txn.end_txn(
                tid,
                int(body.producer_id),
                int(body.producer_epoch),
                bool(body.committed),
                fenced_code(header),
                TV2 if header.api_version >= 5 else 0,
            )
        )

    if not may_write_txn(broker, client, tid):
        code = ErrorCode.transactional_id_authorization_failed
    else:
        code = await run(broker, client, "EndTxn", tid, end())
    if header.api_version < 5:
        return s.EndTxnResponse(throttle_time=ZERO, error_code=code)
    pid, epoch = out[0] if out and code == ErrorCode.none else (-1, -1)
    return s.EndTxnResponse(
        throttle_time=ZERO, error_code=code, producer_id=pid, producer_epoch=epoch
    )


async def handle_txn_offset_commit(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """Offsets held by the transaction until it ends: applied to the group
    at commit, dropped at abort. v3+ carry the member's generation, checked
    as OffsetCommit checks it. v5 comes from a TV2 producer that sends no
    AddOffsetsToTxn: the group joins the transaction here (KIP-890)."""
    s = Schema(28, header.api_version)
    tid, group = body.transactional_id, body.group_id
    codes: dict[TopicPartition, ErrorCode] = {}
    if not may_write_txn(broker, client, tid):
        group_code = ErrorCode.transactional_id_authorization_failed
    elif not broker.authorize(client, AclOperation.READ, ResourceType.GROUP, group):
        group_code = ErrorCode.group_authorization_failed
    elif int(getattr(body, "generation_id", -1)) >= 0:
        group_code = broker.groups.check_commit(
            group,
            int(body.generation_id),
            body.member_id,
            getattr(body, "group_instance_id", None),
        )
    else:
        group_code = broker.groups.gate(group) or ErrorCode.none
    max_meta = broker.groups.config.offset_metadata_max_bytes
    offsets: dict[TopicPartition, PendingOffset] = {}
    for t in body.topics:
        allowed = broker.authorize(client, AclOperation.READ, ResourceType.TOPIC, t.name)
        topic = broker.topics.get(t.name)
        for p in t.partitions:
            tp = (t.name, int(p.partition_index))
            meta = p.committed_metadata or ""
            if group_code != ErrorCode.none:
                codes[tp] = group_code
            elif not allowed:
                codes[tp] = ErrorCode.topic_authorization_failed
            elif topic is None or not 0 <= tp[1] < len(topic.partitions):
                codes[tp] = ErrorCode.unknown_topic_or_partition
            elif len(meta) > max_meta:
                codes[tp] = ErrorCode.offset_metadata_too_large
            else:
                offsets[tp] = PendingOffset(
                    int(p.committed_offset), int(getattr(p, "committed_leader_epoch", -1)), meta
                )
    if group_code != ErrorCode.none:
        log.info("TxnOffsetCommit for %r group %r from %s: %s", tid, group, client, group_code.name)
    if offsets:
        code = await run(
            broker,
            client,
            "TxnOffsetCommit",
            tid,
            broker.txn.txn_offset_commit(
                tid,
                int(body.producer_id),
                int(body.producer_epoch),
                group,
                offsets,
                fenced_code(header),
                implicit=header.api_version >= 5 and broker.txn.config.version >= TV2,
            ),
            coordinator=False,
        )
        codes.update(dict.fromkeys(offsets, code))
    return s.TxnOffsetCommitResponse(
        throttle_time=ZERO,
        topics=tuple(
            s.TxnOffsetCommitResponseTopic(
                name=t.name,
                partitions=tuple(
                    s.TxnOffsetCommitResponsePartition(
                        partition_index=p.partition_index,
                        error_code=codes[(t.name, int(p.partition_index))],
                    )
                    for p in t.partitions
                ),
            )
            for t in body.topics
        ),
    )
