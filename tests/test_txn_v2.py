"""Kafka 4's transaction protocol version 2 (KIP-890 part 2) over raw
requests (the Python clients speak version 1; librdkafka 2.16 too, even
when the broker finalizes transaction.version 2): ApiVersions features,
partitions joined by Produce v12, EndTxn v5 bumping the epoch and its
retries, AddPartitionsToTxn v4-5 (the broker-to-broker batch), TxnOffsetCommit
v5 without AddOffsetsToTxn, a broker kept at version 1, and the epoch
overflow on the coordinator in-process. One broker for the module."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from kio.schema.add_partitions_to_txn.v5 import request as ap5
from kio.schema.api_versions.v3.request import ApiVersionsRequest as ApiVersionsV3
from kio.schema.api_versions.v4.request import ApiVersionsRequest as ApiVersionsV4
from kio.schema.end_txn.v5.request import EndTxnRequest as EndTxnV5
from kio.schema.errors import ErrorCode
from kio.schema.offset_fetch.v7 import request as of
from kio.schema.txn_offset_commit.v5 import request as tc5

import txn_helpers
from harness import BrokerProcess
from shoal.meta.store import MetaStore
from txn_helpers import add_partitions, end, txn_produce, txn_produce_many
from wire import RawClient, create_topic, make_batch, produce

# raw requests ------------------------------------------------------------------


def init(c: RawClient, tid: str) -> tuple[int, int]:
    r = txn_helpers.init(c, tid, version=5)
    assert r.error_code == ErrorCode.none
    return int(r.producer_id), int(r.producer_epoch)


def end_v5(c: RawClient, tid: str, pid: int, epoch: int, commit: bool = True) -> tuple[Any, ...]:
    """EndTxn v5: (error, producer id, epoch) of the answer."""
    r = c.call(
        26,
        5,
        EndTxnV5(transactional_id=tid, producer_id=pid, producer_epoch=epoch, committed=commit),
    )
    return r.error_code, int(r.producer_id), int(r.producer_epoch)


#: a transactional Produce of one record at v12 (version 2) unless told
txn_write = functools.partial(txn_produce, version=12)


def batch_v5(
    c: RawClient, *txns: tuple[str, int, int, bool, dict[str, tuple[int, ...]]], version: int = 5
) -> Any:
    """AddPartitionsToTxn v4/v5: (id, producer id, epoch, verify only,
    {topic: partitions}) per transaction."""
    body = ap5.AddPartitionsToTxnRequest(
        transactions=tuple(
            ap5.AddPartitionsToTxnTransaction(
                transactional_id=tid,
                producer_id=pid,
                producer_epoch=epoch,
                verify_only=verify,
                topics=tuple(
                    ap5.AddPartitionsToTxnTopic(name=t, partitions=ps) for t, ps in topics.items()
                ),
            )
            for tid, pid, epoch, verify, topics in txns
        )
    )
    return c.call(24, version, body)


def codes_of(result: Any) -> dict[tuple[str, int], int]:
    return {
        (t.name, int(p.partition_index)): p.partition_error_code
        for t in result.topic_results
        for p in t.results_by_partition
    }


def committed_values(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    """What a read_committed librdkafka consumer reads before the b"end"
    record each partition ends with (written last, outside transactions)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"rc-{topic}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[bytes] = []
    ended: set[int] = set()
    deadline = time.monotonic() + 30
    try:
        while len(ended) < partitions and time.monotonic() < deadline:
            for m in c.consume(100, 0.5):
                if m.error() is not None:
                    continue
                if m.value() == b"end":
                    ended.add(m.partition())
                else:
                    values.append(m.value())
    finally:
        c.close()
    assert len(ended) == partitions, "the consumer never reached the end records"
    return sorted(values)


def write_end(bootstrap: str, topic: str, partitions: int) -> None:
    for p in range(partitions):
        assert produce(bootstrap, topic, make_batch([b"end"]), p).error_code == ErrorCode.none


# features ------------------------------------------------------------------------


