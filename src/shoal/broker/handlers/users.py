"""DescribeUserScramCredentials (50) and AlterUserScramCredentials (51), with
Kafka's per-user errors, so Kafka's admin tools and clients manage SCRAM users.

Alter is all-or-nothing per user, as in Kafka: a user whose changes include a
bad one (unknown mechanism, iterations out of bounds, a duplicate, deleting a
credential that does not exist) gets that error and none of its changes.
With an authorizer, describing needs DESCRIBE and altering ALTER on the
cluster (Kafka's rule), else CLUSTER_AUTHORIZATION_FAILED.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client
from shoal.meta.security import SecurityStore
from shoal.protocol.build import Schema
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.security.acls import CLUSTER_NAME, AclOperation, ResourceType
from shoal.security.scram import (
    MECHANISM_IDS,
    MECHANISM_NAMES,
    CredentialError,
    ScramCredential,
    from_salted_password,
)

log = logging.getLogger("shoal.users")
ZERO = datetime.timedelta(0)


async def handle_describe_user_scram_credentials(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(50, header.api_version)
    if not broker.authorize(client, AclOperation.DESCRIBE, ResourceType.CLUSTER, CLUSTER_NAME):
        return s.DescribeUserScramCredentialsResponse(
            throttle_time=ZERO,
            error_code=ErrorCode.cluster_authorization_failed,
            error_message=f"{client.principal} may not DESCRIBE the cluster",
            results=(),
        )
    names = [u.name for u in body.users or ()]
    found = await SecurityStore(broker.meta).describe(names or None)
    results = []
    seen: set[str] = set()
    for name in names or sorted(found):
        code, message, infos = ErrorCode.none, None, found.get(name, [])
        if name in seen:
            continue
        if names.count(name) > 1:
            code, message, infos = ErrorCode.duplicate_resource, f"user {name!r} asked twice", []
        elif not infos:
            code, message = ErrorCode.resource_not_found, f"no SCRAM credentials for {name!r}"
        seen.add(name)
        results.append(
            s.DescribeUserScramCredentialsResult(
                user=name,
                error_code=code,
                error_message=message,
                credential_infos=tuple(
                    s.CredentialInfo(mechanism=MECHANISM_IDS[m], iterations=i) for m, i in infos
                ),
            )
        )
    return s.DescribeUserScramCredentialsResponse(
        throttle_time=ZERO, error_code=ErrorCode.none, error_message=None, results=tuple(results)
    )


async def handle_alter_user_scram_credentials(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    s = Schema(51, header.api_version)
    errors: dict[str, tuple[ErrorCode, str]] = {}
    upserts: list[tuple[str, ScramCredential]] = []
    deletes: list[tuple[str, str]] = []
    seen: set[tuple[str, int]] = set()
    order: list[str] = []

    def reject(user: str, code: ErrorCode, message: str) -> None:
        errors.setdefault(user, (code, message))

    changes = [(d, False) for d in body.deletions] + [(u, True) for u in body.upsertions]
    if not broker.authorize(client, AclOperation.ALTER, ResourceType.CLUSTER, CLUSTER_NAME):
        for change, _ in changes:
            reject(
                change.name,
                ErrorCode.cluster_authorization_failed,
                f"{client.principal} may not ALTER the cluster",
            )
    for change, upsert in changes:
        user = change.name
        if user not in order:
            order.append(user)
        mechanism = MECHANISM_NAMES.get(int(change.mechanism))
        if not user:
            reject(user, ErrorCode.unacceptable_credential, "empty user name")
        elif mechanism is None:
            reject(
                user,
                ErrorCode.unsupported_sasl_mechanism,
                f"unknown SCRAM mechanism {change.mechanism}",
            )
        elif (user, int(change.mechanism)) in seen:
            reject(
                user,
                ErrorCode.duplicate_resource,
                f"{mechanism} of {user!r} changed twice in one request",
            )
        elif upsert:
            try:
                cred = from_salted_password(
                    mechanism, bytes(change.salt), bytes(change.salted_password), change.iterations
                )
            except CredentialError as exc:
                reject(user, ErrorCode.unacceptable_credential, str(exc))
            else:
                upserts.append((user, cred))
        else:
            deletes.append((user, mechanism))
        seen.add((user, int(change.mechanism)))
    store = SecurityStore(broker.meta)
    if deletes:
        # A deletion of nothing fails its user, before anything is written.
        existing = await store.describe(sorted({u for u, _ in deletes}))
        for user, mechanism in deletes:
            if mechanism not in {m for m, _ in existing.get(user, [])}:
                reject(
                    user, ErrorCode.resource_not_found, f"{user!r} has no {mechanism} credential"
                )
    upserts = [(u, c) for u, c in upserts if u not in errors]
    deletes = [(u, m) for u, m in deletes if u not in errors]
    if upserts or deletes:  # else no version bump: no broker reloads every credential
        await store.alter(upserts, deletes)
        await broker.credential_sync.refresh()  # this broker's logins see it at once
    for user in order:
        if user in errors:
            log.info("AlterUserScramCredentials from %s: %s: %s", client, user, errors[user][1])
        else:
            log.info("SCRAM credentials of %r changed by %s", user, client.principal)
        code = errors[user][0] if user in errors else ErrorCode.none
        mechanisms = sorted(
            {
                MECHANISM_NAMES.get(int(c.mechanism), str(c.mechanism))
                for c, _ in changes
                if c.name == user
            }
        )
        broker.audit.admin(
            client, "AlterUserScramCredentials", "USER", user, code.name, mechanisms=mechanisms
        )
    return s.AlterUserScramCredentialsResponse(
        throttle_time=ZERO,
        results=tuple(
            s.AlterUserScramCredentialsResult(
                user=user,
                error_code=errors[user][0] if user in errors else ErrorCode.none,
                error_message=errors[user][1] if user in errors else None,
            )
            for user in order
        ),
    )
