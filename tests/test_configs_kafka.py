"""Configs as Kafka answers them: every Kafka 4 topic key accepted with Kafka's
validation, described with source, synonyms, type and documentation; the
broker and broker-logger resources. kafka-python, aiokafka and confluent-kafka
admin clients, and raw DescribeConfigs/IncrementalAlterConfigs for error codes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource as KpConfigResource
from kafka.admin import ConfigResourceType
from kio.schema.describe_configs.v4 import request as dc
from kio.schema.errors import ErrorCode
from kio.schema.incremental_alter_configs.v1 import request as iac

from harness import BrokerProcess
from shoal.config_catalog import TOPIC_CONFIGS
from wire import RawClient, create_topic

TOPIC, BROKER, BROKER_LOGGER = 2, 4, 8
NODE = "0"  # the test broker's node.id
SET, DELETE, APPEND = 0, 1, 2

#: a valid value other than Kafka's default, for every topic key
GOOD = {
    "cleanup.policy": "compact,delete",
    "compression.gzip.level": "9",
    "compression.lz4.level": "17",
    "compression.type": "zstd",
    "compression.zstd.level": "-5",
    "delete.retention.ms": "1000",
    "file.delete.delay.ms": "0",
    "flush.messages": "10",
    "flush.ms": "1000",
    "follower.replication.throttled.replicas": "0:1,1:1",
    "index.interval.bytes": "0",
    "leader.replication.throttled.replicas": "*",
    "local.retention.bytes": "-2",
    "local.retention.ms": "60000",
    "max.compaction.lag.ms": "1",
    "max.message.bytes": "2000000",
    "message.downconversion.enable": "false",
    "message.format.version": "2.8",
    "message.timestamp.after.max.ms": "0",
    "message.timestamp.before.max.ms": "86400000",
    "message.timestamp.difference.max.ms": "5000",
    "message.timestamp.type": "LogAppendTime",
    "min.cleanable.dirty.ratio": "0.25",
    "min.compaction.lag.ms": "0",
    "min.insync.replicas": "2",
    "preallocate": "true",
    "remote.log.copy.disable": "true",
    "remote.log.delete.on.disable": "true",
    "remote.storage.enable": "true",
    "retention.bytes": "-1",
    "retention.ms": "3600000",
    "segment.bytes": "1048576",
    "segment.index.bytes": "4",
    "segment.jitter.ms": "10",
    "segment.ms": "1",
    "unclean.leader.election.enable": "true",
}

#: values Kafka refuses, one per kind of rule
BAD = [
    ("cleanup.policy", "forever"),
    ("cleanup.policy", "delete,,compact"),
    ("compression.type", "brotli"),
    ("compression.gzip.level", "10"),
    ("compression.gzip.level", "0"),
    ("compression.lz4.level", "18"),
    ("compression.zstd.level", "23"),
    ("delete.retention.ms", "-1"),
    ("flush.messages", "0"),
    ("follower.replication.throttled.replicas", "0-1"),
    ("index.interval.bytes", "x"),
    ("local.retention.ms", "-3"),
    ("max.compaction.lag.ms", "0"),
    ("max.message.bytes", "2147483648"),
    ("message.timestamp.after.max.ms", "-1"),
    ("message.timestamp.type", "createtime"),
    ("min.cleanable.dirty.ratio", "1.5"),
    ("min.insync.replicas", "0"),
    ("preallocate", "maybe"),
    ("retention.ms", "-2"),
    ("segment.bytes", "1048575"),
    ("segment.index.bytes", "3"),
    ("segment.ms", "0"),
    ("unclean.leader.election.enable", "yes"),
]


@pytest.fixture(scope="module")
def kp_admin(broker: BrokerProcess) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    yield admin
    admin.close()


def new_topic(broker: BrokerProcess, configs: dict[str, str] | None = None) -> str:
    name = f"cfg-{uuid.uuid4().hex[:10]}"
    assert create_topic(broker.bootstrap, name, configs=configs) == ErrorCode.none
    return name


def describe_raw(
    broker: BrokerProcess,
    rtype: int,
    name: str,
    keys: tuple[str, ...] | None = None,
    *,
    docs: bool = True,
    synonyms: bool = True,
) -> Any:
    body = dc.DescribeConfigsRequest(
        resources=(
            dc.DescribeConfigsResource(
                resource_type=rtype, resource_name=name, configuration_keys=keys
            ),
        ),
        include_synonyms=synonyms,
        include_documentation=docs,
    )
    with RawClient(broker.bootstrap) as c:
        return c.call(32, 4, body).results[0]


def alter_raw(
    broker: BrokerProcess, rtype: int, name: str, ops: list[tuple[str, int, str | None]]
) -> Any:
    body = iac.IncrementalAlterConfigsRequest(
        resources=(
            iac.AlterConfigsResource(
                resource_type=rtype,
                resource_name=name,
                configs=tuple(
                    iac.AlterableConfig(name=k, config_operation=op, value=v) for k, op, v in ops
                ),
            ),
        ),
        validate_only=False,
    )
    with RawClient(broker.bootstrap) as c:
        return c.call(44, 1, body).responses[0]


def test_catalogue_covers_kafka_4_and_the_3x_migration_keys() -> None:
    names = [d.name for d in TOPIC_CONFIGS]
    assert names == sorted(names)
    assert set(names) == set(GOOD)
    for d in TOPIC_CONFIGS:
        assert d.doc and d.shoal in ("honoured", "stored only"), d.name


def test_describe_topic_with_kafka_python(
    broker: BrokerProcess, kp_admin: KafkaAdminClient
) -> None:
    name = new_topic(broker, {"retention.ms": "3600000"})
    out = kp_admin.describe_configs(
        [KpConfigResource(ConfigResourceType.TOPIC, name)],
        include_synonyms=True,
        config_filter="all",
    )
    configs = out["topic"][name]
    assert list(configs) == sorted(GOOD)
    retention = configs["retention.ms"]
    assert retention["value"] == "3600000"
    assert retention["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert [(s["name"], s["value"], s["source"]) for s in retention["synonyms"]] == [
        ("retention.ms", "3600000", "DYNAMIC_TOPIC_CONFIG"),
        ("log.retention.ms", "604800000", "DEFAULT_CONFIG"),
    ]
    segment_ms = configs["segment.ms"]
    assert segment_ms["value"] == "604800000"
    assert segment_ms["config_source"] == "DEFAULT_CONFIG"
    assert [(s["name"], s["value"]) for s in segment_ms["synonyms"]] == [("log.roll.hours", "168")]
    assert configs["min.cleanable.dirty.ratio"]["config_type"] == "DOUBLE"
    assert configs["cleanup.policy"]["config_type"] == "LIST"
    assert configs["segment.bytes"]["config_type"] == "INT"
    assert configs["preallocate"]["config_type"] == "BOOLEAN"
    # the default filter: only what differs from the defaults
    modified = kp_admin.describe_configs([KpConfigResource(ConfigResourceType.TOPIC, name)])
    assert list(modified["topic"][name]) == ["retention.ms"]


def test_documentation_only_when_asked(broker: BrokerProcess) -> None:
    name = new_topic(broker)
    with_docs = describe_raw(broker, TOPIC, name)
    assert with_docs.error_code == ErrorCode.none
    assert len(with_docs.configs) == len(GOOD)
    assert all(c.documentation for c in with_docs.configs)
    bare = describe_raw(broker, TOPIC, name, ("segment.bytes",), docs=False, synonyms=False)
    assert [(c.name, c.documentation, c.synonyms) for c in bare.configs] == [
        ("segment.bytes", None, ())
    ]


def test_every_key_can_be_set_and_read_back(broker: BrokerProcess) -> None:
    name = new_topic(broker)
    result = alter_raw(broker, TOPIC, name, [(k, SET, v) for k, v in GOOD.items()])
    assert result.error_code == ErrorCode.none, result.error_message
    described = {c.name: c for c in describe_raw(broker, TOPIC, name).configs}
    for key, value in GOOD.items():
        c = described[key]
        assert c.config_source == 1, key  # DYNAMIC_TOPIC_CONFIG
        assert c.synonyms[0].name == key
        assert (
            float(c.value) == float(value)
            if key == "min.cleanable.dirty.ratio"
            else (c.value == value)
        ), (key, c.value)
    # and removed again: back to the default, source DEFAULT_CONFIG
    result = alter_raw(broker, TOPIC, name, [(k, DELETE, None) for k in GOOD])
    assert result.error_code == ErrorCode.none, result.error_message
    described = {c.name: c for c in describe_raw(broker, TOPIC, name).configs}
    assert described["segment.bytes"].value == str(1 << 30)
    assert described["segment.bytes"].config_source == 5


def test_every_key_at_creation_with_confluent(broker: BrokerProcess) -> None:
    from confluent_kafka.admin import NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    name = f"cfg-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(name, 1, 1, config=GOOD)])[name].result(timeout=15)
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    entries = admin.describe_configs([res])[res].result(timeout=15)
    assert entries["compression.type"].value == "zstd"
    assert entries["compression.type"].source == 1
    assert entries["message.format.version"].value == "2.8"


@pytest.mark.parametrize("key, value", BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_bad_value_is_refused_naming_the_key(broker: BrokerProcess, key: str, value: str) -> None:
    name = new_topic(broker)
    result = alter_raw(broker, TOPIC, name, [(key, SET, value)])
    assert result.error_code == ErrorCode.invalid_config
    assert key in result.error_message and repr(value) in result.error_message
    assert create_topic(broker.bootstrap, f"{name}-b", configs={key: value}) == (
        ErrorCode.invalid_config
    )


def test_unknown_key_is_refused(broker: BrokerProcess) -> None:
    name = new_topic(broker)
    result = alter_raw(broker, TOPIC, name, [("segment.size", SET, "1")])
    assert result.error_code == ErrorCode.invalid_config
    assert "segment.size" in result.error_message


def test_list_keys_append(broker: BrokerProcess) -> None:
    name = new_topic(broker)
    assert (
        alter_raw(
            broker, TOPIC, name, [("leader.replication.throttled.replicas", APPEND, "0:1")]
        ).error_code
        == ErrorCode.none
    )
    assert (
        alter_raw(
            broker, TOPIC, name, [("leader.replication.throttled.replicas", APPEND, "1:1")]
        ).error_code
        == ErrorCode.none
    )
    got = describe_raw(broker, TOPIC, name, ("leader.replication.throttled.replicas",))
    assert got.configs[0].value == "0:1,1:1"


def test_confluent_refuses_a_bad_value(broker: BrokerProcess) -> None:
    from confluent_kafka import KafkaException

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    name = new_topic(broker)
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        name,
        incremental_configs=[
            ConfigEntry("segment.bytes", "100", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    with pytest.raises(KafkaException) as info:
        admin.incremental_alter_configs([res])[res].result(timeout=15)
    assert info.value.args[0].code() == ErrorCode.invalid_config.value
    assert "segment.bytes" in info.value.args[0].str()


def test_aiokafka_describes_topic_configs(broker: BrokerProcess) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource as AioResource
    from aiokafka.admin.config_resource import ConfigResourceType as AioType

    name = new_topic(broker, {"compression.type": "lz4"})

    async def go() -> dict[str, Any]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            responses = await admin.describe_configs(
                [AioResource(AioType.TOPIC, name)], include_synonyms=True
            )
        finally:
            await admin.close()
        out = {}
        for r in responses:
            for res in r.resources:
                for entry in res[4]:
                    out[entry[0]] = entry
        return out

    configs = asyncio.run(go())
    assert configs["compression.type"][1] == "lz4"
    assert set(configs) == set(GOOD)


def test_broker_resource(broker: BrokerProcess, kp_admin: KafkaAdminClient) -> None:
    out = kp_admin.describe_configs(
        [KpConfigResource(ConfigResourceType.BROKER, NODE)], config_filter="all"
    )
    configs = out["broker"][NODE]
    assert configs["advertised.listeners"]["value"] == f"PLAINTEXT://{broker.bootstrap}"
    assert configs["log.segment.bytes"]["value"] == str(1 << 30)
    assert configs["log.segment.bytes"]["read_only"] is True
    assert configs["message.max.bytes"]["value"] == "1048588"


def test_broker_logger_levels(broker: BrokerProcess) -> None:
    before = {c.name: c.value for c in describe_raw(broker, BROKER_LOGGER, NODE).configs}
    assert before["root"] in ("INFO", "WARN", "DEBUG")
    assert "shoal.produce" in before
    result = alter_raw(broker, BROKER_LOGGER, NODE, [("shoal.produce", SET, "DEBUG")])
    assert result.error_code == ErrorCode.none, result.error_message
    after = {c.name: c for c in describe_raw(broker, BROKER_LOGGER, NODE).configs}
    assert after["shoal.produce"].value == "DEBUG"
    assert after["shoal.produce"].config_source == 6  # DYNAMIC_BROKER_LOGGER_CONFIG
    bad = alter_raw(broker, BROKER_LOGGER, NODE, [("shoal.produce", SET, "LOUD")])
    assert bad.error_code == ErrorCode.invalid_config and "LOUD" in bad.error_message
    root = alter_raw(broker, BROKER_LOGGER, NODE, [("root", DELETE, None)])
    assert root.error_code == ErrorCode.invalid_request
    reset = alter_raw(broker, BROKER_LOGGER, NODE, [("shoal.produce", DELETE, None)])
    assert reset.error_code == ErrorCode.none
    again = {c.name: c.value for c in describe_raw(broker, BROKER_LOGGER, NODE).configs}
    assert again["shoal.produce"] == before["shoal.produce"]
    other = describe_raw(broker, BROKER_LOGGER, "7")
    assert other.error_code == ErrorCode.invalid_request


def test_list_config_resources(broker: BrokerProcess, kp_admin: KafkaAdminClient) -> None:
    name = new_topic(broker)
    from kio.schema.list_config_resources.v1 import request as lcr

    with RawClient(broker.bootstrap) as c:
        resp = c.call(74, 1, lcr.ListConfigResourcesRequest(resource_types=()))
    found = {(r.resource_type, r.resource_name) for r in resp.config_resources}
    assert (TOPIC, name) in found and (BROKER, NODE) in found and (BROKER_LOGGER, NODE) in found
    with RawClient(broker.bootstrap) as c:
        bad = c.call(74, 1, lcr.ListConfigResourcesRequest(resource_types=(99,)))
    assert bad.error_code == ErrorCode.invalid_request


def test_keys_that_conflict_are_refused(broker: BrokerProcess) -> None:
    """Kafka's cross-key rules, against the topic's other values and defaults."""
    conflict = {"min.compaction.lag.ms": "5000", "max.compaction.lag.ms": "1000"}
    assert create_topic(broker.bootstrap, f"cfg-{uuid.uuid4().hex[:8]}", configs=conflict) == (
        ErrorCode.invalid_config
    )
    name = new_topic(broker, {"max.compaction.lag.ms": "1000"})
    result = alter_raw(broker, TOPIC, name, [("min.compaction.lag.ms", SET, "5000")])
    assert result.error_code == ErrorCode.invalid_config
    assert "max.compaction.lag.ms (1000)" in result.error_message
    # with the max removed in the same request, the default (no bound) applies
    ok = alter_raw(
        broker,
        TOPIC,
        name,
        [("min.compaction.lag.ms", SET, "5000"), ("max.compaction.lag.ms", DELETE, None)],
    )
    assert ok.error_code == ErrorCode.none, ok.error_message
    tiered = new_topic(broker, {"remote.storage.enable": "true", "retention.ms": "60000"})
    bad = alter_raw(broker, TOPIC, tiered, [("local.retention.ms", SET, "120000")])
    assert bad.error_code == ErrorCode.invalid_config
    assert "local.retention.ms" in bad.error_message
    fine = alter_raw(broker, TOPIC, tiered, [("local.retention.ms", SET, "30000")])
    assert fine.error_code == ErrorCode.none


@pytest.mark.parametrize("incremental", [True, False], ids=["incremental", "legacy"])
def test_kafka_python_alter_configs_with_every_key(
    broker: BrokerProcess, kp_admin: KafkaAdminClient, incremental: bool
) -> None:
    """kafka-python checks each key against the broker's dynamic topic configs
    first (raise_on_unknown), so every key must be described as alterable."""
    name = new_topic(broker)
    kp_admin.alter_configs(
        [KpConfigResource(ConfigResourceType.TOPIC, name, configs=dict(GOOD))],
        incremental=incremental,
    )
    out = kp_admin.describe_configs([KpConfigResource(ConfigResourceType.TOPIC, name)])
    got = {k: v["value"] for k, v in out["topic"][name].items()}
    assert set(got) == set(GOOD)
    assert got["compression.type"] == "zstd" and got["segment.bytes"] == "1048576"


def test_aiokafka_alters_configs_and_sees_refusals(broker: BrokerProcess) -> None:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource as AioResource
    from aiokafka.admin.config_resource import ConfigResourceType as AioType

    good, bad = new_topic(broker), new_topic(broker)

    async def go() -> list[tuple[str, int, str]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            responses = await admin.alter_configs(
                [
                    AioResource(AioType.TOPIC, good, configs=dict(GOOD)),
                    AioResource(AioType.TOPIC, bad, configs={"segment.ms": "0"}),
                ]
            )
        finally:
            await admin.close()
        return [(r[3], r[0], r[1]) for resp in responses for r in resp.resources]

    results = {name: (code, message) for name, code, message in asyncio.run(go())}
    assert results[good][0] == 0
    assert results[bad][0] == ErrorCode.invalid_config.value
    assert "segment.ms" in results[bad][1]
    got = {c.name: c.value for c in describe_raw(broker, TOPIC, good).configs}
    assert got["message.timestamp.type"] == "LogAppendTime"
