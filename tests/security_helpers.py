"""A broker with every kind of listener, certificates from trustme, users made
with `shoal users`, JWTs signed by the test: shared by tests/test_security_*.py."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import BrokerProcess, free_port
from wire import RawClient

PASSWORD = "s3cret-pw"
USERS = ("alice", "bob", "admin")
LISTENERS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


@dataclass
class Certs:
    dir: Path
    ca: trustme.CA
    ca_file: Path
    server_keystore: Path  # key + chain in one PEM

    def client(
        self, cn: str, *, ou: str = "sites", ca: trustme.CA | None = None
    ) -> tuple[Path, Path]:
        """A client certificate (cert, key files) with subject CN=cn,OU=ou."""
        issued = (ca or self.ca).issue_cert(
            f"{cn}.client", common_name=cn, organization_name="acme", organization_unit_name=ou
        )
        cert = self.dir / f"client-{cn}-{ou}.pem"
        key = self.dir / f"client-{cn}-{ou}.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        key.write_bytes(issued.private_key_pem.bytes())
        return cert, key


#: `make_certs(key=...)`: trustme's key types. ECDSA (P-256) is trustme's
#: default and what the tests use; RSA (2048 bits) is there for
#: bench/security_bench.py, to show what an RSA certificate costs a login.
KEY_TYPES = {"ec": trustme.KeyType.ECDSA, "rsa": trustme.KeyType.RSA}


def make_certs(directory: Path, key: str = "ec") -> Certs:
    """A CA and a server certificate for 127.0.0.1/localhost, both with `key`
    keys (KEY_TYPES); client certificates come from the same CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(key_type=KEY_TYPES[key])
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ca.issue_cert(
        "127.0.0.1", "localhost", common_name="shoal-broker", key_type=KEY_TYPES[key]
    )
    keystore = directory / "server.pem"
    keystore.write_bytes(
        server.private_key_pem.bytes() + b"".join(b.bytes() for b in server.cert_chain_pems)
    )
    return Certs(directory, ca, ca_file, keystore)


@dataclass
class Jwks:
    key: Any
    path: Path

    def token(self, sub: str = "plant-7", ttl: int = 300, **claims: Any) -> str:
        now = int(time.time())
        body = {"sub": sub, "iss": "https://idp.test", "aud": "shoal", "iat": now}
        body["exp"] = now + ttl
        body.update(claims)
        return jwt.encode(body, self.key, "RS256", {"kid": "test-key"})


def make_jwks(directory: Path) -> Jwks:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="test-key", alg="RS256", use="sig")
    path = directory / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return Jwks(key, path)


class SecureBroker(BrokerProcess):
    """A broker started with `listeners` from a config file instead of --listen."""

    def __init__(
        self,
        data_dir: Path,
        keys: dict[str, Any],
        names: tuple[str, ...],
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.ports = {name: free_port() for name in names}
        super().__init__(data_dir, port=self.ports[names[0]], args=args, env=env)
        self.config_file = data_dir.parent / f"{data_dir.name}.toml"
        listeners = ",".join(f"{n}://127.0.0.1:{p}" for n, p in self.ports.items())
        lines = [f'"listeners" = "{listeners}"']
        lines += [f'"{k}" = {json.dumps(v)}' for k, v in keys.items()]
        self.config_file.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "shoal",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--config",
            str(self.config_file),
            *self.args,
        ]

    def address(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"

    @property
    def metadata_url(self) -> str:
        return f"sqlite:///{self.data_dir.resolve() / 'meta.db'}"


def shoal(
    *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def secure_broker(tmp: Path, **extra: Any) -> tuple[SecureBroker, Certs, Jwks]:
    certs = make_certs(tmp / "certs")
    jwks = make_jwks(tmp)
    keys = {
        "ssl.keystore.location": str(certs.server_keystore),
        "ssl.truststore.location": str(certs.ca_file),
        "ssl.client.auth": "requested",
        "ssl.principal.mapping.rules": "RULE:^CN=([^,]*),OU=sites,.*$/$1/,DEFAULT",
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER",
        "sasl.oauthbearer.jwks.endpoint.url": jwks.path.as_uri(),
        "sasl.oauthbearer.expected.audience": "shoal",
        "sasl.oauthbearer.expected.issuer": "https://idp.test",
        "connection.failed.authentication.delay.ms": 300,
        "ssl.reload.check.interval.ms": 200,
        **extra,
    }
    broker = SecureBroker(tmp / "data", keys, LISTENERS)
    broker.start()
    store_users(broker.metadata_url, USERS)
    return broker, certs, jwks


def store_users(metadata_url: str, names: tuple[str, ...], password: str = PASSWORD) -> None:
    """Credentials for both SCRAM mechanisms, written straight to the store
    (faster than one `shoal users add` per user; the CLI has its own test)."""
    from shoal.meta.security import SecurityStore
    from shoal.meta.store import MetaStore
    from shoal.security.scram import make_credential

    async def go() -> None:
        meta = await MetaStore.open(metadata_url)
        try:
            creds = [
                (name, make_credential(m, password, 4096))
                for name in names
                for m in ("SCRAM-SHA-256", "SCRAM-SHA-512")
            ]
            await SecurityStore(meta).alter(creds, [])
        finally:
            await meta.close()

    asyncio.run(go())


def server_ssl_context(certs: Certs) -> ssl.SSLContext:
    """The broker's side of the test certificates, for a server made in the test."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs.server_keystore))
    return ctx


def client_ssl_context(certs: Certs, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


class TlsRawClient(RawClient):
    """RawClient over TLS."""

    def __init__(self, bootstrap: str, ctx: ssl.SSLContext, timeout: float = 10.0) -> None:
        host, _, port = bootstrap.rpartition(":")
        raw = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)


def wait_for_log(broker: BrokerProcess, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = broker.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the broker log:\n{broker.log()[-3000:]}")
