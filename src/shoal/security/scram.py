"""SCRAM credentials (RFC 5802), as Kafka keeps them: salt, iteration count,
StoredKey and ServerKey per user and mechanism; never the password.

PLAIN is checked against the same credentials: the password is salted and
hashed as SCRAM would and compared with StoredKey, so one `shoal users add`
serves PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 alike.
"""

from __future__ import annotations

import base64
import binascii
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


class ScramError(ValueError):
    """A SCRAM exchange that fails: a malformed message or a wrong proof (for
    the log; the client is told only that authentication failed)."""


def client_first_user(client_first: str) -> tuple[str, str, str]:
    """(gs2 header, client-first-message-bare, user) of `n,,n=user,r=nonce`;
    the user unescaped (=2C is a comma, =3D an equals sign)."""
    flag, sep, rest = client_first.partition(",")
    authzid, sep2, bare = rest.partition(",")
    if not sep or not sep2:
        raise ScramError("client-first message without a GS2 header")
    if flag.startswith("p="):
        raise ScramError("client asks for channel binding, which is not offered")
    if flag not in ("n", "y"):
        raise ScramError(f"GS2 flag {flag!r} is not n, y or p=")
    if not bare.startswith("n="):
        raise ScramError("client-first message without n=user")
    name = bare[2 : bare.find(",") if "," in bare else len(bare)]
    user = name.replace("=2C", ",").replace("=3D", "=")
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise ScramError("user name with an = that is not =2C or =3D")
    if not user:
        raise ScramError("empty user name")
    if authzid and authzid != f"a={name}":
        raise ScramError(f"user {user!r} asked to act as {authzid[2:]!r}")
    return f"{flag},{authzid},", bare, user


class ScramServer:
    """The server's side of one RFC 5802 exchange (sans-IO), with Python's
    hashlib and hmac only: a login in a reconnect storm is two HMACs and a
    hash here (scramp, used before, spent ~0.1 ms per login in its message
    classes). No PBKDF2: the credential holds StoredKey and ServerKey.
    Channel binding is not offered (as in Kafka); extensions are ignored."""

    def __init__(
        self, credential: ScramCredential, gs2_header: str, client_first_bare: str
    ) -> None:
        self.credential = credential
        self.gs2_header = gs2_header
        self.client_first_bare = client_first_bare
        fields = client_first_bare.split(",")
        if len(fields) < 2 or not fields[1].startswith("r="):
            raise ScramError("client-first message without r=nonce")
        client_nonce = fields[1][2:]  # (a mandatory extension, m=, fails as "without n=user")
        if not client_nonce:
            raise ScramError("client-first message with no nonce")
        if not all(0x21 <= ord(c) <= 0x7E for c in client_nonce):
            raise ScramError("client nonce with characters outside printable ASCII")
        self.nonce = client_nonce + secrets.token_urlsafe(24)
        salt = base64.b64encode(credential.salt).decode()
        self.server_first = f"r={self.nonce},s={salt},i={credential.iterations}"

    def final(self, client_final: str) -> str:
        """The server-final message (`v=signature`) for a client-final message
        whose proof is right; ScramError otherwise."""
        without_proof, sep, proof_b64 = client_final.rpartition(",p=")
        if not sep:
            raise ScramError("client-final message without p=proof")
        fields = without_proof.split(",")
        if len(fields) < 2 or not fields[0].startswith("c=") or not fields[1].startswith("r="):
            raise ScramError("client-final message without c=binding,r=nonce")
        try:
            binding = base64.b64decode(fields[0][2:], validate=True)
            proof = base64.b64decode(proof_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ScramError("client-final message with bad base64") from None
        if binding != self.gs2_header.encode():
            raise ScramError("channel binding does not match the GS2 header")
        if fields[1][2:] != self.nonce:
            raise ScramError("nonce does not match the server's")
        name = _HASH[self.credential.mechanism]
        cred = self.credential
        auth = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        signature = hmac.digest(cred.stored_key, auth, name)
        if len(proof) != len(signature):
            raise ScramError(f"proof of {len(proof)} bytes, not {len(signature)}")
        client_key = (int.from_bytes(proof) ^ int.from_bytes(signature)).to_bytes(len(proof))
        if not hmac.compare_digest(hashlib.new(name, client_key).digest(), cred.stored_key):
            raise ScramError("wrong proof (wrong password)")
        server_signature = hmac.digest(cred.server_key, auth, name)
        return "v=" + base64.b64encode(server_signature).decode()