def test_api_versions_advertise_transaction_version_2(broker: BrokerProcess) -> None:
    """v4 names the supported range 0-2 and the finalized level 2; v3 leaves
    out features whose minimum is 0 (KAFKA-17492), as Kafka 4 does."""
    with RawClient(broker.bootstrap) as c:
        v4 = c.call(18, 4, ApiVersionsV4(client_software_name="t", client_software_version="1"))
        v3 = c.call(18, 3, ApiVersionsV3(client_software_name="t", client_software_version="1"))
    assert [(f.name, f.min_version, f.max_version) for f in v4.supported_features] == [
        ("transaction.version", 0, 2)
    ]
    for r in (v4, v3):
        assert [
            (f.name, f.min_version_level, f.max_version_level) for f in r.finalized_features
        ] == [("transaction.version", 2, 2)]
        assert r.finalized_features_epoch >= 0
        ranges = {int(k.api_key): (k.min_version, k.max_version) for k in r.api_keys}
        assert ranges[26] == (0, 5) and ranges[24] == (0, 5) and ranges[28] == (0, 5)
    assert v3.supported_features == ()


# the protocol --------------------------------------------------------------------


def test_produce_adds_partitions_and_end_bumps_the_epoch(
    broker: BrokerProcess, topic_name: str
) -> None:
    """A commit of partitions joined by Produce v12 alone is read by a
    read_committed consumer; each EndTxn v5 bumps the epoch and answers it;
    the old epoch is then fenced; an abort's records stay hidden."""
    assert int(create_topic(broker.bootstrap, topic_name, partitions=2)) == 0
    tid = f"v2-{topic_name}"
    with RawClient(broker.bootstrap) as c:
        pid, epoch = init(c, tid)
        assert txn_write(c, tid, topic_name, pid, epoch, 0, b"c0", 0) == ErrorCode.none
        assert txn_write(c, tid, topic_name, pid, epoch, 0, b"c1", 1) == ErrorCode.none
        assert txn_write(c, tid, topic_name, pid, epoch, 1, b"c2", 1) == ErrorCode.none
        # the coordinator has them: a broker's verify-only question says so
        (res,) = batch_v5(c, (tid, pid, epoch, True, {topic_name: (0, 1)})).results_by_transaction
        assert set(codes_of(res).values()) == {ErrorCode.none}
        assert end_v5(c, tid, pid, epoch) == (ErrorCode.none, pid, epoch + 1)
        # the markers carry the new epoch: the old one is fenced on the partitions
        assert txn_write(c, tid, topic_name, pid, epoch, 2, b"late", 1) == (
            ErrorCode.invalid_producer_epoch
        )
        # the next transaction: the new epoch from sequence 0, then abort
        assert txn_write(c, tid, topic_name, pid, epoch + 1, 0, b"a0", 0) == ErrorCode.none
        assert txn_write(c, tid, topic_name, pid, epoch + 1, 0, b"a1", 1) == ErrorCode.none
        assert end_v5(c, tid, pid, epoch + 1, commit=False) == (ErrorCode.none, pid, epoch + 2)
    write_end(broker.bootstrap, topic_name, 2)
    assert committed_values(broker.bootstrap, topic_name, 2) == [b"c0", b"c1", b"c2"]


def test_one_produce_adds_its_partitions_at_once(broker: BrokerProcess, topic_name: str) -> None:
    """A Produce v12 to three partitions adds them to the transaction in one
    change of the id's row (one log line naming all three), not one per
    batch; a later write to one of them and the commit go through."""
    assert int(create_topic(broker.bootstrap, topic_name, partitions=3)) == 0
    tid = f"once-{topic_name}"
    with RawClient(broker.bootstrap) as c:
        pid, epoch = init(c, tid)
        first = {p: (0, f"a{p}".encode()) for p in range(3)}
        assert txn_produce_many(c, tid, topic_name, pid, epoch, first, 12) == dict.fromkeys(
            range(3), ErrorCode.none
        )
        assert txn_write(c, tid, topic_name, pid, epoch, 1, b"b1", 1) == ErrorCode.none
        assert end_v5(c, tid, pid, epoch) == (ErrorCode.none, pid, epoch + 1)
    added = [line for line in broker.log().splitlines() if f"{tid!r}" in line and "added" in line]
    assert len(added) == 1, added
    assert all(f"{topic_name}-{p}" in added[0] for p in range(3)), added
    write_end(broker.bootstrap, topic_name, 3)
    assert committed_values(broker.bootstrap, topic_name, 3) == [b"a0", b"a1", b"a2", b"b1"]


