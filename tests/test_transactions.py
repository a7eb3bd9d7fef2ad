"""Transactions with real clients and raw requests: librdkafka
(confluent-kafka), aiokafka and kafka-python unmodified for commit and abort
visibility under read_committed and read_uncommitted, offsets sent to a
transaction, an exactly-once consume-transform-produce loop, zombie fencing,
timeouts, a broker killed mid-transaction and the operator APIs; raw
requests for bad input, each answered with Kafka's error code. One broker for
the module (a broker of its own for the kill)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kio.schema.add_offsets_to_txn.v3.request import AddOffsetsToTxnRequest
from kio.schema.errors import ErrorCode
from kio.schema.offset_fetch.v7 import request as of
from kio.schema.txn_offset_commit.v3 import request as tc

from harness import BrokerProcess
from shoal.cli import cli
from txn_helpers import add_partitions, end, init, txn_produce
from wire import RawClient, create_topic


def txn_producer(bootstrap: str, tid: str, **extra: object) -> Producer:
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": tid,
            "linger.ms": 5,
            **extra,
        }
    )
    p.init_transactions(30)
    return p


def consume_all(
    bootstrap: str, topic: str, partitions: int, isolation: str, expect: int, group: str = ""
) -> list[bytes]:
    """Values of every record readable at `isolation`, once at least
    `expect` have arrived and then half an idle second brought nothing."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"g-{topic}-{isolation}",
            "isolation.level": isolation,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[bytes] = []
    deadline = time.monotonic() + 30
    idle_since = None
    try:
        while time.monotonic() < deadline:
            batch = [m for m in c.consume(500, 0.5) if m.error() is None]
            values.extend(m.value() for m in batch)
            if len(values) >= expect:
                if batch:
                    idle_since = None
                elif idle_since is None:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > 0.5:
                    break
    finally:
        c.close()
    return values


FAST_SWEEP = {"SHOAL_TRANSACTION_ABORT_TIMED_OUT_TRANSACTION_CLEANUP_INTERVAL_MS": "100"}
#: an authorizer that allows what no ACL mentions: the ACL test denies one id
OPEN_ACLS = {"SHOAL_AUTHORIZER_CLASS_NAME": "shoal", "SHOAL_ALLOW_EVERYONE_IF_NO_ACL_FOUND": "true"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """This module's broker sweeps for timed-out transactions every 100 ms
    and runs the authorizer (allowing what no ACL mentions)."""
    b = BrokerProcess(
        tmp_path_factory.mktemp("broker") / "data", env={**FAST_SWEEP, **OPEN_ACLS}
    ).start()
    yield b
    b.stop()


@pytest.fixture
def topic(broker: BrokerProcess, topic_name: str) -> Iterator[str]:
    assert int(create_topic(broker.bootstrap, topic_name, partitions=3)) == 0
    yield topic_name


def test_commit_and_abort_visibility(broker: BrokerProcess, topic: str) -> None:
    p = txn_producer(broker.bootstrap, f"tx-{topic}")
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, value=f"c1-{i}".encode(), partition=i % 3)
    p.commit_transaction(30)
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, value=f"a-{i}".encode(), partition=i % 3)
    p.flush(30)
    p.abort_transaction(30)
    p.begin_transaction()
    for i in range(30):
        p.produce(topic, value=f"c2-{i}".encode(), partition=i % 3)
    p.commit_transaction(30)
    committed = consume_all(broker.bootstrap, topic, 3, "read_committed", 60)
    assert sorted(committed) == sorted(
        [f"c1-{i}".encode() for i in range(30)] + [f"c2-{i}".encode() for i in range(30)]
    )
    everything = consume_all(broker.bootstrap, topic, 3, "read_uncommitted", 90)
    assert len(everything) == 90
    assert {v for v in everything if v.startswith(b"a-")} == {f"a-{i}".encode() for i in range(30)}


