"""Transactions with aiokafka and kafka-python unmodified, and an
exactly-once consume-transform-produce loop with confluent-kafka (one round
aborted and redone: every input record is in the output exactly once)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer

from harness import BrokerProcess
from test_transactions import consume_all, txn_producer
from wire import create_topic


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
        consumer_timeout_ms=3000,
    )
    got = [m.value for m in c]
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
        p.commit_transaction(30)
        d = admin.describe_transactions([tid])[tid]
        assert str(d.state.value) == "CompleteCommit" and not d.topic_partitions
    finally:
        admin.close()