def test_end_txn_v5_retries(broker: BrokerProcess, topic_name: str) -> None:
    """A retried EndTxn names the epoch before the bump: answered again with
    the bumped one; the other outcome is INVALID_TXN_STATE. With the current
    epoch and nothing open a commit is INVALID_TXN_STATE, an abort bumps."""
    assert int(create_topic(broker.bootstrap, topic_name, partitions=1)) == 0
    tid = f"retry-{topic_name}"
    with RawClient(broker.bootstrap) as c:
        pid, epoch = init(c, tid)
        assert txn_write(c, tid, topic_name, pid, epoch, 0, b"x") == ErrorCode.none
        assert end_v5(c, tid, pid, epoch) == (ErrorCode.none, pid, epoch + 1)
        assert end_v5(c, tid, pid, epoch) == (ErrorCode.none, pid, epoch + 1)
        assert end_v5(c, tid, pid, epoch, commit=False) == (ErrorCode.invalid_txn_state, -1, -1)
        assert end_v5(c, tid, pid, epoch + 1) == (ErrorCode.invalid_txn_state, -1, -1)
        assert end_v5(c, tid, pid, epoch + 1, commit=False) == (ErrorCode.none, pid, epoch + 2)
        # an epoch two behind is no retry: fenced
        assert end_v5(c, tid, pid, epoch) == (ErrorCode.producer_fenced, -1, -1)


def test_end_txn_v5_bad_input(broker: BrokerProcess, topic_name: str) -> None:
    assert int(create_topic(broker.bootstrap, topic_name, partitions=1)) == 0
    tid = f"bad-{topic_name}"
    with RawClient(broker.bootstrap) as c:
        assert end_v5(c, "never-initialised-v2", 1, 0) == (
            ErrorCode.invalid_producer_id_mapping,
            -1,
            -1,
        )
        pid, epoch = init(c, tid)
        assert end_v5(c, tid, pid, epoch) == (ErrorCode.invalid_txn_state, -1, -1)
        assert txn_write(c, tid, topic_name, pid, epoch, 0, b"x") == ErrorCode.none
        assert end_v5(c, tid, pid + 1, epoch) == (ErrorCode.invalid_producer_id_mapping, -1, -1)
        assert end_v5(c, tid, pid, epoch + 1) == (ErrorCode.producer_fenced, -1, -1)
        assert end_v5(c, tid, pid, epoch - 1) == (ErrorCode.producer_fenced, -1, -1)
        # a write from another epoch, or an id never initialised, joins nothing
        assert txn_write(c, tid, topic_name, pid, epoch + 1, 0, b"y") == (
            ErrorCode.invalid_producer_epoch
        )
        assert txn_write(c, "never-initialised-v2", topic_name, pid, epoch, 0, b"y") == (
            ErrorCode.invalid_producer_id_mapping
        )
        assert end_v5(c, tid, pid, epoch, commit=False) == (ErrorCode.none, pid, epoch + 1)


def test_version_1_clients_unaffected(broker: BrokerProcess, topic_name: str) -> None:
    """AddPartitionsToTxn v3, Produce below v12 and EndTxn v4 keep version 1:
    no bump at the end, a retry names the same epoch, and a write outside the
    transaction is refused (TRANSACTION_ABORTABLE from Produce v11)."""
    assert int(create_topic(broker.bootstrap, topic_name, partitions=2)) == 0
    tid = f"v1-{topic_name}"
    with RawClient(broker.bootstrap) as c:
        pid, epoch = init(c, tid)
        assert txn_write(c, tid, topic_name, pid, epoch, 0, b"x", 0, version=11) == (
            ErrorCode.transaction_abortable
        )
        assert add_partitions(c, tid, pid, epoch, topic_name) == {0: ErrorCode.none}
        assert txn_write(c, tid, topic_name, pid, epoch, 0, b"x", 0, version=11) == ErrorCode.none
        assert txn_write(c, tid, topic_name, pid, epoch, 0, b"x", 1, version=11) == (
            ErrorCode.transaction_abortable
        )
        for _ in range(2):  # the retry is answered the same
            assert end(c, tid, pid, epoch, version=4) == ErrorCode.none
        assert txn_write(c, tid, topic_name, pid, epoch, 0, b"y", 1, version=11) == (
            ErrorCode.transaction_abortable
        )