def test_open_transaction_holds_read_committed_back(broker: BrokerProcess, topic: str) -> None:
    p = txn_producer(broker.bootstrap, f"tx-{topic}")
    p.begin_transaction()
    p.produce(topic, value=b"pending", partition=0)
    p.flush(30)
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"w-{topic}",
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        tp = TopicPartition(topic, 0)
        # high watermark counts the record; the last stable offset does not
        assert c.get_watermark_offsets(tp, timeout=10)[1] == 1
        stable = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": f"w2-{topic}",
                "isolation.level": "read_committed",
            }
        )
        try:
            assert stable.get_watermark_offsets(tp, timeout=10)[1] == 0
        finally:
            stable.close()
    finally:
        c.close()
    p.commit_transaction(30)
    assert consume_all(broker.bootstrap, topic, 3, "read_committed", 1) == [b"pending"]


def test_send_offsets_to_transaction(broker: BrokerProcess, topic: str) -> None:
    group = f"eos-{topic}"
    p = txn_producer(broker.bootstrap, f"tx-{topic}")
    c = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    tps = [TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 7)]
    try:
        p.begin_transaction()
        p.produce(topic, value=b"x", partition=2)
        p.send_offsets_to_transaction(tps, c.consumer_group_metadata(), 30)
        p.abort_transaction(30)
        got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert [t.offset for t in got] == [-1001, -1001]  # aborted: nothing committed
        p.begin_transaction()
        p.produce(topic, value=b"y", partition=2)
        p.send_offsets_to_transaction(tps, c.consumer_group_metadata(), 30)
        p.commit_transaction(30)
        got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)
        assert [t.offset for t in got] == [5, 7]
    finally:
        c.close()


def test_zombie_is_fenced(broker: BrokerProcess, topic: str) -> None:
    tid = f"tx-{topic}"
    old = txn_producer(broker.bootstrap, tid)
    old.begin_transaction()
    old.produce(topic, value=b"zombie", partition=0)
    old.flush(30)
    new = txn_producer(broker.bootstrap, tid)  # aborts the old one's transaction
    new.begin_transaction()
    new.produce(topic, value=b"new", partition=0)
    new.commit_transaction(30)
    with pytest.raises(KafkaException) as info:
        old.produce(topic, value=b"late", partition=0)
        old.commit_transaction(30)
    assert info.value.args[0].fatal() or "fenced" in str(info.value).lower()
    assert consume_all(broker.bootstrap, topic, 3, "read_committed", 1) == [b"new"]


def test_timed_out_transaction_is_aborted(broker: BrokerProcess, topic: str) -> None:
    slow = txn_producer(broker.bootstrap, f"slow-{topic}", **{"transaction.timeout.ms": 1000})
    slow.begin_transaction()
    slow.produce(topic, value=b"timed-out", partition=0)
    slow.flush(30)
    other = txn_producer(broker.bootstrap, f"other-{topic}")
    other.begin_transaction()
    other.produce(topic, value=b"after", partition=0)
    other.commit_transaction(30)
    # the consumer moves past the aborted transaction once it times out
    assert consume_all(broker.bootstrap, topic, 3, "read_committed", 1) == [b"after"]
    with pytest.raises(KafkaException):
        slow.commit_transaction(10)  # fenced by the abort's epoch bump
    assert (
        f"'slow-{topic}': aborting the open transaction (open longer than its timeout of 1000 ms)"
        in broker.log()
    )


# other clients ---------------------------------------------------------------


