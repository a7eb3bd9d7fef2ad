"""DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.

Topic configs are stored overrides over broker defaults, described as Kafka
describes them: every Kafka 4 topic key (config_catalog.py), with its source,
its synonyms (the topic's value, then the broker keys behind the default), its
type and documentation. Broker configs are static (file, environment, flags)
and described read-only. The broker-logger resource shows and sets the
broker's log levels, as Kafka's does.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.broker.topics import Topic
from shoal.config import BROKER_KEYS, TOPIC_DEFAULT_FROM, Key
from shoal.config_catalog import BY_NAME, LIST, TOPIC_CONFIGS, synonym_default
from shoal.meta.store import redact_url
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType

log = logging.getLogger("shoal.configs")
ZERO = datetime.timedelta(0)

TOPIC = 2
BROKER = 4
BROKER_LOGGER = 8

# DescribeConfigs config sources
DYNAMIC_TOPIC_CONFIG = 1
STATIC_BROKER_CONFIG = 4
DEFAULT_CONFIG = 5
DYNAMIC_BROKER_LOGGER_CONFIG = 6

# config types
UNKNOWN, BOOLEAN, STRING, LONG, DOUBLE = 0, 1, 2, 5, 6

SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3
LIST_KEYS = {d.name for d in TOPIC_CONFIGS if d.kafka_type == LIST}
DESCRIBE_CONFIGS = AclOperation.DESCRIBE_CONFIGS

#: Kafka's log levels and Python's
LEVELS = {
    "OFF": logging.CRITICAL + 10,
    "FATAL": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARN": logging.WARNING,
    "INFO": logging.INFO,
    "DEBUG": logging.DEBUG,
    "TRACE": logging.DEBUG,
}
_LEVEL_NAMES = {
    logging.CRITICAL + 10: "OFF",
    logging.CRITICAL: "FATAL",
    logging.ERROR: "ERROR",
    logging.WARNING: "WARN",
    logging.INFO: "INFO",
    logging.DEBUG: "DEBUG",
}
ROOT_LOGGER = "root"

# (name, value, source) of one synonym
Synonym = tuple[str, str | None, int]


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    value: str | None
    source: int
    config_type: int
    read_only: bool
    doc: str | None
    sensitive: bool = False  # a secret: never sent (Kafka sends null)
    synonyms: tuple[Synonym, ...] = ()


def _type(key: Key) -> int:
    d = BY_NAME.get(key.name)
    if d is not None:
        return d.kafka_type
    return {bool: BOOLEAN, int: LONG, float: DOUBLE}.get(key.kind, STRING)


def _render(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _broker_source(broker: Broker, key: str) -> int:
    return DEFAULT_CONFIG if broker.config.sources.get(key) == "default" else STATIC_BROKER_CONFIG


def _broker_synonyms(broker: Broker, key: str) -> tuple[Synonym, ...]:
    """A Shoal broker key as a synonym: its configured value, then its default."""
    out: list[Synonym] = []
    if _broker_source(broker, key) == STATIC_BROKER_CONFIG:
        out.append((key, _render(broker.config[key]), STATIC_BROKER_CONFIG))
    out.append((key, _render(BROKER_KEYS[key].default), DEFAULT_CONFIG))
    return tuple(out)


def topic_config_entries(broker: Broker, topic: Topic) -> list[Entry]:
    out = []
    for d in TOPIC_CONFIGS:
        name = d.name
        from_key = TOPIC_DEFAULT_FROM.get(name)
        if from_key is not None:
            synonyms = _broker_synonyms(broker, from_key)
        else:
            synonyms = tuple(
                (s, v, DEFAULT_CONFIG)
                for s in d.synonyms
                if (v := synonym_default(d, s)) is not None
            )
        if name in topic.overrides:
            value, source = topic.overrides[name], DYNAMIC_TOPIC_CONFIG
            synonyms = ((name, value, DYNAMIC_TOPIC_CONFIG), *synonyms)
        else:
            value = _render(broker.config.topic_default(name))
            source = DEFAULT_CONFIG if from_key is None else _broker_source(broker, from_key)
        out.append(Entry(name, value, source, d.kafka_type, False, d.doc, False, synonyms))
    return out


def broker_config_entries(broker: Broker) -> list[Entry]:
    out = [
        Entry(
            name,
            None if key.secret else redact_url(_broker_value(broker, name)),  # URLs' passwords
            _broker_source(broker, name),
            _type(key),
            True,
            key.doc,
            key.secret,
            () if key.secret else _broker_synonyms(broker, name),
        )
        for name, key in BROKER_KEYS.items()
    ]
    # Kafka's broker-side topic defaults that Shoal has no key of its own for:
    # shown with Kafka's default, read-only, so tools that read them find them.
    shown = set(BROKER_KEYS)
    for d in TOPIC_CONFIGS:
        for s in d.synonyms:
            if s in shown:
                continue
            shown.add(s)
            value = synonym_default(d, s)
            out.append(
                Entry(
                    s, value, DEFAULT_CONFIG, d.kafka_type, True, f"default {d.name} of topics",
                    synonyms=((s, value, DEFAULT_CONFIG),),
                )
            )  # fmt: skip
    out.sort(key=lambda e: e.name)
    return out


def _broker_value(broker: Broker, name: str) -> str:
    if name == "advertised.listeners" and not broker.config[name]:
        # Unset: what clients are actually given, per listener.
        return ",".join(
            f"{lst.name}://{lst.advertised_host}:{lst.advertised_port}" for lst in broker.listeners
        )
    return _render(broker.config[name])


def logger_entries() -> list[Entry]:
    """The root logger and every Shoal logger, at their effective level."""
    names = sorted(
        n
        for n, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger) and (n == "shoal" or n.startswith("shoal."))
    )
    loggers = [(ROOT_LOGGER, logging.getLogger())] + [(n, logging.getLogger(n)) for n in names]
    return [
        Entry(
            name,
            _level_name(lg.getEffectiveLevel()),
            DYNAMIC_BROKER_LOGGER_CONFIG,
            UNKNOWN,
            False,
            None,
        )
        for name, lg in loggers
    ]


def _level_name(level: int) -> str:
    for number in sorted(_LEVEL_NAMES, reverse=True):
        if level >= number:
            return _LEVEL_NAMES[number]
    return "TRACE"


def _check_broker_name(broker: Broker, name: str, *, empty_ok: bool) -> None:
    if (empty_ok and name == "") or name == str(broker.node.node_id):
        return
    raise KafkaError(
        ErrorCode.invalid_request, f"this is broker {broker.node.node_id}, not {name!r}"
    )


async def handle_describe_configs(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(32, header.api_version)
    with_docs = bool(getattr(body, "include_documentation", False))
    with_synonyms = bool(getattr(body, "include_synonyms", False))
    results = []
    for r in body.resources:
        code, message, entries = ErrorCode.none, None, []
        try:
            if r.resource_type == TOPIC:
                broker.require(client, DESCRIBE_CONFIGS, ResourceType.TOPIC, r.resource_name)
                topic = broker.topics.get(r.resource_name)
                if topic is None:
                    raise KafkaError(
                        ErrorCode.unknown_topic_or_partition, f"no topic {r.resource_name!r}"
                    )
                entries = topic_config_entries(broker, topic)
            elif r.resource_type == BROKER:
                _check_broker_name(broker, r.resource_name, empty_ok=True)
                broker.require(client, DESCRIBE_CONFIGS, ResourceType.CLUSTER, CLUSTER_NAME)
                entries = broker_config_entries(broker)
            elif r.resource_type == BROKER_LOGGER:
                _check_broker_name(broker, r.resource_name, empty_ok=False)
                broker.require(client, DESCRIBE_CONFIGS, ResourceType.CLUSTER, CLUSTER_NAME)
                entries = logger_entries()
            else:
                raise KafkaError(
                    ErrorCode.invalid_request, f"resource type {r.resource_type} is not supported"
                )
        except KafkaError as exc:
            code, message = exc.code, str(exc)
        wanted = set(r.configuration_keys) if r.configuration_keys else None
        results.append(
            s.DescribeConfigsResult(
                error_code=code,
                error_message=message,
                resource_type=r.resource_type,
                resource_name=r.resource_name,
                configs=tuple(
                    s.DescribeConfigsResourceResult(
                        name=e.name,
                        value=e.value,
                        read_only=e.read_only,
                        config_source=e.source,
                        is_sensitive=e.sensitive,
                        synonyms=tuple(
                            s.DescribeConfigsSynonym(name=n, value=v, source=src)
                            for n, v, src in e.synonyms
                        )
                        if with_synonyms
                        else (),
                        config_type=e.config_type,
                        documentation=e.doc if with_docs else None,
                        is_default=e.source == DEFAULT_CONFIG,
                    )
                    for e in entries
                    if wanted is None or e.name in wanted
                ),
            )
        )
    return s.DescribeConfigsResponse(throttle_time=ZERO, results=tuple(results))


# (set, remove, replace) for one resource of an alter request
Changes = tuple[dict[str, str | None], list[str], bool]


async def handle_alter_configs(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """The legacy, non-incremental form: the given set replaces all overrides."""
    s = Schema(33, header.api_version)

    def changes(r: Any) -> Changes:
        return {c.name: c.value for c in r.configs}, [], True

    out = await _alter(broker, client, s, body, changes, "alter configs")
    return s.AlterConfigsResponse(throttle_time=ZERO, responses=out)


async def handle_incremental_alter_configs(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(44, header.api_version)

    def changes(r: Any) -> Changes:
        topic = broker.topics.get(r.resource_name)
        if topic is None:
            raise KafkaError(ErrorCode.unknown_topic_or_partition, f"no topic {r.resource_name!r}")
        set_: dict[str, str | None] = {}
        remove: list[str] = []
        for c in r.configs:
            op = c.config_operation
            if op == SET:
                set_[c.name] = c.value
            elif op == DELETE:
                remove.append(c.name)
            elif op in (APPEND, SUBTRACT) and c.name in LIST_KEYS:
                current = topic.overrides.get(c.name) or _render(
                    broker.config.topic_default(c.name)
                )
                items = [x for x in current.split(",") if x]
                change = [x.strip() for x in (c.value or "").split(",") if x.strip()]
                if op == APPEND:
                    items += [x for x in change if x not in items]
                else:
                    items = [x for x in items if x not in change]
                set_[c.name] = ",".join(items)
            else:
                raise KafkaError(
                    ErrorCode.invalid_config, f"operation {op} is not valid for {c.name!r}"
                )
        return set_, remove, False

    out = await _alter(broker, client, s, body, changes, "incremental alter configs")
    return s.IncrementalAlterConfigsResponse(throttle_time=ZERO, responses=out)


async def _alter(
    broker: Broker,
    client: Client,
    s: Schema,
    body: Any,
    changes: Callable[[Any], Changes],
    what: str,
) -> tuple[Any, ...]:
    # Loggers are set as they come; each topic's checks run first, then
    # every topic that passed them is changed at once
    # (TopicCatalog.alter_configs_many); one result per resource, in order.
    outcome: list[KafkaError | None] = []
    kinds: list[str] = []
    wanted: list[tuple[str, dict[str, str | None], list[str], bool]] = []
    for r in body.resources:
        kind = "TOPIC"
        try:
            if r.resource_type == BROKER_LOGGER and what.startswith("incremental"):
                kind = "BROKER_LOGGER"
                _check_broker_name(broker, r.resource_name, empty_ok=False)
                broker.require(
                    client, AclOperation.ALTER_CONFIGS, ResourceType.CLUSTER, CLUSTER_NAME
                )
                _alter_loggers(r.configs, bool(body.validate_only), client)
                outcome.append(None)
            else:
                _check_topic_resource(r.resource_type)
                broker.require(
                    client, AclOperation.ALTER_CONFIGS, ResourceType.TOPIC, r.resource_name
                )
                set_, remove, replace = changes(r)
                wanted.append((r.resource_name, set_, remove, replace))
                outcome.append(_PENDING)
        except KafkaError as exc:
            outcome.append(exc)
        kinds.append(kind)
    altered = iter(
        await broker.topics.alter_configs_many(wanted, validate_only=bool(body.validate_only))
    )
    out = []
    for r, kind, early in zip(body.resources, kinds, outcome, strict=True):
        result = next(altered) if early is _PENDING else early
        code, message = ErrorCode.none, None
        if result is not None:
            code, message = result.code, str(result)
            log.info("%s %r from %s: %s", what, r.resource_name, client, message)
        broker.audit.admin(
            client, what, kind, r.resource_name, code.name,
            configs={c.name: c.value for c in r.configs}, validate_only=bool(body.validate_only),
        )  # fmt: skip
        out.append(
            s.AlterConfigsResourceResponse(
                error_code=code,
                error_message=message,
                resource_type=r.resource_type,
                resource_name=r.resource_name,
            )
        )
    return tuple(out)


# A topic resource whose change waits for alter_configs_many.
_PENDING = KafkaError(ErrorCode.none, "pending")


def _check_topic_resource(resource_type: int) -> None:
    if resource_type == BROKER:
        raise KafkaError(
            ErrorCode.invalid_request,
            "broker configs are static: set them in the config file or environment",
        )
    if resource_type != TOPIC:
        raise KafkaError(
            ErrorCode.invalid_request, f"resource type {resource_type} is not supported"
        )


def _alter_loggers(configs: Any, validate_only: bool, client: Client) -> None:
    """Set (SET) or reset to the parent's (DELETE) log levels; all or none."""
    plan: list[tuple[logging.Logger, int]] = []
    for c in configs:
        name = c.name
        lg = logging.getLogger() if name == ROOT_LOGGER else logging.getLogger(name)
        if c.config_operation == SET:
            level = LEVELS.get((c.value or "").upper())
            if level is None:
                raise KafkaError(
                    ErrorCode.invalid_config,
                    f"log level {c.value!r} for {name!r} is not one of {', '.join(LEVELS)}",
                )
            plan.append((lg, level))
        elif c.config_operation == DELETE:
            if name == ROOT_LOGGER:
                raise KafkaError(
                    ErrorCode.invalid_request, "the root logger's level cannot be removed"
                )
            plan.append((lg, logging.NOTSET))
        else:
            raise KafkaError(
                ErrorCode.invalid_request,
                f"operation {c.config_operation} is not valid for logger {name!r}",
            )
    if validate_only:
        return
    for lg, level in plan:
        lg.setLevel(level)
        log.info("logger %s level now %s, set by %s", lg.name, logging.getLevelName(level), client)