def test_add_partitions_to_txn_batches(broker: BrokerProcess, topic_name: str) -> None:
    """v4-5, the broker-to-broker form: verify-only and adds side by side,
    each transaction answered with Kafka's codes; a malformed batch (an id
    twice, an empty id) is INVALID_REQUEST."""
    assert int(create_topic(broker.bootstrap, topic_name, partitions=2)) == 0
    a, b = f"ba-{topic_name}", f"bb-{topic_name}"
    with RawClient(broker.bootstrap) as c:
        pa, ea = init(c, a)
        pb, eb = init(c, b)
        r = batch_v5(
            c,
            (a, pa, ea, False, {topic_name: (0,)}),  # an add
            (b, pb, eb, True, {topic_name: (0,)}),  # nothing open: not in it
        )
        assert r.error_code == ErrorCode.none
        results = {res.transactional_id: codes_of(res) for res in r.results_by_transaction}
        assert results == {
            a: {(topic_name, 0): ErrorCode.none},
            b: {(topic_name, 0): ErrorCode.transaction_abortable},
        }
        (res,) = batch_v5(c, (a, pa, ea, True, {topic_name: (0, 1)})).results_by_transaction
        assert codes_of(res) == {
            (topic_name, 0): ErrorCode.none,
            (topic_name, 1): ErrorCode.transaction_abortable,
        }
        # v4 does not know TRANSACTION_ABORTABLE
        (res,) = batch_v5(
            c, (a, pa, ea, True, {topic_name: (1,)}), version=4
        ).results_by_transaction
        assert codes_of(res) == {(topic_name, 1): ErrorCode.invalid_txn_state}
        # the added partition takes the id's transactional writes (v1 produce)
        assert txn_write(c, a, topic_name, pa, ea, 0, b"x", 0, version=9) == ErrorCode.none
        r = batch_v5(
            c,
            (a, pa, ea + 1, True, {topic_name: (0,)}),
            (b, pb + 1000, eb, False, {topic_name: (0,)}),
            ("never-initialised-v2b", 1, 0, True, {topic_name: (0,)}),
            (b, pb, eb, False, {topic_name: (0, 7), "no-such-topic": (0,)}),
        )
        assert r.error_code == ErrorCode.invalid_request  # b twice
        assert r.results_by_transaction == ()
        r = batch_v5(
            c,
            (a, pa, ea + 1, True, {topic_name: (0,)}),
            (b, pb + 1000, eb, False, {topic_name: (0,)}),
            ("never-initialised-v2b", 1, 0, True, {topic_name: (0,)}),
            ("", 1, 0, False, {topic_name: (0,)}),
        )
        results = {res.transactional_id: codes_of(res) for res in r.results_by_transaction}
        assert results == {
            a: {(topic_name, 0): ErrorCode.producer_fenced},
            b: {(topic_name, 0): ErrorCode.invalid_producer_id_mapping},
            "never-initialised-v2b": {(topic_name, 0): ErrorCode.invalid_producer_id_mapping},
            "": {(topic_name, 0): ErrorCode.invalid_request},
        }
        (res,) = batch_v5(
            c, (b, pb, eb, False, {topic_name: (0, 7), "no-such-topic": (0,)})
        ).results_by_transaction
        assert codes_of(res) == {
            (topic_name, 0): ErrorCode.operation_not_attempted,
            (topic_name, 7): ErrorCode.unknown_topic_or_partition,
            ("no-such-topic", 0): ErrorCode.unknown_topic_or_partition,
        }
        assert end_v5(c, a, pa, ea, commit=False) == (ErrorCode.none, pa, ea + 1)