def test_aiokafka_transactions(broker: BrokerProcess, topic_name: str) -> None:
    assert int(create_topic(broker.bootstrap, topic_name, partitions=2)) == 0

    async def run() -> list[bytes]:
        p = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap, transactional_id=f"aio-{topic_name}"
        )
        await p.start()
        try:
            async with p.transaction():
                for i in range(4):
                    await p.send(topic_name, f"keep{i}".encode(), partition=i % 2)
            await p.begin_transaction()
            await p.send_and_wait(topic_name, b"drop", partition=0)
            await p.abort_transaction()
            async with p.transaction():
                await p.send_and_wait(topic_name, b"last", partition=1)
        finally:
            await p.stop()
        c = AIOKafkaConsumer(
            topic_name,
            bootstrap_servers=broker.bootstrap,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        await c.start()
        got: list[bytes] = []
        try:
            while len(got) < 5:
                batches = await asyncio.wait_for(c.getmany(timeout_ms=500), 30)
                got.extend(m.value for ms in batches.values() for m in ms if m.value)
        finally:
            await c.stop()
        return got

    got = asyncio.run(run())
    assert sorted(got) == sorted([f"keep{i}".encode() for i in range(4)] + [b"last"])


def test_kafka_python_transactions(broker: BrokerProcess, topic_name: str) -> None:
    assert int(create_topic(broker.bootstrap, topic_name, partitions=2)) == 0
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"kp-{topic_name}")
    p.init_transactions()
    p.begin_transaction()
    p.send(topic_name, b"drop", partition=0)
    p.flush()
    p.abort_transaction()
    p.begin_transaction()
    for i in range(4):
        p.send(topic_name, f"keep{i}".encode(), partition=i % 2)
    p.commit_transaction()
    p.close()
    c = KafkaConsumer(
        topic_name,
        bootstrap_servers=broker.bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        consumer_timeout_ms=20000,
    )
    # The four committed records, or a 20 s gap: a busy machine can take
    # more than a few seconds to the first fetch. An aborted "drop" would
    # come first in partition 0 and take one of the four places.
    got = [m.value for _, m in zip(range(4), c, strict=False)]
    c.close()
    assert sorted(got) == sorted(f"keep{i}".encode() for i in range(4))


def test_consume_transform_produce(broker: BrokerProcess, topic_name: str) -> None:
    src, dst, group = f"{topic_name}-in", f"{topic_name}-out", f"{topic_name}-eos"
    assert int(create_topic(broker.bootstrap, src, partitions=2)) == 0
    assert int(create_topic(broker.bootstrap, dst, partitions=2)) == 0
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(40):
        plain.produce(src, value=str(i).encode(), partition=i % 2)
    plain.flush(30)
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([src])
    producer = txn_producer(broker.bootstrap, f"eos-{topic_name}")
    done, rounds, polls = 0, 0, 0
    try:
        while done < 40 and polls < 200:
            polls += 1
            msgs = [m for m in consumer.consume(10, 1.0) if m.error() is None]
            if not msgs:
                continue
            rounds += 1
            producer.begin_transaction()
            for m in msgs:
                producer.produce(dst, value=b"x" + m.value(), partition=m.partition())
            positions = consumer.position(consumer.assignment())
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata())
            if rounds == 2:
                # a failed round: abort, then read again from the committed offsets
                producer.flush(30)
                producer.abort_transaction()
                committed = consumer.committed(consumer.assignment(), timeout=10)
                for tp in committed:
                    consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))
                continue
            producer.commit_transaction()
            done += len(msgs)
        committed = consumer.committed([TopicPartition(src, 0), TopicPartition(src, 1)], 10)
    finally:
        consumer.close()
    assert done == 40
    assert [tp.offset for tp in committed] == [20, 20]
    out = consume_all(broker.bootstrap, dst, 2, "read_committed", 40)
    assert sorted(out) == sorted(b"x" + str(i).encode() for i in range(40))
    assert len(consume_all(broker.bootstrap, dst, 2, "read_uncommitted", 40)) > 40


