"""CreateAcls, DescribeAcls and DeleteAcls: Kafka's ACL admin APIs.

Changes go to the metadata store in one transaction and apply on this broker
before the answer; other brokers pick them up from the version counter. As in
Kafka, these APIs answer SECURITY_DISABLED when no authorizer is configured,
and need ALTER (changes) or DESCRIBE (listing) on the cluster.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.meta.acls import AclRow
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import (
    CLUSTER_NAME,
    AclBinding,
    AclError,
    AclFilter,
    AclOperation,
    ResourceType,
)

log = logging.getLogger("shoal.acls")
ZERO = datetime.timedelta(0)
DISABLED = "no authorizer is configured (set authorizer.class.name)"


def _gate(broker: Broker, client: Client, op: AclOperation) -> tuple[ErrorCode, str | None]:
    if not broker.authorizer.enabled:
        return ErrorCode.security_disabled, DISABLED
    if not broker.authorize(client, op, ResourceType.CLUSTER, CLUSTER_NAME):
        return ErrorCode.cluster_authorization_failed, f"{op.name} on the cluster is not allowed"
    return ErrorCode.none, None


async def handle_create_acls(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(30, header.api_version)
    gate, gate_message = _gate(broker, client, AclOperation.ALTER)
    results: list[tuple[ErrorCode, str | None]] = []
    valid: list[AclBinding] = []
    for c in body.creations:
        if gate != ErrorCode.none:
            results.append((gate, gate_message))
            continue
        try:
            acl = AclBinding.of(
                c.resource_type,
                c.resource_name,
                c.resource_pattern_type,
                c.principal,
                c.host,
                c.operation,
                c.permission_type,
            ).validate()
        except AclError as exc:
            log.info("create ACL from %s refused: %s", client, exc)
            broker.audit.admin(
                client, "CreateAcls", "ACL", c.resource_name, "INVALID_REQUEST", error=str(exc)
            )
            results.append((ErrorCode.invalid_request, str(exc)))
            continue
        valid.append(acl)
        results.append((ErrorCode.none, None))
    if valid:
        version = await broker.acl_store.create([AclRow(*acl) for acl in valid])
        await broker.acl_sync.applied(version)
        for acl in valid:
            log.info("ACL created by %s: %s", client, describe(acl))
            broker.audit.admin(
                client, "CreateAcls", acl.resource_type.name, acl.resource_name, acl=describe(acl)
            )
    return s.CreateAclsResponse(
        throttle_time=ZERO,
        results=tuple(
            s.AclCreationResult(error_code=code, error_message=message) for code, message in results
        ),
    )


def _filter(f: Any) -> AclFilter:
    return AclFilter.of(
        f.resource_type_filter,
        f.resource_name_filter,
        f.pattern_type_filter,
        f.principal_filter,
        f.host_filter,
        f.operation,
        f.permission_type,
    ).validate()


async def handle_describe_acls(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(29, header.api_version)
    code, message = _gate(broker, client, AclOperation.DESCRIBE)
    found: dict[tuple[int, str, int], list[AclBinding]] = {}
    if code == ErrorCode.none:
        try:
            flt = _filter(body)
        except AclError as exc:
            code, message = ErrorCode.invalid_request, str(exc)
        else:
            for acl in sorted(broker.authorizer.acls):
                if flt.matches(acl):
                    key = (acl.resource_type, acl.resource_name, acl.pattern_type)
                    found.setdefault(key, []).append(acl)
    return s.DescribeAclsResponse(
        throttle_time=ZERO,
        error_code=code,
        error_message=message,
        resources=tuple(
            s.DescribeAclsResource(
                resource_type=rtype,
                resource_name=name,
                pattern_type=ptype,
                acls=tuple(
                    s.AclDescription(
                        principal=a.principal,
                        host=a.host,
                        operation=a.operation,
                        permission_type=a.permission,
                    )
                    for a in acls
                ),
            )
            for (rtype, name, ptype), acls in found.items()
        ),
    )


async def handle_delete_acls(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(31, header.api_version)
    gate, gate_message = _gate(broker, client, AclOperation.ALTER)
    errors: list[tuple[ErrorCode, str | None]] = []
    filters: list[AclFilter] = []
    for f in body.filters:
        if gate != ErrorCode.none:
            errors.append((gate, gate_message))
            continue
        try:
            filters.append(_filter(f))
            errors.append((ErrorCode.none, None))
        except AclError as exc:
            log.info("delete ACLs from %s refused: %s", client, exc)
            errors.append((ErrorCode.invalid_request, str(exc)))
    matched: list[list[AclRow]] = []
    if filters:
        version, matched = await broker.acl_store.delete([_predicate(f) for f in filters])
        await broker.acl_sync.applied(version)
        for row in {row for rows in matched for row in rows}:
            acl = AclBinding.of(*row)
            log.info("ACL deleted by %s: %s", client, describe(acl))
            broker.audit.admin(
                client, "DeleteAcls", acl.resource_type.name, acl.resource_name, acl=describe(acl)
            )
    results = []
    it = iter(matched)
    for code, message in errors:
        rows = next(it) if code == ErrorCode.none else []
        results.append(
            s.DeleteAclsFilterResult(
                error_code=code,
                error_message=message,
                matching_acls=tuple(
                    s.DeleteAclsMatchingAcl(
                        error_code=ErrorCode.none,
                        error_message=None,
                        resource_type=r.resource_type,
                        resource_name=r.resource_name,
                        pattern_type=r.pattern_type,
                        principal=r.principal,
                        host=r.host,
                        operation=r.operation,
                        permission_type=r.permission,
                    )
                    for r in rows
                ),
            )
        )
    return s.DeleteAclsResponse(throttle_time=ZERO, filter_results=tuple(results))


def _predicate(flt: AclFilter) -> Callable[[AclRow], bool]:
    return lambda row: flt.matches(AclBinding.of(*row))


def describe(acl: AclBinding) -> str:
    """One ACL as kafka-acls prints it, for logs."""
    return (
        f"{acl.permission.name} {acl.principal} from {acl.host} {acl.operation.name} "
        f"{acl.resource_type.name}:{acl.pattern_type.name}:{acl.resource_name}"
    )