def test_txn_offset_commit_v5_needs_no_add_offsets(broker: BrokerProcess, topic_name: str) -> None:
    """TxnOffsetCommit v5 joins the group to the transaction itself (a TV2
    producer sends no AddOffsetsToTxn); the offset is the group's once the
    transaction commits."""
    assert int(create_topic(broker.bootstrap, topic_name, partitions=1)) == 0
    tid, group = f"off-{topic_name}", f"g-{topic_name}"
    with RawClient(broker.bootstrap) as c:
        pid, epoch = init(c, tid)

        def commit_offset(e: int) -> Any:
            body = tc5.TxnOffsetCommitRequest(
                transactional_id=tid,
                group_id=group,
                producer_id=pid,
                producer_epoch=e,
                generation_id=-1,
                member_id="",
                group_instance_id=None,
                topics=(
                    tc5.TxnOffsetCommitRequestTopic(
                        name=topic_name,
                        partitions=(
                            tc5.TxnOffsetCommitRequestPartition(
                                partition_index=0,
                                committed_offset=42,
                                committed_leader_epoch=-1,
                                committed_metadata="",
                            ),
                        ),
                    ),
                ),
            )
            return c.call(28, 5, body).topics[0].partitions[0].error_code

        def fetched() -> tuple[int, int]:
            body = of.OffsetFetchRequest(
                group_id=group,
                topics=(of.OffsetFetchRequestTopic(name=topic_name, partition_indexes=(0,)),),
                require_stable=True,
            )
            p = c.call(9, 7, body).topics[0].partitions[0]
            return p.error_code, int(p.committed_offset)

        assert commit_offset(epoch + 1) == ErrorCode.producer_fenced
        assert commit_offset(epoch) == ErrorCode.none
        assert fetched()[0] == ErrorCode.unstable_offset_commit
        assert end_v5(c, tid, pid, epoch) == (ErrorCode.none, pid, epoch + 1)
        assert fetched() == (ErrorCode.none, 42)


# an operator keeps version 1 ---------------------------------------------------------


@pytest.fixture(scope="module")
def v1_broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Kept at transaction.version 1, with the authorizer (allowing what no
    ACL mentions)."""
    b = BrokerProcess(
        tmp_path_factory.mktemp("v1") / "data",
        env={
            "SHOAL_TRANSACTION_VERSION": "1",
            "SHOAL_AUTHORIZER_CLASS_NAME": "shoal",
            "SHOAL_ALLOW_EVERYONE_IF_NO_ACL_FOUND": "true",
        },
    ).start()
    yield b
    b.stop()


def test_transaction_version_1_by_config(v1_broker: BrokerProcess, topic_name: str) -> None:
    """transaction.version=1: finalized level 1, and the v2 request versions
    get version 1 behaviour (no bump, no join by writing)."""
    assert int(create_topic(v1_broker.bootstrap, topic_name, partitions=1)) == 0
    tid = f"kept-{topic_name}"
    with RawClient(v1_broker.bootstrap) as c:
        r = c.call(18, 4, ApiVersionsV4(client_software_name="t", client_software_version="1"))
        assert [(f.name, f.max_version_level) for f in r.finalized_features] == [
            ("transaction.version", 1)
        ]
        pid, epoch = init(c, tid)
        assert txn_write(c, tid, topic_name, pid, epoch, 0, b"x") == ErrorCode.transaction_abortable
        (res,) = batch_v5(c, (tid, pid, epoch, False, {topic_name: (0,)})).results_by_transaction
        assert codes_of(res) == {(topic_name, 0): ErrorCode.none}
        assert txn_write(c, tid, topic_name, pid, epoch, 0, b"x") == ErrorCode.none
        assert end_v5(c, tid, pid, epoch) == (ErrorCode.none, pid, epoch)


def test_add_partitions_batch_needs_cluster_action(v1_broker: BrokerProcess) -> None:
    """The broker-to-broker form is authorized as Kafka does, by
    CLUSTER_ACTION on the cluster: denied, the whole batch is
    CLUSTER_AUTHORIZATION_FAILED."""
    from acl_helpers import ANON, CLUSTER, DENY, LITERAL, allow, delete_acls

    cluster_action = 9
    deny = (CLUSTER, "kafka-cluster", LITERAL, ANON, "*", cluster_action, DENY)
    with RawClient(v1_broker.bootstrap) as c:
        pid, epoch = init(c, "acl-batch")

        def answer() -> Any:
            return batch_v5(c, ("acl-batch", pid, epoch, True, {"t": (0,)})).error_code

        allow(v1_broker.bootstrap, deny)
        try:
            deadline = time.monotonic() + 10
            while answer() == ErrorCode.none and time.monotonic() < deadline:
                time.sleep(0.1)  # the ACL reaches the authorizer at its next reload
            r = batch_v5(c, ("acl-batch", pid, epoch, True, {"t": (0,)}))
            assert r.error_code == ErrorCode.cluster_authorization_failed
            assert r.results_by_transaction == ()
        finally:
            delete_acls(v1_broker.bootstrap, deny)


@pytest.mark.parametrize("value", ["0", "3", "two"])
def test_transaction_version_setting_out_of_range(value: str) -> None:
    from shoal.config import ConfigError, load_config

    with pytest.raises(
        ConfigError, match=f"transaction.version: '{value}' from environment SHOAL_"
    ):
        load_config(None, {"SHOAL_TRANSACTION_VERSION": value}, {})


# the epoch overflow, on the coordinator in-process ------------------------------------


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaStore]:
    m = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    yield m
    await m.close()


async def test_epoch_overflow_gives_a_new_producer_id(meta: MetaStore) -> None:
    """A TV2 end at epoch 32766 writes its markers at 32767 and continues
    as a new producer id at epoch 0; a retry naming the old id and epoch gets
    the new ones; the old id's writes are fenced by the marker."""
    from faults import FaultyStore
    from shoal.meta.transactions import TxnRepository
    from shoal.protocol.errors import ErrorCode as Code
    from shoal.storage.producers import InvalidProducerEpoch
    from shoal.txn import state as st
    from shoal.txn.coordinator import TransactionCoordinator, TxnConfig
    from test_txn_log import EngineMarkers, engine, txn_batch

    topic = await meta.create_topic("ovf", 1, {})
    sid = topic.partitions[0].stream_id
    eng = engine(meta, FaultyStore())
    pids = iter(range(500, 600))

    async def allocate() -> int:
        return next(pids)

    repo = TxnRepository(meta)
    coord = TransactionCoordinator(
        repo, allocate, EngineMarkers(eng, {("ovf", 0): sid}, 10), TxnConfig()
    )
    try:
        pid, _ = await coord.init_producer_id("ovf", 60_000, -1, -1, Code.producer_fenced)
        # the id has used up its epochs (set in the store: 32766 ends take long)
        (row,) = await repo.load("ovf")
        worn = st.TxnMeta.from_row(row)
        worn.producer_epoch = st.MAX_EPOCH - 1
        worn.version = await repo.save(worn.to_row())
        coord = TransactionCoordinator(
            repo, allocate, EngineMarkers(eng, {("ovf", 0): sid}, 10), TxnConfig()
        )
        last = st.MAX_EPOCH - 1
        assert await coord.add_on_produce("ovf", pid, last, {("ovf", 0)}) == Code.none
        await (await eng.append(sid, txn_batch(pid, last, 0, b"v"), 0))
        new = await coord.end_txn("ovf", pid, last, True, Code.producer_fenced, st.TV2)
        assert new == (500 + 1, 0)
        assert await coord.end_txn("ovf", pid, last, True, Code.producer_fenced, st.TV2) == new
        with pytest.raises(st.TxnError) as exc:
            await coord.end_txn("ovf", pid, last, False, Code.producer_fenced, st.TV2)
        assert exc.value.code == Code.invalid_txn_state
        with pytest.raises(InvalidProducerEpoch):
            await (await eng.append(sid, txn_batch(pid, last, 1, b"late"), 0))
        saved = await coord.describe("ovf")
        assert saved is not None and (saved.producer_id, saved.prev_producer_id) == (501, pid)
    finally:
        await eng.close()


