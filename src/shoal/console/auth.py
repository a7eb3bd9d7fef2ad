"""Who is using the console: a SCRAM user of the cluster, logged in with the
password `shoal users add` stored, acting as principal `User:NAME` under the
same ACLs as the Kafka APIs.

Sessions are signed cookies (HMAC-SHA256 with a key made when the console
starts: a broker restart logs everyone out, and nothing is stored server-side).
Every form that changes something carries a CSRF token derived from the
session, checked on POST; the cookie is HttpOnly and SameSite=Strict besides.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from shoal.broker.broker import Broker
from shoal.meta.security import SecurityStore

COOKIE = "shoal_console"
FAILED_LOGIN_DELAY_S = 1.0


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """A logged-in console user, shaped like a Kafka client for the
    authorizer and the audit trail (security.audit.Who)."""

    user: str
    peer: str
    nonce: str
    client_id: str | None = "shoal-console"
    listener: str = "console"

    @property
    def principal(self) -> str:
        return f"User:{self.user}"

    def __str__(self) -> str:
        return f"{self.principal} from {self.peer} (console)"


class Sessions:
    def __init__(self, ttl_s: float, key: bytes | None = None) -> None:
        self.ttl_s = ttl_s
        self._key = key or secrets.token_bytes(32)

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._key, payload, hashlib.sha256).hexdigest()

    def issue(self, user: str) -> str:
        body = json.dumps(
            {"u": user, "exp": int(time.time() + self.ttl_s), "n": secrets.token_hex(8)},
            separators=(",", ":"),
        ).encode()
        payload = base64.urlsafe_b64encode(body).decode().rstrip("=")
        return f"{payload}.{self._sign(payload.encode())}"

    def read(self, cookie: str | None, peer: str) -> ConsoleUser | None:
        """The session's user, or None for a missing, forged or expired cookie."""
        if not cookie or "." not in cookie:
            return None
        payload, _, sig = cookie.rpartition(".")
        if not hmac.compare_digest(sig, self._sign(payload.encode())):
            return None
        try:
            doc = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            user, exp, nonce = str(doc["u"]), int(doc["exp"]), str(doc["n"])
        except (ValueError, KeyError, TypeError):
            return None
        if exp < time.time():
            return None
        return ConsoleUser(user, peer, nonce)

    def csrf(self, who: ConsoleUser) -> str:
        """The token forms of this session carry."""
        return self._sign(f"csrf:{who.user}:{who.nonce}".encode())

    def check_csrf(self, who: ConsoleUser, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token), self.csrf(who))


async def check_password(broker: Broker, user: str, password: str) -> bool:
    """Is this the password of this SCRAM user? Looked up as a SASL login
    would (the broker's credential cache, then the store); the PBKDF2 runs
    in a thread. A wrong user or password costs the caller a fixed delay."""
    ok = False
    if user and password:
        creds = broker.credentials.get(user)
        if creds is None:
            creds = await SecurityStore(broker.meta).credentials(user)
            broker.credentials.put(user, creds)
        cred = creds.get("SCRAM-SHA-256") or next(iter(creds.values()), None)
        if cred is not None:
            ok = await asyncio.to_thread(cred.matches_password, password)
    if not ok:
        await asyncio.sleep(FAILED_LOGIN_DELAY_S)
    return ok
