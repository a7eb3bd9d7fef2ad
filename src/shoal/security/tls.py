"""TLS for SSL and SASL_SSL listeners, from PEM material under Kafka's key names.

Key material: `ssl.keystore.location` (one PEM file: private key and
certificate chain) or `ssl.keystore.certificate.chain` + `ssl.keystore.key`,
each either inline PEM (as Kafka takes them) or the path of a PEM file: a value
starting with `-----BEGIN` is PEM, anything else a path. Inline PEM is written
to a private temporary file just long enough for OpenSSL to load it.

Rotation without restart: the listener's server context asks `current()` in
its SNI callback (OpenSSL calls it for every ClientHello, with or without SNI)
and switches the connection to the newest context. `current()` looks at the
files' mtimes and sizes at most every `ssl.reload.check.interval.ms` and
rebuilds the context when they changed; a half-written file that fails to load
keeps the previous context (one warning) until it loads. Connections already
established keep the context they started with: nothing is dropped.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from shoal.config import BrokerConfig, ConfigError

log = logging.getLogger("shoal.tls")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {
    "none": ssl.CERT_NONE,
    "requested": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def _is_pem(value: str) -> bool:
    return value.lstrip().startswith("-----BEGIN")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    keystore_location: str
    certificate_chain: str  # inline PEM or path
    key: str  # inline PEM or path
    key_password: str
    truststore_location: str
    client_auth: str
    protocols: tuple[str, ...]
    ciphers: str
    reload_interval_ms: int

    @classmethod
    def from_config(cls, config: BrokerConfig | Any) -> TlsSettings:
        protocols = tuple(
            p.strip() for p in str(config["ssl.enabled.protocols"]).split(",") if p.strip()
        )
        if not protocols:
            raise ConfigError("ssl.enabled.protocols: empty")
        settings = cls(
            keystore_location=str(config["ssl.keystore.location"]),
            certificate_chain=str(config["ssl.keystore.certificate.chain"]),
            key=str(config["ssl.keystore.key"]),
            key_password=str(config["ssl.key.password"]),
            truststore_location=str(config["ssl.truststore.location"]),
            client_auth=str(config["ssl.client.auth"]),
            protocols=protocols,
            ciphers=str(config["ssl.cipher.suites"]),
            reload_interval_ms=int(config["ssl.reload.check.interval.ms"]),
        )
        if settings.keystore_location and (settings.certificate_chain or settings.key):
            raise ConfigError(
                "ssl.keystore.location: set it or ssl.keystore.certificate.chain and "
                "ssl.keystore.key, not both"
            )
        if not settings.keystore_location and not (settings.certificate_chain and settings.key):
            missing = "ssl.keystore.key" if settings.certificate_chain else "ssl.keystore.location"
            raise ConfigError(
                f"{missing}: a TLS listener needs a certificate and its key "
                "(ssl.keystore.location, or ssl.keystore.certificate.chain and ssl.keystore.key)"
            )
        if settings.client_auth != "none" and not settings.truststore_location:
            raise ConfigError(
                f"ssl.truststore.location: needed to check client certificates "
                f"(ssl.client.auth={settings.client_auth})"
            )
        return settings

    def watched_files(self) -> list[str]:
        files = [self.keystore_location, self.truststore_location]
        files += [v for v in (self.certificate_chain, self.key) if v and not _is_pem(v)]
        return [f for f in files if f]

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in self.watched_files():
            try:
                st = os.stat(path)
                out.append((path, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((path, -1, -1))
        return tuple(out)

    def build(self) -> ssl.SSLContext:
        """A server context; ConfigError names the key whose material fails."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        versions = sorted(_VERSIONS[p] for p in self.protocols)
        ctx.minimum_version, ctx.maximum_version = versions[0], versions[-1]
        if self.ciphers:
            try:
                ctx.set_ciphers(self.ciphers)
            except ssl.SSLError:
                raise ConfigError(
                    f"ssl.cipher.suites: {self.ciphers!r} names no cipher OpenSSL knows"
                ) from None
        password = self.key_password or None
        for key_name, value in (
            ("ssl.keystore.location", self.keystore_location),
            ("ssl.keystore.certificate.chain", self.certificate_chain),
            ("ssl.keystore.key", self.key),
            ("ssl.truststore.location", self.truststore_location),
        ):
            if value and not _is_pem(value) and not os.path.isfile(value):
                raise ConfigError(f"{key_name}: no file {value!r}")
        key_name = "ssl.keystore.location" if self.keystore_location else "ssl.keystore.key"
        # Loaded once, in one piece: a keystore rewritten between two loads
        # must fail here (old context kept), not as a key mismatch later.
        chain_source = self.completed_chain() or self.keystore_location or self.certificate_chain
        try:
            with (
                _as_file(chain_source) as chain,
                _as_file(self.keystore_location or self.key) as key,
            ):
                ctx.load_cert_chain(chain, key, password=password)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{key_name}: cannot load the certificate and key "
                f"(wrong ssl.key.password, or not PEM?): {exc}"
            ) from None
        if self.truststore_location:
            try:
                ctx.load_verify_locations(cafile=self.truststore_location)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"ssl.truststore.location: cannot load {self.truststore_location!r}: {exc}"
                ) from None
        ctx.verify_mode = _CLIENT_AUTH[self.client_auth]
        return ctx

    def completed_chain(self) -> str | None:
        """PEM of the keystore's certificate followed by its issuers from the
        trust store, when the keystore holds the certificate alone and the
        trust store has its issuer; else None (the keystore is used as is).

        Why: with no chain in the keystore, OpenSSL completes the chain from
        the trust store on every handshake (X509_verify_cert, a signature
        check and certificate lookups: about 0.17 ms of the broker's CPU per
        TLS login with an ECDSA certificate, a fifth of its handshake).
        Python's ssl cannot turn that off (SSL_MODE_NO_AUTO_CHAIN), so the
        same chain is built once here and loaded with the certificate; the
        client receives the same certificates as before."""
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature

        if not self.truststore_location:
            return None
        source = self.keystore_location or self.certificate_chain
        try:
            pem = source if _is_pem(source) else Path(source).read_text()
            certs = x509.load_pem_x509_certificates(pem.encode())
            with open(self.truststore_location, "rb") as fh:
                trusted = x509.load_pem_x509_certificates(fh.read())
        except (OSError, ValueError):
            return None  # loaded as is; build() reports unloadable material
        if len(certs) != 1:
            return None  # the keystore has its chain: OpenSSL sends that one
        chain = [certs[0]]
        while len(chain) <= 10 and chain[-1].issuer != chain[-1].subject:
            for ca in trusted:
                if ca.subject != chain[-1].issuer or ca in chain:
                    continue
                try:
                    chain[-1].verify_directly_issued_by(ca)
                except (InvalidSignature, ValueError, TypeError):
                    continue
                chain.append(ca)
                break
            else:
                break
        if len(chain) == 1:
            return None
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)