# cluster mode ------------------------------------------------------------------------

#: what a broker answers while it has not yet opened a partition given to it
OPENING = {ErrorCode.unknown_topic_or_partition, ErrorCode.not_leader_or_follower}


def write_once_open(c: RawClient, tid: str, pid: int, epoch: int, value: bytes, p: int) -> Any:
    """The first write of a partition in topic t, retried while its owner is
    still opening it (the partition is added only once the owner takes it)."""
    deadline = time.monotonic() + 20
    while (code := txn_write(c, tid, "t", pid, epoch, 0, value, p)) in OPENING:
        assert time.monotonic() < deadline, f"partition {p} never opened"
        time.sleep(0.1)
    return code


@pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal cluster mode"
)
def test_version_2_across_brokers(tmp_path: Path) -> None:
    """Two brokers on PostgreSQL: Produce v12 to the broker that is not the
    id's coordinator adds the partition through the metadata store; EndTxn
    v5 at the coordinator commits both partitions and bumps the epoch, which
    fences the old one on the other broker too."""
    from kio.schema.find_coordinator.v3.request import FindCoordinatorRequest
    from kio.schema.metadata.v12 import request as mr

    from cluster_harness import Cluster, wait_for

    cluster = Cluster(tmp_path, size=2).start()
    try:
        any_broker = cluster.brokers[1].bootstrap
        assert int(create_topic(any_broker, "t", partitions=4)) == 0

        def leaders(node: int) -> dict[int, int]:
            """Partition -> owner, as this broker's Metadata answers it."""
            body = mr.MetadataRequest(
                topics=(mr.MetadataRequestTopic(topic_id=None, name="t"),),
                allow_auto_topic_creation=False,
                include_topic_authorized_operations=False,
            )
            with RawClient(cluster.brokers[node].bootstrap) as c:
                (t,) = c.call(3, 12, body).topics
            return {int(p.partition_index): int(p.leader_id) for p in t.partitions}

        def settled() -> dict[int, int] | None:
            # both brokers know the topic and agree on owners, one partition at least each
            seen = leaders(1)
            return seen if set(seen.values()) == {1, 2} and leaders(2) == seen else None

        owner = wait_for(settled, 20, "partitions on both brokers, known to both")
        with RawClient(any_broker) as c:
            tid = next(
                t
                for t in (f"tx{i}" for i in range(50))
                if int(c.call(10, 3, FindCoordinatorRequest(key=t, key_type=1)).node_id) == 1
            )
        remote = next(p for p, node in owner.items() if node == 2)
        local = next(p for p, node in owner.items() if node == 1)
        with (
            RawClient(cluster.brokers[1].bootstrap) as coord,
            RawClient(cluster.brokers[2].bootstrap) as other,
        ):
            pid, epoch = init(coord, tid)
            for c, value, p in ((other, b"r", remote), (coord, b"l", local)):
                assert write_once_open(c, tid, pid, epoch, value, p) == ErrorCode.none
            (res,) = batch_v5(
                coord, (tid, pid, epoch, True, {"t": (remote, local)})
            ).results_by_transaction
            assert set(codes_of(res).values()) == {ErrorCode.none}
            assert end_v5(coord, tid, pid, epoch) == (ErrorCode.none, pid, epoch + 1)
            assert txn_write(other, tid, "t", pid, epoch, 1, b"late", remote) == (
                ErrorCode.invalid_producer_epoch
            )
        for p, node in owner.items():
            bootstrap = cluster.brokers[node].bootstrap
            assert produce(bootstrap, "t", make_batch([b"end"]), p).error_code == ErrorCode.none
        assert committed_values(cluster.bootstrap, "t", 4) == [b"l", b"r"]
    finally:
        cluster.stop()


