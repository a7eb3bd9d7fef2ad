"""A request's topics are created (CreateTopics, Metadata's
auto-creation), grown (CreatePartitions), reconfigured (AlterConfigs,
IncrementalAlterConfigs) or deleted (DeleteTopics) together: one metadata
transaction, one placement in a cluster. Each topic still gets its own
answer, in the request's order, as Kafka gives it."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from kio.schema.create_topics.v7 import request as ct
from kio.schema.errors import ErrorCode as WireCode

from acl_helpers import metadata
from harness import BrokerProcess
from shoal.broker.topics import Topic, TopicCatalog
from shoal.config import load_config
from shoal.meta.store import MetaStore
from shoal.protocol.errors import ErrorCode
from shoal.protocol.errors import KafkaError as ShoalError
from wire import RawClient

TIMEOUT = 30


def _outcome(future: Any) -> int:
    """0 if the topic was created, else its Kafka error code."""
    try:
        future.result(TIMEOUT)
    except KafkaException as exc:
        return int(exc.args[0].code())
    return 0


def test_one_request_creates_the_valid_topics_and_answers_each(
    broker: BrokerProcess, topic_name: str
) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    existing = f"{topic_name}-old"
    assert _outcome(admin.create_topics([NewTopic(existing, 1, 1)])[existing]) == 0
    good = [f"{topic_name}-a", f"{topic_name}-b", f"{topic_name}-c"]
    asked = [
        NewTopic(good[0], 3, 1, config={"retention.ms": "3600000"}),
        NewTopic(existing, 2, 1),
        NewTopic(f"{topic_name}/bad", 1, 1),
        NewTopic(good[1], 1, 1),
        NewTopic(f"{topic_name}-cfg", 1, 1, config={"no.such.config": "1"}),
        NewTopic(good[2], 2, 1),
    ]
    futures = admin.create_topics(asked, operation_timeout=TIMEOUT)
    outcomes = {name: _outcome(f) for name, f in futures.items()}
    assert outcomes == {
        good[0]: 0,
        existing: KafkaError.TOPIC_ALREADY_EXISTS,
        f"{topic_name}/bad": KafkaError.TOPIC_EXCEPTION,
        good[1]: 0,
        f"{topic_name}-cfg": KafkaError.INVALID_CONFIG,
        good[2]: 0,
    }
    md = admin.list_topics(timeout=TIMEOUT)
    assert {n: len(md.topics[n].partitions) for n in good} == {good[0]: 3, good[1]: 1, good[2]: 2}
    assert len(md.topics[existing].partitions) == 1  # left as it was
    assert f"{topic_name}-cfg" not in md.topics
    [described] = admin.describe_configs([ConfigResource("topic", good[0])]).values()
    assert described.result(TIMEOUT)["retention.ms"].value == "3600000"

    # Every new partition is writable and reads back from offset 0.
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    wanted = [(n, p) for n in good for p in range(len(md.topics[n].partitions))]
    for n, p in wanted:
        producer.produce(n, value=f"{n}:{p}".encode(), partition=p)
    assert producer.flush(TIMEOUT) == 0
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": f"g-{uuid.uuid4().hex[:8]}"}
    )
    try:
        consumer.assign([TopicPartition(n, p, 0) for n, p in wanted])
        seen: dict[tuple[str, int], tuple[int, bytes]] = {}
        while len(seen) < len(wanted):
            msg = consumer.poll(TIMEOUT)
            assert msg is not None, f"only {sorted(seen)} of {wanted}"
            assert msg.error() is None, msg.error()
            seen[(msg.topic(), msg.partition())] = (msg.offset(), msg.value())
    finally:
        consumer.close()
    assert seen == {(n, p): (0, f"{n}:{p}".encode()) for n, p in wanted}


def _creatable(name: str, partitions: int, replication: int = -1) -> Any:
    return ct.CreatableTopic(
        name=name,
        num_partitions=partitions,
        replication_factor=replication,
        assignments=(),
        configs=(),
    )


def _create(bootstrap: str, topics: list[Any], validate_only: bool = False) -> list[Any]:
    body = ct.CreateTopicsRequest(
        topics=tuple(topics),
        timeout=datetime.timedelta(seconds=10),
        validate_only=validate_only,
    )
    with RawClient(bootstrap) as c:
        return list(c.call(19, 7, body).topics)


def test_a_name_listed_twice_and_a_bad_count_get_their_own_errors(
    broker: BrokerProcess, topic_name: str
) -> None:
    """Checks made before the catalog (listed twice, replication factor) and
    the catalog's own (partition count) answer per topic; the others of
    the request are created."""
    results = _create(
        broker.bootstrap,
        [
            _creatable(f"{topic_name}-x", 2),
            _creatable(f"{topic_name}-x", 3),
            _creatable(f"{topic_name}-zero", 0),
            _creatable(f"{topic_name}-rf", 1, replication=0),
            _creatable(f"{topic_name}-y", 1),
        ],
    )
    assert [(r.name, r.error_code, r.num_partitions) for r in results] == [
        (f"{topic_name}-x", WireCode.none, 2),
        (f"{topic_name}-x", WireCode.invalid_request, -1),
        (f"{topic_name}-zero", WireCode.invalid_partitions, -1),
        (f"{topic_name}-rf", WireCode.invalid_replication_factor, -1),
        (f"{topic_name}-y", WireCode.none, 1),
    ]
    assert results[0].topic_id != results[4].topic_id


def test_validate_only_answers_each_topic_and_creates_none(
    broker: BrokerProcess, topic_name: str
) -> None:
    results = _create(
        broker.bootstrap,
        [_creatable(f"{topic_name}-v1", 4), _creatable("bad name", 1), _creatable(topic_name, -1)],
        validate_only=True,
    )
    assert [(r.error_code, r.num_partitions) for r in results] == [
        (WireCode.none, 4),
        (WireCode.invalid_topic_exception, -1),
        (WireCode.none, 1),  # num.partitions, the broker default
    ]
    again = _create(broker.bootstrap, [_creatable(f"{topic_name}-v1", 4)])
    assert again[0].error_code == WireCode.none  # validating created nothing


def _placements(catalog: TopicCatalog) -> list[list[str]]:
    """The names of each batch of new topics the catalog hands on to be
    placed (what the cluster member's assign_new receives)."""
    placed: list[list[str]] = []

    async def on_created(topics: list[Topic]) -> None:
        placed.append([t.name for t in topics])

    catalog.on_created = on_created
    return placed


async def test_a_topic_another_broker_just_made_fails_alone(
    two_stores: tuple[MetaStore, MetaStore],
) -> None:
    """In a cluster another broker may create a name this broker's catalog
    has not seen yet: the batch's transaction fails on it, and the catalog
    creates the others one by one, answering TOPIC_ALREADY_EXISTS for it."""
    ours, theirs = two_stores
    catalog = TopicCatalog(ours, load_config())
    await catalog.load()
    await theirs.create_topic("b", 4, {})  # after our catalog's load
    placed = _placements(catalog)
    results = await catalog.create_many([("a", 2, {}), ("b", 1, {}), ("c", 3, {})])
    assert isinstance(results[0], Topic) and isinstance(results[2], Topic)
    assert isinstance(results[1], ShoalError)
    assert results[1].code == ErrorCode.topic_already_exists
    assert placed == [["a", "c"]]  # placed together, "b" not
    stored = {t.name: len(t.partitions) for t in await ours.list_topics()}
    assert stored == {"a": 2, "b": 4, "c": 3}
    assert catalog.get("b") is None  # theirs: the next refresh brings it
    assert [len(t.partitions) for t in (catalog.get("a"), catalog.get("c")) if t] == [2, 3]


def test_one_metadata_request_auto_creates_its_new_topics(
    broker: BrokerProcess, topic_name: str
) -> None:
    """A gateway's first Metadata request names all its new topics: they are
    created together, and each name gets its own answer, in order."""
    existing = f"{topic_name}-old"
    assert _create(broker.bootstrap, [_creatable(existing, 2)])[0].error_code == WireCode.none
    new = [f"{topic_name}-n{i}" for i in range(5)]
    asked = [new[0], existing, "bad name", new[1], new[0], *new[2:]]
    not_created = metadata(broker.bootstrap, asked, auto_create=False).topics
    assert [(t.name, t.error_code) for t in not_created] == [
        (n, WireCode.none if n == existing else WireCode.unknown_topic_or_partition) for n in asked
    ]
    answered = metadata(broker.bootstrap, asked, auto_create=True).topics
    assert (
        [(t.name, t.error_code, len(t.partitions)) for t in answered]
        == [
            (new[0], WireCode.none, 1),  # num.partitions
            (existing, WireCode.none, 2),
            ("bad name", WireCode.invalid_topic_exception, 0),
            (new[1], WireCode.none, 1),
            (new[0], WireCode.none, 1),
            *((n, WireCode.none, 1) for n in new[2:]),
        ]
    )
    assert answered[0].topic_id == answered[4].topic_id  # listed twice, made once
    again = {t.name: t.topic_id for t in metadata(broker.bootstrap, new).topics}
    assert again == {t.name: t.topic_id for t in answered if t.name in new}
    # Each new topic takes records at offset 0.
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    delivered: list[tuple[Any, int | None]] = []
    for n in new:
        producer.produce(
            n, b"first", partition=0, on_delivery=lambda e, m: delivered.append((e, m.offset()))
        )
    assert producer.flush(TIMEOUT) == 0
    assert delivered == [(None, 0)] * len(new)


async def test_auto_creation_looks_names_up_once_and_places_new_topics_together(
    two_stores: tuple[MetaStore, MetaStore],
) -> None:
    """In a cluster the names this broker does not know are looked up in
    the store, once and by name (a whole reload per name, after each
    creation, grew with the square of the count); one another broker made
    is adopted, for the cluster member to open, and the rest are created
    and placed together."""
    ours, theirs = two_stores
    catalog = TopicCatalog(ours, load_config())
    catalog.cluster_mode = True
    await catalog.load()
    await theirs.create_topic("b", 4, {})  # after our catalog's load
    placed = _placements(catalog)
    reloads, lookups = 0, []
    real_reload, real_find = ours.topics_if_changed, ours.find_topics

    async def reload(digest: str | None, known: Any = None) -> Any:
        nonlocal reloads
        reloads += 1
        return await real_reload(digest, known)

    async def find(names: Any) -> Any:
        lookups.append(list(names))
        return await real_find(names)

    ours.topics_if_changed = reload
    ours.find_topics = find
    version = catalog.version
    found = await catalog.get_or_create_many(["a", "b", "bad/x", "c", "a"])
    assert (reloads, lookups) == (0, [["a", "b", "bad/x", "c"]])
    assert catalog.version > version  # the member reconciles: "b" may be its
    assert placed == [["a", "c"]]
    a, b, bad, c, a2 = found
    assert isinstance(a, Topic) and isinstance(c, Topic) and a2 is a
    assert isinstance(b, Topic) and len(b.partitions) == 4  # theirs, found
    assert catalog.get("b") is b
    assert isinstance(bad, ShoalError) and bad.code == ErrorCode.invalid_topic_exception
    stored = {t.name: len(t.partitions) for t in await ours.list_topics()}
    assert stored == {"a": 1, "b": 4, "c": 1}
    assert await catalog.get_or_create_many(["d"], allow_auto_create=False) == [None]
    # A later refresh keeps the adopted topic as it is.
    assert await catalog.refresh() == []
    assert catalog.get("b") is not None and len(catalog.get("b").partitions) == 4  # type: ignore[union-attr]


def test_one_request_deletes_its_topics_and_answers_each(
    broker: BrokerProcess, topic_name: str
) -> None:
    """By name and by id, with an unknown name, an unknown id and a name
    listed twice: each entry answered in order; the deleted topics' offsets
    and records are gone, and a topic made again under the same name starts
    empty."""
    from kio.schema.delete_topics.v6 import request as dt

    names = [f"{topic_name}-d{i}" for i in range(4)]
    created = _create(broker.bootstrap, [_creatable(n, 2) for n in names])
    ids = {r.name: r.topic_id for r in created}
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for n in names:
        producer.produce(n, b"old", partition=1)
    assert producer.flush(TIMEOUT) == 0
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
    consumer.commit(offsets=[TopicPartition(names[0], 1, 1)], asynchronous=False)
    consumer.close()
    unknown_id = uuid.uuid4()
    body = dt.DeleteTopicsRequest(
        topics=(
            dt.DeleteTopicState(name=names[0], topic_id=None),
            dt.DeleteTopicState(name=None, topic_id=ids[names[1]]),
            dt.DeleteTopicState(name=f"{topic_name}-never", topic_id=None),
            dt.DeleteTopicState(name=names[0], topic_id=None),
            dt.DeleteTopicState(name=None, topic_id=unknown_id),
            dt.DeleteTopicState(name=names[2], topic_id=None),
        ),
        timeout=datetime.timedelta(seconds=10),
    )
    with RawClient(broker.bootstrap) as c:
        answers = c.call(20, 6, body).responses
    assert [(a.name, a.topic_id, a.error_code) for a in answers] == [
        (names[0], ids[names[0]], WireCode.none),
        (names[1], ids[names[1]], WireCode.none),
        (f"{topic_name}-never", None, WireCode.unknown_topic_or_partition),
        (names[0], None, WireCode.unknown_topic_or_partition),  # deleted by the first
        (None, unknown_id, WireCode.unknown_topic_id),
        (names[2], ids[names[2]], WireCode.none),
    ]
    left = {t.name for t in metadata(broker.bootstrap, names).topics if t.error_code == 0}
    assert left == {names[3]}
    # Made again, the name is a new, empty topic with no committed offsets.
    again = _create(broker.bootstrap, [_creatable(names[0], 2)])[0]
    assert again.error_code == WireCode.none and again.topic_id != ids[names[0]]
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    [listed] = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(names[0], 1)])]
    ).values()
    assert [tp.offset for tp in listed.result(TIMEOUT).topic_partitions] == [-1001]
    fresh = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"{group}-2"})
    try:
        low, high = fresh.get_watermark_offsets(TopicPartition(names[0], 1), timeout=TIMEOUT)
    finally:
        fresh.close()
    assert (low, high) == (0, 0)


