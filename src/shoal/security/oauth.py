"""OAUTHBEARER tokens: JWTs checked against a JWKS file.

Checked: the signature (an asymmetric algorithm, with the JWKS key named by
the token's `kid`, or the only key), `exp` (required), `nbf` and `iat` when
present, `aud` against `sasl.oauthbearer.expected.audience` and `iss` against
`sasl.oauthbearer.expected.issuer` when those are set, all with
`sasl.oauthbearer.clock.skew.seconds` of tolerance. The principal is
`User:` + the claim `sasl.oauthbearer.sub.claim.name` (default `sub`).

The JWKS comes from `sasl.oauthbearer.jwks.endpoint.url`, a file:// URL (or a
plain path); it is re-read when the file changes, so keys rotate without a
restart.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import jwt

from shoal.config import BrokerConfig, ConfigError

log = logging.getLogger("shoal.oauth")

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
ALGORITHMS.append("EdDSA")


class TokenError(Exception):
    """A token that does not authenticate; the message says why (safe to log)."""


@dataclass(frozen=True, slots=True)
class Token:
    principal: str  # without the User: prefix
    expires_ms: int


class JwtValidator:
    def __init__(
        self, jwks_path: str, audience: list[str], issuer: str, claim: str, skew_s: int
    ) -> None:
        self.jwks_path = jwks_path
        self.audience = audience
        self.issuer = issuer
        self.claim = claim
        self.skew_s = skew_s
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str | None, Any] = {}

    @classmethod
    def from_config(cls, config: BrokerConfig | Any) -> JwtValidator:
        url = str(config["sasl.oauthbearer.jwks.endpoint.url"])
        if not url:
            raise ConfigError(
                "sasl.oauthbearer.jwks.endpoint.url: OAUTHBEARER is enabled but no JWKS is set"
            )
        parsed = urlparse(url)
        if parsed.scheme not in ("file", ""):
            raise ConfigError(
                f"sasl.oauthbearer.jwks.endpoint.url: {url!r}: only file:// URLs are supported "
                "(fetch the JWKS to a file)"
            )
        path = unquote(parsed.path) if parsed.scheme == "file" else url
        audience = [a.strip() for a in str(config["sasl.oauthbearer.expected.audience"]).split(",")]
        return cls(
            path,
            [a for a in audience if a],
            str(config["sasl.oauthbearer.expected.issuer"]),
            str(config["sasl.oauthbearer.sub.claim.name"]) or "sub",
            int(config["sasl.oauthbearer.clock.skew.seconds"]),
        )

    def load_keys(self) -> dict[str | None, Any]:
        """The JWKS keys by kid, re-read when the file changed."""
        try:
            st = os.stat(self.jwks_path)
        except OSError as exc:
            raise ConfigError(
                f"sasl.oauthbearer.jwks.endpoint.url: cannot read {self.jwks_path!r}: "
                f"{exc.strerror}"
            ) from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return self._keys
        try:
            with open(self.jwks_path, encoding="utf-8") as fh:
                doc = json.load(fh)
            keyset = jwt.PyJWKSet.from_dict(doc)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise ConfigError(
                f"sasl.oauthbearer.jwks.endpoint.url: {self.jwks_path!r} is not a usable JWKS: "
                f"{exc}"
            ) from None
        self._keys = {k.key_id: k for k in keyset.keys}
        self._stamp = stamp
        return self._keys

    def validate(self, token: str) -> Token:
        try:
            keys = self.load_keys()
        except ConfigError as exc:
            raise TokenError(str(exc)) from None
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"not a JWT: {exc}") from None
        kid = header.get("kid")
        key = keys.get(kid) if kid is not None else None
        if key is None and kid is None and len(keys) == 1:
            key = next(iter(keys.values()))
        if key is None:
            raise TokenError(f"no JWKS key with kid {kid!r}")
        if header.get("alg") not in ALGORITHMS:
            raise TokenError(f"algorithm {header.get('alg')!r} not accepted")
        options: dict[str, Any] = {"require": ["exp"], "verify_aud": bool(self.audience)}
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[header["alg"]],
                audience=self.audience or None,
                issuer=self.issuer or None,
                leeway=self.skew_s,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {exc}") from None
        name = claims.get(self.claim)
        if not isinstance(name, str) or not name:
            raise TokenError(f"token has no {self.claim!r} claim")
        return Token(name, int(float(claims["exp"]) * 1000))


def now_ms() -> int:
    return int(time.time() * 1000)
