"""What each listener does about security, for the server: its TLS context
(rotating, shared by the TLS listeners) and, per new connection, the listener
name, the certificate principal (SSL) or the SASL session (SASL_*).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import replace
from typing import TYPE_CHECKING

from shoal.broker.handlers import Client
from shoal.config import BrokerConfig
from shoal.security.audit import AuditLog
from shoal.security.listeners import Listener
from shoal.security.oauth import JwtValidator
from shoal.security.principal import NoMatchingRule, PrincipalMapper, subject_dn
from shoal.security.sasl import SaslSession
from shoal.security.tls import TlsContexts, TlsSettings

if TYPE_CHECKING:
    from shoal.broker.connection import Connection

log = logging.getLogger("shoal.security")


class Security:
    """Shared by every listener of one broker."""

    def __init__(
        self, config: BrokerConfig, listeners: list[Listener], audit: AuditLog | None = None
    ) -> None:
        self.listeners = listeners
        self.audit = audit
        self.mapper = PrincipalMapper.parse(str(config["ssl.principal.mapping.rules"]))
        self.tls = (
            TlsContexts(TlsSettings.from_config(config))
            if any(lst.tls for lst in listeners)
            else None
        )
        self.mechanisms = [
            m.strip() for m in str(config["sasl.enabled.mechanisms"]).split(",") if m.strip()
        ]
        needs_jwt = "OAUTHBEARER" in self.mechanisms and any(lst.sasl for lst in listeners)
        self.validator = JwtValidator.from_config(config) if needs_jwt else None
        self.reauth_ms = int(config["connections.max.reauth.ms"])
        self.failure_delay_ms = int(config["connection.failed.authentication.delay.ms"])

    def ssl_context(self, listener: Listener) -> ssl.SSLContext | None:
        if not listener.tls:
            return None
        assert self.tls is not None
        return self.tls.server_context

    def tls_failed(self, listener: Listener, peer: str, reason: str) -> None:
        """A TLS handshake refused (an expired or untrusted certificate, plain
        text on a TLS port): a failed authentication, logged and audited as
        Kafka's authenticator logs "SSL handshake failed"."""
        log.info(
            "authentication failed: TLS handshake from %s on %s: %s", peer, listener.name, reason
        )
        if self.audit is not None:
            who = Client(peer, None, listener=listener.name)  # not authenticated: anonymous
            self.audit.authentication(who, "SSL", False, reason)

    def on_connection(self, listener: Listener, conn: Connection) -> None:
        """Label the connection with its listener; give it its principal (a
        client certificate) or its SASL session."""
        principal = "User:ANONYMOUS"
        if listener.tls:
            ssl_object = conn.stream.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if der and not listener.sasl:
                dn = subject_dn(der)
                try:
                    principal = f"User:{self.mapper.name(dn)}"
                except NoMatchingRule as exc:
                    log.info(
                        "authentication failed: client certificate from %s on %s: %s",
                        conn.peer,
                        listener.name,
                        exc,
                    )
                    if self.audit is not None:
                        who = replace(conn.client, principal=dn, listener=listener.name)
                        self.audit.authentication(who, "SSL", False, str(exc))
                    conn.abort()
                    return
                log.info(
                    "authenticated %s by certificate %r from %s on %s",
                    principal,
                    dn,
                    conn.peer,
                    listener.name,
                )
                if self.audit is not None:
                    who = replace(conn.client, principal=principal, listener=listener.name)
                    self.audit.authentication(who, "SSL", True)
        session = None
        if listener.sasl:
            session = SaslSession(
                self.mechanisms,
                reauth_ms=self.reauth_ms,
                failure_delay_ms=self.failure_delay_ms,
                validator=self.validator,
            )
            conn.requires_sasl = True
        conn.client = replace(
            conn.client, principal=principal, listener=listener.name, session=session
        )