@contextmanager
def _as_file(value: str) -> Iterator[str]:
    """A path for OpenSSL: the value itself, or a private temporary copy of
    inline PEM, removed as soon as it has been read."""
    if not _is_pem(value):
        yield value
        return
    fd, path = tempfile.mkstemp(prefix="shoal-tls-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        yield path
    finally:
        os.unlink(path)


class TlsContexts:
    """The server context of the TLS listeners, rebuilt when the files change."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self._fingerprint = settings.fingerprint()
        self._checked = time.monotonic()
        self.reloads = 0
        self.server_context = settings.build()
        self.server_context.sni_callback = self._switch
        self._current = self.server_context
        # TLS handshakes run in worker threads (tls_stream.py): one checks
        # and reloads at a time.
        self._lock = threading.Lock()

    def current(self) -> ssl.SSLContext:
        with self._lock:
            return self._check()

    def _check(self) -> ssl.SSLContext:
        now = time.monotonic()
        if (now - self._checked) * 1000 < self.settings.reload_interval_ms:
            return self._current
        self._checked = now
        fingerprint = self.settings.fingerprint()
        if fingerprint != self._fingerprint:
            try:
                ctx = self.settings.build()
            except ConfigError as exc:
                log.warning("TLS material changed but does not load yet, keeping the old: %s", exc)
            else:
                self._current, self._fingerprint = ctx, fingerprint
                self.reloads += 1
                log.info(
                    "TLS material reloaded (%s) for new connections",
                    ", ".join(self.settings.watched_files()),
                )
        return self._current

    def _switch(self, ssl_object: ssl.SSLObject, _server_name: str | None, _ctx: Any) -> None:
        # Until the first reload the listener's own context is current: no
        # switch (SSL_set_SSL_CTX copies the certificate settings each time).
        ctx = self.current()
        if ctx is not self.server_context:
            ssl_object.context = ctx
