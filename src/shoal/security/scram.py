"""SCRAM credentials (RFC 5802), as Kafka keeps them: salt, iteration count,
StoredKey and ServerKey per user and mechanism; never the password.

PLAIN is checked against the same credentials: the password is salted and
hashed as SCRAM would and compared with StoredKey, so one `shoal users add`
serves PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 alike.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

#: Kafka's wire ids for AlterUserScramCredentials / DescribeUserScramCredentials
MECHANISM_IDS = {"SCRAM-SHA-256": 1, "SCRAM-SHA-512": 2}
MECHANISM_NAMES = {v: k for k, v in MECHANISM_IDS.items()}
_HASH = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
MIN_ITERATIONS = 4096  # Kafka's bounds
MAX_ITERATIONS = 16384
DEFAULT_ITERATIONS = 8192


class CredentialError(ValueError):
    """A credential that cannot be stored (bad mechanism, iterations, salt)."""


@dataclass(frozen=True, slots=True)
class ScramCredential:
    mechanism: str
    salt: bytes
    stored_key: bytes
    server_key: bytes
    iterations: int

    def matches_password(self, password: str) -> bool:
        """Would this password produce this credential? (PLAIN.) Costs one
        PBKDF2 of `iterations` rounds: callers keep it off the event loop."""
        salted = salted_password(self.mechanism, password, self.salt, self.iterations)
        _, stored, _ = _keys(self.mechanism, salted)
        return hmac.compare_digest(stored, self.stored_key)


def check_iterations(mechanism: str, iterations: int) -> None:
    if mechanism not in _HASH:
        raise CredentialError(f"unknown SCRAM mechanism {mechanism!r}")
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise CredentialError(
            f"iterations {iterations} outside {MIN_ITERATIONS}..{MAX_ITERATIONS} for {mechanism}"
        )


def salted_password(mechanism: str, password: str, salt: bytes, iterations: int) -> bytes:
    from scramp.utils import saslprep

    return hashlib.pbkdf2_hmac(
        _HASH[mechanism], saslprep(password).encode("utf-8"), salt, iterations
    )


def _keys(mechanism: str, salted: bytes) -> tuple[bytes, bytes, bytes]:
    name = _HASH[mechanism]
    client_key = hmac.new(salted, b"Client Key", name).digest()
    stored_key = hashlib.new(name, client_key).digest()
    server_key = hmac.new(salted, b"Server Key", name).digest()
    return client_key, stored_key, server_key


def from_salted_password(
    mechanism: str, salt: bytes, salted: bytes, iterations: int
) -> ScramCredential:
    """What AlterUserScramCredentials sends: the client salted the password."""
    check_iterations(mechanism, iterations)
    if not salt:
        raise CredentialError("empty salt")
    if len(salted) != hashlib.new(_HASH[mechanism]).digest_size:
        raise CredentialError(f"salted password of {len(salted)} bytes for {mechanism}")
    _, stored, server = _keys(mechanism, salted)
    return ScramCredential(mechanism, salt, stored, server, iterations)


def make_credential(
    mechanism: str, password: str, iterations: int = DEFAULT_ITERATIONS
) -> ScramCredential:
    check_iterations(mechanism, iterations)
    if not password:
        raise CredentialError("empty password")
    salt = secrets.token_bytes(32)
    return from_salted_password(
        mechanism, salt, salted_password(mechanism, password, salt, iterations), iterations
    )