def test_one_request_grows_its_topics_and_answers_each(
    broker: BrokerProcess, topic_name: str
) -> None:
    """Unknown, not larger, listed twice: each its own error; the others
    grow, and their new partitions take records."""
    from kio.schema.create_partitions.v3 import request as cp

    names = [f"{topic_name}-g{i}" for i in range(3)]
    assert all(
        r.error_code == WireCode.none
        for r in _create(broker.bootstrap, [_creatable(n, 2) for n in names])
    )

    def grow(*wanted: tuple[str, int]) -> list[Any]:
        body = cp.CreatePartitionsRequest(
            topics=tuple(
                cp.CreatePartitionsTopic(name=n, count=c, assignments=None) for n, c in wanted
            ),
            timeout=datetime.timedelta(seconds=10),
            validate_only=False,
        )
        with RawClient(broker.bootstrap) as c:
            return list(c.call(37, 3, body).results)

    results = grow(
        (names[0], 4),
        (f"{topic_name}-never", 3),
        (names[1], 2),
        (names[0], 5),
        (names[2], 3),
    )
    assert [(r.name, r.error_code) for r in results] == [
        (names[0], WireCode.none),
        (f"{topic_name}-never", WireCode.unknown_topic_or_partition),
        (names[1], WireCode.invalid_partitions),
        (names[0], WireCode.invalid_request),
        (names[2], WireCode.none),
    ]
    counts = {t.name: len(t.partitions) for t in metadata(broker.bootstrap, names).topics}
    assert counts == {names[0]: 4, names[1]: 2, names[2]: 3}
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    delivered: list[tuple[Any, int | None]] = []
    for n, p in ((names[0], 3), (names[2], 2)):
        producer.produce(
            n, b"new", partition=p, on_delivery=lambda e, m: delivered.append((e, m.offset()))
        )
    assert producer.flush(TIMEOUT) == 0
    assert delivered == [(None, 0), (None, 0)]


