"""The broker's CPU per TLS handshake, in process, by certificate key type.

    .venv/bin/python bench/tls_handshake_bench.py [--handshakes 500]

A reconnect storm's logins (bench/security_bench.py) share the machine with
their load generator, so their rate and even their CPU figures move with the
load. This isolates the TLS part: full TLS 1.3 handshakes between a client and
the broker's own server context (shoal.security.tls.TlsSettings.build, from a
trustme CA and a keystore holding the certificate alone, the trust store
holding the CA), in memory, timing only the server's calls with
`time.process_time` (CPU, not wall time, so other processes matter little).
No session resumption: every handshake is a full one, as for 1,000 sites
connecting once each.

Four server variants, interleaved so that they see the same conditions:
ECDSA P-256 and RSA 2048 certificates, each with the chain completed at load
(what the broker does) and with OpenSSL completing it on every handshake
(what it did before: `auto-chain`).
"""

from __future__ import annotations

import argparse
import json
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from security_helpers import make_certs
from shoal.security.tls import TlsSettings


class _AutoChain(TlsSettings):
    """The broker before the chain was completed at load."""

    def completed_chain(self) -> str | None:
        return None


def server_context(keystore: Path, truststore: Path, auto_chain: bool) -> ssl.SSLContext:
    cls = _AutoChain if auto_chain else TlsSettings
    return cls.from_config(
        {
            "ssl.enabled.protocols": "TLSv1.2,TLSv1.3",
            "ssl.keystore.location": str(keystore),
            "ssl.keystore.certificate.chain": "",
            "ssl.keystore.key": "",
            "ssl.key.password": "",
            "ssl.truststore.location": str(truststore),
            "ssl.client.auth": "none",
            "ssl.cipher.suites": "",
            "ssl.reload.check.interval.ms": 2000,
        }
    ).build()


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> float:
    """One full handshake in memory (and the client reading the session
    tickets the server sends after it); the server's CPU seconds."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    spent = 0.0
    c_done = s_done = False
    while not (c_done and s_done):
        if not c_done:
            try:
                c.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not s_done:
            t = time.process_time()
            try:
                s.do_handshake()
                s_done = True
            except ssl.SSLWantReadError:
                pass
            spent += time.process_time() - t
        c_in.write(s_out.read())
    try:
        c.read(1)
    except ssl.SSLWantReadError:
        pass
    return spent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--handshakes", type=int, default=500, help="per variant")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tls-bench-") as tmp:
        variants = {}
        clients = {}
        for key in ("ec", "rsa"):
            certs = make_certs(Path(tmp) / key, key)
            clients[key] = ssl.create_default_context(cafile=str(certs.ca_file))
            for auto in (False, True):
                name = f"{key}{', auto-chain' if auto else ''}"
                variants[name] = (
                    key,
                    server_context(certs.server_keystore, certs.ca_file, auto),
                )
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(a.handshakes):
            for name, (key, ctx) in variants.items():
                times[name].append(handshake(ctx, clients[key]))
    out = {}
    for name, xs in times.items():
        mean_ms = statistics.fmean(xs) * 1000
        out[name] = {"server_cpu_ms_per_handshake": round(mean_ms, 3)}
        print(
            f"{name:16s} server CPU {mean_ms:.3f} ms per handshake "
            f"(one core: {1000 / mean_ms:.0f} handshakes/s)"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