CLIENT_METRICS, GROUP = 16, 32


async def handle_list_config_resources(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    """ListConfigResources (KIP-1142): the resources that configs can be
    described for. v0 (ListClientMetricsResources) lists client-metrics
    subscriptions, which Shoal does not have; groups carry no configs here."""
    s = Schema(74, header.api_version)
    known = (TOPIC, BROKER, BROKER_LOGGER, CLIENT_METRICS, GROUP)
    types = tuple(getattr(body, "resource_types", (CLIENT_METRICS,))) or known
    bad = [t for t in types if t not in known]
    if bad:
        return s.ListConfigResourcesResponse(
            throttle_time=ZERO, error_code=ErrorCode.invalid_request, config_resources=()
        )
    out: list[Any] = []
    for rtype in types:
        if rtype == TOPIC:
            out += [
                s.ConfigResource(resource_name=t.name, resource_type=TOPIC)
                for t in sorted(broker.topics.all(), key=lambda t: t.name)
                if broker.authorize(client, DESCRIBE_CONFIGS, ResourceType.TOPIC, t.name, False)
            ]
        elif rtype in (BROKER, BROKER_LOGGER) and broker.authorize(
            client, DESCRIBE_CONFIGS, ResourceType.CLUSTER, CLUSTER_NAME, False
        ):
            out += [
                s.ConfigResource(resource_name=str(n.node_id), resource_type=rtype)
                for n in broker.live_nodes()
            ]
    return s.ListConfigResourcesResponse(
        throttle_time=ZERO, error_code=ErrorCode.none, config_resources=tuple(out)
    )