async def _catalog_missing_b(two_stores: tuple[MetaStore, MetaStore]) -> TopicCatalog:
    """Our catalog of topics a, b and c, loaded before another broker
    deleted b."""
    ours, theirs = two_stores
    for name in ("a", "b", "c"):
        await ours.create_topic(name, 1, {})
    catalog = TopicCatalog(ours, load_config())
    await catalog.load()
    await theirs.delete_topic("b")
    return catalog


async def test_a_topic_another_broker_just_deleted_is_not_grown(
    two_stores: tuple[MetaStore, MetaStore],
) -> None:
    ours, _theirs = two_stores
    catalog = await _catalog_missing_b(two_stores)
    placed = _placements(catalog)
    a, b, c = await catalog.add_partitions_many([("a", 3), ("b", 3), ("c", 2)])
    assert isinstance(a, Topic) and len(a.partitions) == 3
    assert isinstance(c, Topic) and len(c.partitions) == 2
    assert isinstance(b, ShoalError) and b.code == ErrorCode.unknown_topic_or_partition
    assert placed == [["a", "c"]]
    stored = {t.name: len(t.partitions) for t in await ours.list_topics()}
    assert stored == {"a": 3, "c": 2}


def test_one_request_changes_its_topics_configs_and_answers_each(
    broker: BrokerProcess, topic_name: str
) -> None:
    """IncrementalAlterConfigs with topics, an unknown topic, a bad value, a
    topic listed twice and a broker logger among them: each answered in
    order; the valid topics changed, the others as they were."""
    from kio.schema.incremental_alter_configs.v1 import request as iac

    names = [f"{topic_name}-c{i}" for i in range(3)]
    assert all(
        r.error_code == WireCode.none
        for r in _create(broker.bootstrap, [_creatable(n, 1) for n in names])
    )

    def topic(name: str, op: int, key: str, value: str | None) -> Any:
        return iac.AlterConfigsResource(
            resource_type=2,
            resource_name=name,
            configs=(iac.AlterableConfig(name=key, config_operation=op, value=value),),
        )

    body = iac.IncrementalAlterConfigsRequest(
        resources=(
            topic(names[0], 0, "retention.ms", "3600000"),  # SET
            topic(f"{topic_name}-never", 0, "retention.ms", "1"),
            topic(names[1], 0, "retention.ms", "not-a-number"),
            iac.AlterConfigsResource(
                resource_type=8,  # BROKER_LOGGER
                resource_name="0",
                configs=(
                    iac.AlterableConfig(name="shoal.topics", config_operation=0, value="INFO"),
                ),
            ),
            topic(names[0], 0, "retention.ms", "7200000"),
            topic(names[2], 0, "cleanup.policy", "compact"),
        ),
        validate_only=False,
    )
    with RawClient(broker.bootstrap) as c:
        answers = c.call(44, 1, body).responses
    assert [(a.resource_name, a.error_code) for a in answers] == [
        (names[0], WireCode.none),
        (f"{topic_name}-never", WireCode.unknown_topic_or_partition),
        (names[1], WireCode.invalid_config),
        ("0", WireCode.none),
        (names[0], WireCode.invalid_request),  # listed twice
        (names[2], WireCode.none),
    ]
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    described = admin.describe_configs([ConfigResource("topic", n) for n in names])
    values = {
        res.name: (cfg["retention.ms"].value, cfg["cleanup.policy"].value)
        for res, f in described.items()
        for cfg in [f.result(TIMEOUT)]
    }
    assert values[names[0]] == ("3600000", "delete")
    assert values[names[1]][0] != "not-a-number"
    assert values[names[2]][1] == "compact"


async def test_configs_of_a_topic_another_broker_just_deleted_are_not_set(
    two_stores: tuple[MetaStore, MetaStore],
) -> None:
    ours, _theirs = two_stores
    catalog = await _catalog_missing_b(two_stores)
    results = await catalog.alter_configs_many(
        [(n, {"retention.ms": "60000"}, [], False) for n in ("a", "b", "c")]
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], ShoalError)
    assert results[1].code == ErrorCode.unknown_topic_or_partition
    assert [catalog.get(n).overrides for n in ("a", "c")] == [{"retention.ms": "60000"}] * 2  # type: ignore[union-attr]
    stored = {t.name: t.configs for t in await ours.list_topics()}
    assert stored == {"a": {"retention.ms": "60000"}, "c": {"retention.ms": "60000"}}
