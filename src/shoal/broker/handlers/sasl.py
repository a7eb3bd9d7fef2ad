"""SaslHandshake (17) and SaslAuthenticate (36): drive the connection's
SaslSession (shoal.security.sasl) with credentials from the metadata store.

Every authentication is one log line: principal or user, mechanism, client
address, listener, outcome (and, on failure, the reason, which the client is
not told).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from shoal.broker.broker import Broker
from shoal.broker.handlers import Client, Deferred
from shoal.meta.security import SecurityStore
from shoal.protocol.errors import ErrorCode
from shoal.protocol.headers import RequestHeader
from shoal.protocol.sasl_response import SaslAuthenticateAnswer, SaslHandshakeAnswer
from shoal.security.sasl import AuthenticationFailed, SaslSession
from shoal.security.scram import ScramCredential

log = logging.getLogger("shoal.sasl")
_NONE = int(ErrorCode.none.value)
_ILLEGAL_STATE = int(ErrorCode.illegal_sasl_state.value)
_UNSUPPORTED = int(ErrorCode.unsupported_sasl_mechanism.value)
_FAILED = int(ErrorCode.sasl_authentication_failed.value)


async def handle_sasl_handshake(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    version = header.api_version
    session: SaslSession | None = client.session
    if session is None:
        log.info("SaslHandshake from %s on %s: not a SASL listener", client, client.listener)
        return SaslHandshakeAnswer(version, _ILLEGAL_STATE, ())
    mechanisms = tuple(session.mechanisms)
    if session.mechanism is not None:
        session.closing = True
        log.info("SaslHandshake from %s: handshake in the middle of an exchange", client)
        return SaslHandshakeAnswer(version, _ILLEGAL_STATE, mechanisms)
    if not session.handshake(body.mechanism, header.api_version):
        log.info(
            "authentication failed: client %s on %s asked for mechanism %r; enabled: %s",
            client,
            client.listener,
            body.mechanism,
            ", ".join(mechanisms),
        )
        broker.audit.authentication(
            client, str(body.mechanism), False, "UNSUPPORTED_SASL_MECHANISM"
        )
        return SaslHandshakeAnswer(version, _UNSUPPORTED, mechanisms)
    return SaslHandshakeAnswer(version, _NONE, mechanisms)


async def handle_sasl_authenticate(
    broker: Broker, client: Client, header: RequestHeader, body: Any
) -> Any:
    version = header.api_version
    session: SaslSession | None = client.session
    mech = None if session is None else session.mechanism
    if session is None or mech is None:
        if session is not None:
            session.closing = True
        log.info("SaslAuthenticate from %s on %s without a handshake", client, client.listener)
        return SaslAuthenticateAnswer(
            version, _ILLEGAL_STATE, "SaslAuthenticate before SaslHandshake", b""
        )
    token = bytes(body.auth_bytes)
    try:
        user = mech.user_of(token)
        credentials: dict[str, ScramCredential] = {}
        if user:
            cached = broker.credentials.get(user)
            if cached is None:  # not in memory (yet): ask the store
                cached = await SecurityStore(broker.meta).credentials(user)
                broker.credentials.put(user, cached)
            credentials = cached
        if mech.costly:
            reply = await asyncio.to_thread(mech.step, token, credentials)
        else:
            reply = mech.step(token, credentials)
        lifetime_ms = session.finish(mech) if mech.complete else 0
    except AuthenticationFailed as exc:
        session.closing = True
        session.mechanism = None
        log.info(
            "authentication failed: %s with %s from %s on %s: %s",
            session.principal or "client",
            mech.name,
            client.peer,
            client.listener,
            exc.reason,
        )
        who = replace(client, principal=f"User:{mech.claimed}") if mech.claimed else client
        broker.audit.authentication(who, mech.name, False, exc.reason)
        return Deferred(_fail_later(version, str(exc), session.failure_delay_ms))
    if mech.complete:
        log.info(
            "authenticated %s with %s from %s on %s%s",
            session.principal,
            mech.name,
            client.peer,
            client.listener,
            " (re-authentication)" if session.authentications > 1 else "",
        )
        assert session.principal is not None
        broker.audit.authentication(replace(client, principal=session.principal), mech.name, True)
    return SaslAuthenticateAnswer(version, _NONE, None, reply, lifetime_ms)


async def _fail_later(version: int, message: str, delay_ms: int) -> Any:
    """Kafka's connection.failed.authentication.delay.ms: a client guessing
    passwords gets its answer late (the connection closes after it)."""
    await asyncio.sleep(delay_ms / 1000)
    return SaslAuthenticateAnswer(version, _FAILED, message, b"")
