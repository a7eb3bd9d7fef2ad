"""A transactional producer's requests, raw (kio over wire.RawClient), at a
chosen version: for the tests that send what no client library sends (bad
input, KIP-890's versions)."""

from __future__ import annotations

import datetime
import importlib
import time
from typing import Any

from kio.schema.add_partitions_to_txn.v3 import request as ap3
from kio.schema.errors import ErrorCode

from shoal.protocol.batches import BatchBuilder
from shoal.protocol.records import TRANSACTIONAL_BIT
from wire import RawClient


def _request(api: str, version: int) -> Any:
    return importlib.import_module(f"kio.schema.{api}.v{version}.request")


def init(c: RawClient, tid: str, timeout_ms: int = 60_000, version: int = 4) -> Any:
    """InitProducerId (v3+) for a new producer; the response."""
    req = _request("init_producer_id", version)
    return c.call(
        22,
        version,
        req.InitProducerIdRequest(
            transactional_id=tid,
            transaction_timeout=datetime.timedelta(milliseconds=timeout_ms),
            producer_id=-1,
            producer_epoch=-1,
        ),
    )


def add_partitions(
    c: RawClient, tid: str, pid: int, epoch: int, topic: str, partitions: tuple[int, ...] = (0,)
) -> dict[int, ErrorCode]:
    """AddPartitionsToTxn v3 (the client form): each partition's code."""
    r = c.call(
        24,
        3,
        ap3.AddPartitionsToTxnRequest(
            v3_and_below_transactional_id=tid,
            v3_and_below_producer_id=pid,
            v3_and_below_producer_epoch=epoch,
            v3_and_below_topics=(ap3.AddPartitionsToTxnTopic(name=topic, partitions=partitions),),
        ),
    )
    (res,) = r.results_by_topic_v3_and_below
    return {int(p.partition_index): p.partition_error_code for p in res.results_by_partition}


def end(
    c: RawClient, tid: str, pid: int, epoch: int, commit: bool = True, version: int = 3
) -> ErrorCode:
    """EndTxn: its error code."""
    req = _request("end_txn", version)
    body = req.EndTxnRequest(
        transactional_id=tid, producer_id=pid, producer_epoch=epoch, committed=commit
    )
    return c.call(26, version, body).error_code


def txn_produce(
    c: RawClient,
    tid: str,
    topic: str,
    pid: int,
    epoch: int,
    seq: int = 0,
    value: bytes = b"v",
    partition: int = 0,
    version: int = 9,
) -> ErrorCode:
    """A transactional Produce of one record; its error code."""
    return txn_produce_many(c, tid, topic, pid, epoch, {partition: (seq, value)}, version)[
        partition
    ]


def txn_produce_many(
    c: RawClient,
    tid: str,
    topic: str,
    pid: int,
    epoch: int,
    records: dict[int, tuple[int, bytes]],
    version: int = 9,
) -> dict[int, ErrorCode]:
    """One transactional Produce of a record per partition ({partition:
    (sequence, value)}); each partition's error code."""
    req = _request("produce", version)
    data = []
    for partition, (seq, value) in records.items():
        b = BatchBuilder(
            producer_id=pid, producer_epoch=epoch, base_sequence=seq, attributes=TRANSACTIONAL_BIT
        )
        b.append(int(time.time() * 1000), None, value)
        data.append(req.PartitionProduceData(index=partition, records=b.build()))
    body = req.ProduceRequest(
        transactional_id=tid,
        acks=-1,
        timeout=datetime.timedelta(seconds=10),
        topic_data=(req.TopicProduceData(name=topic, partition_data=tuple(data)),),
    )
    (res,) = c.call(0, version, body).responses
    return {int(p.index): p.error_code for p in res.partition_responses}