def test_operator_apis_with_kafka_python_admin(broker: BrokerProcess, topic_name: str) -> None:
    """ListTransactions, DescribeTransactions and DescribeProducers answer
    kafka-python's admin client with an open transaction's state."""
    from kafka import KafkaAdminClient
    from kafka.errors import TransactionalIdNotFoundError
    from kafka.structs import TopicPartition as KTopicPartition

    assert int(create_topic(broker.bootstrap, topic_name, partitions=2)) == 0
    tid = f"ops-{topic_name}"
    p = txn_producer(broker.bootstrap, tid)
    p.begin_transaction()
    p.produce(topic_name, value=b"open", partition=1)
    p.flush(30)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        listed = [t for ts in admin.list_transactions().values() for t in ts]
        mine = [t for t in listed if t.transactional_id == tid]
        assert len(mine) == 1 and str(mine[0].state.value) == "Ongoing"
        ongoing = admin.list_transactions(state_filters=["CompleteCommit"]).values()
        assert tid not in {t.transactional_id for ts in ongoing for t in ts}
        d = admin.describe_transactions([tid])[tid]
        assert d.topic_partitions == {KTopicPartition(topic_name, 1)}
        assert d.producer_id == mine[0].producer_id and d.transaction_timeout_ms == 60_000
        states = admin.describe_producers([KTopicPartition(topic_name, 1)])
        (active,) = states[KTopicPartition(topic_name, 1)].active_producers
        assert active.producer_id == d.producer_id and active.current_transaction_start_offset == 0
        try:
            admin.describe_transactions(["never-used"])
            raise AssertionError("an unknown id was described")
        except TransactionalIdNotFoundError:
            pass
        # the same through `shoal transactions`
        listed_json = shoal("transactions", "list", "--bootstrap", broker.bootstrap, "--format",
                            "json", "--state", "Ongoing")  # fmt: skip
        assert {"transactional_id": tid, "producer_id": d.producer_id, "state": "Ongoing",
                "coordinator": broker.bootstrap} in json.loads(listed_json)  # fmt: skip
        described = json.loads(
            shoal(
                "transactions", "describe", tid, "--bootstrap", broker.bootstrap, "--format", "json"
            )
        )
        assert described["partitions"] == [f"{topic_name}-1"]
        assert described["state"] == "Ongoing" and described["start"] is not None
        p.commit_transaction(30)
        d = admin.describe_transactions([tid])[tid]
        assert str(d.state.value) == "CompleteCommit" and not d.topic_partitions
        text = shoal("transactions", "describe", tid, "--bootstrap", broker.bootstrap)
        assert "CompleteCommit" in text
        unknown = CliRunner().invoke(
            cli, ["transactions", "describe", "no-such-id", "--bootstrap", broker.bootstrap]
        )
        assert (
            unknown.exit_code == 1 and "'no-such-id': TRANSACTIONAL_ID_NOT_FOUND" in unknown.output
        )
    finally:
        admin.close()