async def test_timed_out_version_2_producer_stays_fenced(meta: MetaStore) -> None:
    """The sweep aborts a TV2 transaction past its timeout with a bumped
    epoch; the producer's own end, naming the old epoch, is not taken for a
    retry of a TV2 end: PRODUCER_FENCED."""
    from faults import FaultyStore
    from shoal.meta.transactions import TxnRepository
    from shoal.protocol.errors import ErrorCode as Code
    from shoal.txn import state as st
    from shoal.txn.coordinator import TransactionCoordinator, TxnConfig
    from test_txn_log import EngineMarkers, engine

    topic = await meta.create_topic("late", 1, {})
    sid = topic.partitions[0].stream_id
    eng = engine(meta, FaultyStore())
    pids = iter(range(700, 800))

    async def allocate() -> int:
        return next(pids)

    coord = TransactionCoordinator(
        TxnRepository(meta), allocate, EngineMarkers(eng, {("late", 0): sid}, 10), TxnConfig()
    )
    try:
        pid, epoch = await coord.init_producer_id("late", 1, -1, -1, Code.producer_fenced)
        assert await coord.add_on_produce("late", pid, epoch, {("late", 0)}) == Code.none
        assert await coord.end_txn("late", pid, epoch, True, Code.producer_fenced, st.TV2) == (
            pid,
            epoch + 1,
        )
        assert await coord.add_on_produce("late", pid, epoch + 1, {("late", 0)}) == Code.none
        opened = await coord.describe("late")
        assert opened is not None
        opened.start_ms -= 10  # it began 10 ms ago: past its 1 ms timeout, without waiting
        await coord.sweep()
        swept = await coord.describe("late")
        assert swept is not None and swept.state == st.TxnState.COMPLETE_ABORT
        assert swept.producer_epoch == epoch + 2
        for commit in (False, True):
            with pytest.raises(st.TxnError) as exc:
                await coord.end_txn("late", pid, epoch + 1, commit, Code.producer_fenced, st.TV2)
            assert exc.value.code == Code.producer_fenced
    finally:
        await eng.close()
