"""DescribeConfigs, AlterConfigs and IncrementalAlterConfigs.

Topic configs are stored overrides over broker defaults. Broker configs are
static (file, environment, flags) and described read-only.
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
from shoal.config import BROKER_KEYS, TOPIC_DEFAULT_FROM, TOPIC_KEYS, Key
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType

log = logging.getLogger("shoal.configs")
ZERO = datetime.timedelta(0)

TOPIC = 2
BROKER = 4

# DescribeConfigs config sources
DYNAMIC_TOPIC_CONFIG = 1
STATIC_BROKER_CONFIG = 4
DEFAULT_CONFIG = 5

# config types
BOOLEAN, STRING, LONG, LIST = 1, 2, 5, 7

SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3
LIST_KEYS = {"cleanup.policy"}
DESCRIBE_CONFIGS = AclOperation.DESCRIBE_CONFIGS


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    value: str | None
    source: int
    config_type: int
    read_only: bool
    doc: str
    sensitive: bool = False  # a secret: never sent (Kafka sends null)


def _type(key: Key) -> int:
    if key.name in LIST_KEYS:
        return LIST
    return {bool: BOOLEAN, int: LONG}.get(key.kind, STRING)


def _render(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def topic_config_entries(broker: Broker, topic: Topic) -> list[Entry]:
    out = []
    for name, key in TOPIC_KEYS.items():
        if name in topic.overrides:
            value, source = topic.overrides[name], DYNAMIC_TOPIC_CONFIG
        else:
            value = _render(broker.config.topic_default(name))
            from_key = TOPIC_DEFAULT_FROM.get(name)
            static = from_key is not None and broker.config.sources.get(from_key) != "default"
            source = STATIC_BROKER_CONFIG if static else DEFAULT_CONFIG
        out.append(Entry(name, value, source, _type(key), False, key.doc))
    return out


def broker_config_entries(broker: Broker) -> list[Entry]:
    return [
        Entry(
            name,
            None if key.secret else _public(name, _render(broker.config[name])),
            DEFAULT_CONFIG
            if broker.config.sources.get(name) == "default"
            else STATIC_BROKER_CONFIG,
            _type(key),
            True,
            key.doc,
            key.secret,
        )
        for name, key in BROKER_KEYS.items()
    ]


def _public(name: str, value: str) -> str:
    """A URL's password is not shown (postgresql://user:***@host/db)."""
    if name != "metadata" or "@" not in value:
        return value
    from sqlalchemy.engine import make_url

    try:
        return make_url(value).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: show nothing of it
        return "***"


async def handle_describe_configs(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(32, header.api_version)
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
                if r.resource_name not in ("", str(broker.node.node_id)):
                    raise KafkaError(
                        ErrorCode.invalid_request,
                        f"this is broker {broker.node.node_id}, not {r.resource_name}",
                    )
                broker.require(client, DESCRIBE_CONFIGS, ResourceType.CLUSTER, CLUSTER_NAME)
                entries = broker_config_entries(broker)
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
                        synonyms=(),
                        config_type=e.config_type,
                        documentation=e.doc
                        if getattr(body, "include_documentation", False)
                        else None,
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
    out = []
    for r in body.resources:
        code, message = ErrorCode.none, None
        try:
            _check_topic_resource(r.resource_type)
            broker.require(client, AclOperation.ALTER_CONFIGS, ResourceType.TOPIC, r.resource_name)
            set_, remove, replace = changes(r)
            await broker.topics.alter_configs(
                r.resource_name,
                set_,
                remove,
                replace=replace,
                validate_only=bool(body.validate_only),
            )
        except KafkaError as exc:
            code, message = exc.code, str(exc)
            log.info("%s %r from %s: %s", what, r.resource_name, client, message)
        broker.audit.admin(
            client, what, "TOPIC", r.resource_name, code.name,
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
