"""SASL on a connection: the mechanisms as sans-IO state machines, and the
session that tracks a connection's authentication (Kafka's rules).

A mechanism's `step` takes the client's token and the stored credentials of
the user it names (looked up by the caller, which does the I/O: `user_of`
says whose) and returns the server's token, or raises AuthenticationFailed.

Session rules, as Kafka's: until authenticated, a connection may send only
ApiVersions, SaslHandshake and SaslAuthenticate; a failed authentication is
answered after `connection.failed.authentication.delay.ms`, then the
connection is closed; past `connections.max.reauth.ms` (or an OAUTHBEARER
token's expiry) a connection that has not re-authenticated is closed at its
next request; re-authentication must keep the principal.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping

from shoal.security.oauth import JwtValidator, TokenError, now_ms
from shoal.security.scram import ScramCredential, ScramError, ScramServer, client_first_user

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
PRE_AUTH_APIS = frozenset({API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE})
FAILED = "Authentication failed: invalid credentials with SASL mechanism {}"


class AuthenticationFailed(Exception):
    """The client did not authenticate. `str()` is for the client (it never
    says whether the user exists); `reason` is for the log."""

    def __init__(self, mechanism: str, reason: str) -> None:
        super().__init__(FAILED.format(mechanism))
        self.reason = reason


class Mechanism(ABC):
    name: str
    #: step() is CPU-heavy (PBKDF2): run it off the event loop
    costly = False

    def __init__(self) -> None:
        self.principal: str | None = None  # "User:name" once complete
        self.expires_ms: int | None = None  # credential expiry (tokens)
        self.claimed: str | None = None  # the user the client says it is, once read

    @property
    def complete(self) -> bool:
        return self.principal is not None

    def user_of(self, token: bytes) -> str | None:
        """The user whose stored credentials the next step needs, if any."""
        return None

    @abstractmethod
    def step(self, token: bytes, credentials: Mapping[str, ScramCredential]) -> bytes: ...

    def fail(self, reason: str) -> AuthenticationFailed:
        return AuthenticationFailed(self.name, reason)


class Plain(Mechanism):
    """RFC 4616: authzid NUL authcid NUL password. The authzid must be empty
    or the user itself (Kafka does not allow acting as someone else)."""

    name = "PLAIN"
    costly = True

    def _parse(self, token: bytes) -> tuple[str, str]:
        parts = token.split(b"\x00")
        if len(parts) != 3:
            raise self.fail(f"malformed PLAIN message ({len(parts)} fields, not 3)")
        try:
            authzid, user, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            raise self.fail("PLAIN message is not UTF-8") from None
        if not user or not password:
            raise self.fail("PLAIN message without a user or password")
        if authzid and authzid != user:
            raise self.fail(f"user {user!r} asked to act as {authzid!r}")
        return user, password

    def user_of(self, token: bytes) -> str | None:
        try:
            self.claimed = self._parse(token)[0]
        except AuthenticationFailed:
            return None  # step() says why
        return self.claimed

    def step(self, token: bytes, credentials: Mapping[str, ScramCredential]) -> bytes:
        if self.complete:
            raise self.fail("PLAIN takes one message")
        user, password = self._parse(token)
        if not credentials:
            raise self.fail(f"unknown user {user!r}")
        cred = credentials.get("SCRAM-SHA-256") or next(iter(credentials.values()))
        if not cred.matches_password(password):
            raise self.fail(f"wrong password for user {user!r}")
        self.principal = f"User:{user}"
        return b""


class Scram(Mechanism):
    """RFC 5802 (security/scram.py): client-first, server-first, client-final,
    server-final. Channel binding is not offered (as in Kafka)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._server: ScramServer | None = None
        self._user: str | None = None

    def user_of(self, token: bytes) -> str | None:
        if self._server is not None:
            return None
        try:
            return client_first_user(token.decode("utf-8"))[2]
        except (UnicodeDecodeError, ScramError):
            return None

    def step(self, token: bytes, credentials: Mapping[str, ScramCredential]) -> bytes:
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("SCRAM message is not UTF-8") from None
        try:
            if self._server is None:
                gs2_header, bare, user = client_first_user(text)
                self.claimed = user
                cred = credentials.get(self.name)
                if cred is None:
                    raise self.fail(f"unknown user {user!r} for {self.name}")
                self._server = ScramServer(cred, gs2_header, bare)
                self._user = user
                return self._server.server_first.encode()
            if self._user is None:
                raise self.fail("SCRAM exchange already over")
            final = self._server.final(text).encode()
            self.principal, self._user = f"User:{self._user}", None
            return final
        except ScramError as exc:
            raise self.fail(f"SCRAM for {self._user or 'unknown user'}: {exc}") from None


