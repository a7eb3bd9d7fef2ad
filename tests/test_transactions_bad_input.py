"""Transaction requests with bad input, over the raw protocol: each gets
Kafka's error code, and the broker goes on."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from kio.schema.add_offsets_to_txn.v3.request import AddOffsetsToTxnRequest
from kio.schema.add_partitions_to_txn.v3 import request as ap
from kio.schema.end_txn.v1.request import EndTxnRequest as EndTxnV1
from kio.schema.end_txn.v3.request import EndTxnRequest
from kio.schema.errors import ErrorCode
from kio.schema.init_producer_id.v4.request import InitProducerIdRequest
from kio.schema.produce.v9 import request as pr
from kio.schema.txn_offset_commit.v3 import request as tc

from harness import BrokerProcess
from shoal.protocol.batches import BatchBuilder
from shoal.protocol.records import TRANSACTIONAL_BIT
from wire import RawClient, create_topic


def init(c: RawClient, tid: str, timeout_ms: int = 60_000) -> Any:
    return c.call(
        22,
        4,
        InitProducerIdRequest(
            transactional_id=tid,
            transaction_timeout=datetime.timedelta(milliseconds=timeout_ms),
            producer_id=-1,
            producer_epoch=-1,
        ),
    )


def add_partitions(c: RawClient, tid: str, pid: int, epoch: int, topic: str) -> dict[int, int]:
    r = c.call(
        24,
        3,
        ap.AddPartitionsToTxnRequest(
            v3_and_below_transactional_id=tid,
            v3_and_below_producer_id=pid,
            v3_and_below_producer_epoch=epoch,
            v3_and_below_topics=(ap.AddPartitionsToTxnTopic(name=topic, partitions=(0, 1)),),
        ),
    )
    (res,) = r.results_by_topic_v3_and_below
    return {int(p.partition_index): p.partition_error_code for p in res.results_by_partition}


def end(c: RawClient, tid: str, pid: int, epoch: int, commit: bool = True) -> Any:
    return c.call(
        26,
        3,
        EndTxnRequest(
            transactional_id=tid, producer_id=pid, producer_epoch=epoch, committed=commit
        ),
    ).error_code


def txn_produce(c: RawClient, tid: str, topic: str, pid: int, epoch: int) -> Any:
    b = BatchBuilder(
        producer_id=pid, producer_epoch=epoch, base_sequence=0, attributes=TRANSACTIONAL_BIT
    )
    b.append(1_700_000_000_000, None, b"v")
    body = pr.ProduceRequest(
        transactional_id=tid,
        acks=-1,
        timeout=datetime.timedelta(seconds=10),
        topic_data=(
            pr.TopicProduceData(
                name=topic, partition_data=(pr.PartitionProduceData(index=0, records=b.build()),)
            ),
        ),
    )
    return c.call(0, 9, body).responses[0].partition_responses[0].error_code


@pytest.mark.parametrize("timeout_ms", [0, -1, 900_001])
def test_invalid_transaction_timeout(broker: BrokerProcess, timeout_ms: int) -> None:
    with RawClient(broker.bootstrap) as c:
        r = init(c, f"tx-timeout-{timeout_ms}", timeout_ms)
    assert r.error_code == ErrorCode.invalid_transaction_timeout


def test_end_txn_unknown_id_wrong_epoch_and_empty(broker: BrokerProcess) -> None:
    with RawClient(broker.bootstrap) as c:
        assert end(c, "never-initialised", 1, 0) == ErrorCode.invalid_producer_id_mapping
        r = init(c, "tx-end")
        pid, epoch = int(r.producer_id), int(r.producer_epoch)
        # nothing added: there is no transaction to end
        assert end(c, "tx-end", pid, epoch) == ErrorCode.invalid_txn_state
        assert end(c, "tx-end", pid + 1, epoch) == ErrorCode.invalid_producer_id_mapping
        assert end(c, "tx-end", pid, epoch + 1) == ErrorCode.producer_fenced
        old = c.call(
            26,
            1,
            EndTxnV1(
                transactional_id="tx-end", producer_id=pid, producer_epoch=epoch + 1, committed=True
            ),
        )
        assert old.error_code == ErrorCode.invalid_producer_epoch  # before KIP-588


def test_add_partitions_unknown_topic(broker: BrokerProcess, topic_name: str) -> None:
    assert int(create_topic(broker.bootstrap, topic_name, partitions=1)) == 0
    with RawClient(broker.bootstrap) as c:
        r = init(c, "tx-add")
        pid, epoch = int(r.producer_id), int(r.producer_epoch)
        # partition 1 does not exist; partition 0 is not added either
        codes = add_partitions(c, "tx-add", pid, epoch, topic_name)
        assert codes == {
            0: ErrorCode.operation_not_attempted,
            1: ErrorCode.unknown_topic_or_partition,
        }
        codes = add_partitions(c, "tx-add", pid, epoch, "no-such-topic")
        assert set(codes.values()) == {ErrorCode.unknown_topic_or_partition}
        # so there is still no open transaction
        assert end(c, "tx-add", pid, epoch) == ErrorCode.invalid_txn_state


def test_transactional_write_outside_the_transaction(
    broker: BrokerProcess, topic_name: str
) -> None:
    assert int(create_topic(broker.bootstrap, topic_name, partitions=1)) == 0
    with RawClient(broker.bootstrap) as c:
        r = init(c, "tx-write")
        pid, epoch = int(r.producer_id), int(r.producer_epoch)
        assert txn_produce(c, "tx-write", topic_name, pid, epoch) == ErrorCode.invalid_txn_state
        assert txn_produce(c, "no-such-id", topic_name, pid, epoch) == (
            ErrorCode.invalid_producer_id_mapping
        )
        # the same write after AddPartitionsToTxn is taken
        r2 = c.call(
            24,
            3,
            ap.AddPartitionsToTxnRequest(
                v3_and_below_transactional_id="tx-write",
                v3_and_below_producer_id=pid,
                v3_and_below_producer_epoch=epoch,
                v3_and_below_topics=(ap.AddPartitionsToTxnTopic(name=topic_name, partitions=(0,)),),
            ),
        )
        assert r2.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code == (
            ErrorCode.none
        )
        assert txn_produce(c, "tx-write", topic_name, pid, epoch) == ErrorCode.none
        assert end(c, "tx-write", pid, epoch, commit=False) == ErrorCode.none
        # a concurrent second transaction on the same id is a new incarnation's
        # business: the old epoch is refused
        r3 = init(c, "tx-write")
        assert int(r3.producer_epoch) == epoch + 1
        assert (
            txn_produce(c, "tx-write", topic_name, pid, epoch) == ErrorCode.invalid_producer_epoch
        )


def test_txn_offset_commit_without_add_offsets(broker: BrokerProcess, topic_name: str) -> None:
    assert int(create_topic(broker.bootstrap, topic_name, partitions=1)) == 0
    with RawClient(broker.bootstrap) as c:
        r = init(c, "tx-offsets")
        pid, epoch = int(r.producer_id), int(r.producer_epoch)

        def commit(generation: int) -> Any:
            body = tc.TxnOffsetCommitRequest(
                transactional_id="tx-offsets",
                group_id="g-offsets",
                producer_id=pid,
                producer_epoch=epoch,
                generation_id=generation,
                member_id="",
                group_instance_id=None,
                topics=(
                    tc.TxnOffsetCommitRequestTopic(
                        name=topic_name,
                        partitions=(
                            tc.TxnOffsetCommitRequestPartition(
                                partition_index=0,
                                committed_offset=3,
                                committed_leader_epoch=-1,
                                committed_metadata=None,
                            ),
                        ),
                    ),
                ),
            )
            return c.call(28, 3, body).topics[0].partitions[0].error_code

        assert commit(-1) == ErrorCode.invalid_txn_state
        added = c.call(
            25,
            3,
            AddOffsetsToTxnRequest(
                transactional_id="tx-offsets",
                producer_id=pid,
                producer_epoch=epoch,
                group_id="g-offsets",
            ),
        )
        assert added.error_code == ErrorCode.none
        # a generation the group never had
        assert commit(5) in (ErrorCode.illegal_generation, ErrorCode.unknown_member_id)
        assert commit(-1) == ErrorCode.none
