"""DescribeClientQuotas and AlterClientQuotas: Kafka's client quota admin APIs.

Changes go to the metadata store in one transaction and apply on this broker
before the answer; other brokers pick them up from the version counter. As in
Kafka, altering needs ALTER_CONFIGS and describing DESCRIBE_CONFIGS on the
cluster (when an authorizer is on); a bad entity, key or value is answered
INVALID_REQUEST for that entry, naming it, and nothing of the entry is stored.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.meta.quotas import QuotaOp
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType
from shoal.security.quotas import Entity, QuotaError, check_value, describe

log = logging.getLogger("shoal.quotas")
ZERO = datetime.timedelta(0)


async def handle_describe_client_quotas(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(48, header.api_version)
    code, message, entries = ErrorCode.none, None, None
    if not broker.authorize(
        client, AclOperation.DESCRIBE_CONFIGS, ResourceType.CLUSTER, CLUSTER_NAME
    ):
        code = ErrorCode.cluster_authorization_failed
        message = "DESCRIBE_CONFIGS on the cluster is not allowed"
    else:
        try:
            found = describe(
                broker.quotas.configs,
                ((c.entity_type, int(c.match_type), c.match) for c in body.components),
                bool(body.strict),
            )
        except QuotaError as exc:
            code, message = ErrorCode.invalid_request, str(exc)
        else:
            entries = tuple(
                s.EntryData(
                    entity=tuple(
                        s.EntityData(entity_type=t, entity_name=n) for t, n in entity.components()
                    ),
                    values=tuple(s.ValueData(key=k, value=v) for k, v in sorted(values.items())),
                )
                for entity, values in found
            )
    return s.DescribeClientQuotasResponse(
        throttle_time=ZERO, error_code=code, error_message=message, entries=entries
    )


async def handle_alter_client_quotas(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(49, header.api_version)
    allowed = broker.authorize(
        client, AclOperation.ALTER_CONFIGS, ResourceType.CLUSTER, CLUSTER_NAME
    )
    results: list[tuple[Any, ErrorCode, str | None]] = []
    ops: list[QuotaOp] = []
    changes: list[tuple[Entity, dict[str, float | None]]] = []
    for entry in body.entries:
        wire = tuple((e.entity_type, e.entity_name) for e in entry.entity)
        if not allowed:
            results.append(
                (
                    wire,
                    ErrorCode.cluster_authorization_failed,
                    "ALTER_CONFIGS on the cluster is not allowed",
                )
            )
            continue
        try:
            entity = Entity.of(wire)
            change: dict[str, float | None] = {}
            for op in entry.ops:
                if op.key in change:
                    raise QuotaError(f"quota key {op.key!r} appears more than once")
                change[op.key] = None if op.remove else check_value(op.key, float(op.value))
                if op.remove:
                    check_value(op.key, 1.0)  # an unknown key is refused either way
        except QuotaError as exc:
            log.info("alter client quotas from %s refused: %s", client, exc)
            broker.audit.admin(
                client,
                "AlterClientQuotas",
                "CLIENT_QUOTA",
                _name(wire),
                "INVALID_REQUEST",
                error=str(exc),
            )
            results.append((wire, ErrorCode.invalid_request, str(exc)))
            continue
        results.append((wire, ErrorCode.none, None))
        changes.append((entity, change))
        ops.extend((entity.key(), k, v) for k, v in change.items())
    if ops and not body.validate_only:
        version = await broker.quota_store.alter(ops)
        await broker.quota_sync.applied(version)
    for entity, change in changes:
        log.info(
            "client quotas of %s altered by %s: %s%s",
            entity,
            client,
            _changes(change),
            " (validate only)" if body.validate_only else "",
        )
        broker.audit.admin(
            client,
            "AlterClientQuotas",
            "CLIENT_QUOTA",
            str(entity),
            quotas=change,
            validate_only=bool(body.validate_only),
        )
    return s.AlterClientQuotasResponse(
        throttle_time=ZERO,
        entries=tuple(
            s.EntryData(
                error_code=code,
                error_message=message,
                entity=tuple(s.EntityData(entity_type=t, entity_name=n) for t, n in wire),
            )
            for wire, code, message in results
        ),
    )


def _name(wire: tuple[tuple[str, str | None], ...]) -> str:
    return ",".join(f"{t}={'<default>' if n is None else n}" for t, n in wire)


def _changes(change: dict[str, float | None]) -> str:
    return ", ".join(f"{k}={'removed' if v is None else v}" for k, v in change.items())