class OAuthBearer(Mechanism):
    """RFC 7628 initial response: `n,a=authzid,` then \\x01-separated
    key=value pairs with `auth=Bearer <jwt>`, ending in \\x01\\x01."""

    name = "OAUTHBEARER"

    def __init__(self, validator: JwtValidator) -> None:
        super().__init__()
        self.validator = validator

    def step(self, token: bytes, credentials: Mapping[str, ScramCredential]) -> bytes:
        if self.complete:
            raise self.fail("OAUTHBEARER takes one message")
        try:
            text = token.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("OAUTHBEARER message is not UTF-8") from None
        gs2, sep, rest = text.partition("\x01")
        if not sep or not gs2.startswith(("n,", "y,")):
            raise self.fail("malformed OAUTHBEARER message (no GS2 header)")
        fields = dict(kv.partition("=")[::2] for kv in rest.split("\x01") if kv)
        auth = fields.get("auth", "")
        scheme, _, jwt_text = auth.partition(" ")
        if scheme.lower() != "bearer" or not jwt_text.strip():
            raise self.fail("OAUTHBEARER message without auth=Bearer <token>")
        try:
            tok = self.validator.validate(jwt_text.strip())
        except TokenError as exc:
            raise self.fail(str(exc)) from None
        authzid = gs2.split(",")[1]
        if authzid.startswith("a=") and authzid[2:] not in ("", tok.principal):
            raise self.fail(f"token of {tok.principal!r} asked to act as {authzid[2:]!r}")
        self.principal = f"User:{tok.principal}"
        self.expires_ms = tok.expires_ms
        return b""


class SaslSession:
    """Authentication state of one connection on a SASL listener."""

    def __init__(
        self,
        mechanisms: list[str],
        *,
        reauth_ms: int = 0,
        failure_delay_ms: int = 100,
        validator: JwtValidator | None = None,
    ) -> None:
        self.mechanisms = mechanisms
        self.reauth_ms = reauth_ms
        self.failure_delay_ms = failure_delay_ms
        self.validator = validator
        self.principal: str | None = None
        self.mechanism: Mechanism | None = None
        self.handshake_version = -1
        self.expires_at: float | None = None  # time.monotonic() deadline
        self.closing = False  # close once the current response is sent
        self.authentications = 0

    @property
    def authenticated(self) -> bool:
        return self.principal is not None

    def allows(self, api_key: int, now: float | None = None) -> str | None:
        """None, or why this request must close the connection."""
        if api_key in PRE_AUTH_APIS:
            return None
        if not self.authenticated:
            return "request before SASL authentication"
        if self.expires_at is not None and (now or time.monotonic()) > self.expires_at:
            return "SASL session expired without re-authentication (connections.max.reauth.ms)"
        return None

    def handshake(self, mechanism: str, version: int) -> bool:
        """Start an exchange; False if the mechanism is not enabled."""
        if mechanism not in self.mechanisms:
            self.closing = True
            return False
        self.handshake_version = version
        if mechanism == "PLAIN":
            self.mechanism = Plain()
        elif mechanism.startswith("SCRAM-"):
            self.mechanism = Scram(mechanism)
        else:
            assert self.validator is not None
            self.mechanism = OAuthBearer(self.validator)
        return True

    def finish(self, mech: Mechanism) -> int:
        """Record a completed exchange; returns the session lifetime in ms
        (0: none). Raises AuthenticationFailed if a re-authentication
        changed the principal."""
        assert mech.principal is not None
        if self.principal is not None and mech.principal != self.principal:
            raise mech.fail(
                f"re-authentication as {mech.principal} on a connection of {self.principal}"
            )
        self.principal = mech.principal
        self.mechanism = None
        self.authentications += 1
        lifetime = self.reauth_ms
        if mech.expires_ms is not None:
            left = max(mech.expires_ms - now_ms(), 1)
            lifetime = min(lifetime, left) if lifetime else left
        self.expires_at = time.monotonic() + lifetime / 1000 if lifetime else None
        return lifetime