def shoal(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


# raw requests with bad input ----------------------------------------------------


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
        old = end(c, "tx-end", pid, epoch + 1, version=1)
        assert old == ErrorCode.invalid_producer_epoch  # before KIP-588


def test_add_partitions_unknown_topic(broker: BrokerProcess, topic_name: str) -> None:
    assert int(create_topic(broker.bootstrap, topic_name, partitions=1)) == 0
    with RawClient(broker.bootstrap) as c:
        r = init(c, "tx-add")
        pid, epoch = int(r.producer_id), int(r.producer_epoch)
        # partition 1 does not exist; partition 0 is not added either
        codes = add_partitions(c, "tx-add", pid, epoch, topic_name, (0, 1))
        assert codes == {
            0: ErrorCode.operation_not_attempted,
            1: ErrorCode.unknown_topic_or_partition,
        }
        codes = add_partitions(c, "tx-add", pid, epoch, "no-such-topic", (0, 1))
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
        assert add_partitions(c, "tx-write", pid, epoch, topic_name) == {0: ErrorCode.none}
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

        def fetch(require_stable: bool) -> tuple[int, ErrorCode]:
            body = of.OffsetFetchRequest(
                group_id="g-offsets",
                topics=(of.OffsetFetchRequestTopic(name=topic_name, partition_indexes=(0,)),),
                require_stable=require_stable,
            )
            (part,) = c.call(9, 7, body).topics[0].partitions
            return int(part.committed_offset), part.error_code

        # pending: invisible, and "unstable" to a consumer that asks
        assert fetch(False) == (-1, ErrorCode.none)
        assert fetch(True) == (-1, ErrorCode.unstable_offset_commit)
        assert end(c, "tx-offsets", pid, epoch) == ErrorCode.none
        assert fetch(True) == (3, ErrorCode.none)


def test_transactional_id_acls(broker: BrokerProcess, topic_name: str) -> None:
    """WRITE on the TransactionalId resource: denied, InitProducerId, EndTxn and
    a transactional Produce get TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
    another id goes on."""
    from acl_helpers import ANON, DENY, LITERAL, WRITE, allow

    transactional_id = 5  # Kafka's resource type code
    assert int(create_topic(broker.bootstrap, topic_name, partitions=1)) == 0
    with RawClient(broker.bootstrap) as c:
        r = init(c, "acl-tx")
        pid, epoch = int(r.producer_id), int(r.producer_epoch)
        allow(broker.bootstrap, (transactional_id, "acl-tx", LITERAL, ANON, "*", WRITE, DENY))

        def denied() -> bool:
            return bool(
                init(c, "acl-tx").error_code == ErrorCode.transactional_id_authorization_failed
            )

        wait = time.monotonic() + 10
        while not denied() and time.monotonic() < wait:
            time.sleep(0.1)  # the ACL reaches the authorizer at its next reload
        assert denied()
        assert end(c, "acl-tx", pid, epoch) == ErrorCode.transactional_id_authorization_failed
        assert txn_produce(c, "acl-tx", topic_name, pid, epoch) == (
            ErrorCode.transactional_id_authorization_failed
        )
        assert init(c, "acl-other").error_code == ErrorCode.none


def test_abort_hanging_transaction(broker: BrokerProcess, topic_name: str) -> None:
    """`shoal transactions abort` (DescribeProducers, then WriteTxnMarkers)
    ends a transaction its producer left open: the last stable offset moves."""
    assert int(create_topic(broker.bootstrap, topic_name, partitions=1)) == 0
    with RawClient(broker.bootstrap) as c:
        r = init(c, "hanging", timeout_ms=900_000)
        pid, epoch = int(r.producer_id), int(r.producer_epoch)
        add_partitions(c, "hanging", pid, epoch, topic_name)
        assert txn_produce(c, "hanging", topic_name, pid, epoch) == ErrorCode.none
    stable = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"h-{topic_name}",
            "isolation.level": "read_committed",
        }
    )
    try:
        tp = TopicPartition(topic_name, 0)
        assert stable.get_watermark_offsets(tp, timeout=10)[1] == 0
        out = shoal(
            "transactions", "abort", "--topic", topic_name, "--partition", "0",
            "--bootstrap", broker.bootstrap,
        )  # fmt: skip
        assert f"aborted the transaction of producer {pid} on {topic_name}-0" in out
        assert stable.get_watermark_offsets(tp, timeout=10)[1] == 2  # record and marker
    finally:
        stable.close()
    again = CliRunner().invoke(
        cli,
        ["transactions", "abort", "--topic", topic_name, "--partition", "0",
         "--bootstrap", broker.bootstrap],
    )  # fmt: skip
    assert again.exit_code == 1 and f"{topic_name}-0: no open transaction" in again.output
    missing = CliRunner().invoke(
        cli,
        ["transactions", "abort", "--topic", topic_name, "--partition", "3",
         "--bootstrap", broker.bootstrap],
    )  # fmt: skip
    assert missing.exit_code == 1 and "has no partition 3" in missing.output


# last: kills the module broker ------------------------------------------------


def test_kill_mid_transaction(broker: BrokerProcess, topic_name: str) -> None:
    """A broker killed -9 with two transactions open: after the restart one
    producer commits its transaction whole, the other's times out and is
    aborted whole; read_committed sees exactly the first. Last in the
    module: it kills the module's broker (and starts it again)."""
    b = broker
    assert int(create_topic(b.bootstrap, topic_name, partitions=3)) == 0
    dying = txn_producer(b.bootstrap, "tx-dies", **{"transaction.timeout.ms": 2000})
    living = txn_producer(b.bootstrap, "tx-lives", **{"transaction.timeout.ms": 60_000})
    dying.begin_transaction()
    living.begin_transaction()
    for i in range(9):
        dying.produce(topic_name, value=f"d{i}".encode(), partition=i % 3)
        living.produce(topic_name, value=f"l{i}".encode(), partition=i % 3)
    dying.flush(30)  # acknowledged: durable before the kill
    living.flush(30)
    b.kill()
    b.start()
    living.commit_transaction(30)
    kept = {f"l{i}".encode() for i in range(9)}
    # the aborted transaction starts first in each partition: these arrive
    # only once it has timed out and the last stable offset moved past it
    assert sorted(consume_all(b.bootstrap, topic_name, 3, "read_committed", 9)) == sorted(kept)
    everything = consume_all(b.bootstrap, topic_name, 3, "read_uncommitted", 18)
    assert set(everything) == kept | {f"d{i}".encode() for i in range(9)}
