"""New authenticated connections per second, and TLS produce throughput.

    .venv/bin/python bench/auth_bench.py [--seconds 10] [--concurrency 50]

Starts one broker (PLAINTEXT, SSL and SASL_SSL listeners, test certificates),
then:
1. a reconnect storm: `concurrency` clients in one asyncio process each
   connect, do TLS, SaslHandshake and a full SCRAM-SHA-256 exchange, close, and
   start over, for `seconds`: completed logins per second (the client side
   shares the machine's cores with the broker);
2. produce throughput of confluent-kafka over PLAINTEXT, SSL and SASL_SSL
   (acks=all, 1 KiB records), to compare TLS with plaintext.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import secrets
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

from harness import cpu_seconds
from security_helpers import PASSWORD, SecureBroker, make_certs, store_users
from wire import call_async

_SALTED: dict[tuple[str, int], bytes] = {}


def _client_final(bare: str, server_first: str) -> str:
    """SCRAM-SHA-256 client-final, with the salted password cached per
    (salt, iterations): each of 1,000 real sites pays its own PBKDF2, so a
    single load generator must not pay them all, or it measures itself."""
    fields = dict(kv.split("=", 1) for kv in server_first.split(","))
    key = (fields["s"], int(fields["i"]))
    if key not in _SALTED:
        _SALTED[key] = hashlib.pbkdf2_hmac(
            "sha256", PASSWORD.encode(), base64.b64decode(fields["s"]), key[1]
        )
    salted = _SALTED[key]
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={fields['r']}"
    auth = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}"


async def _login(port: int, ctx: ssl.SSLContext) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        hs = await call_async(
            reader, writer, 17, 1, SaslHandshakeRequest(mechanism="SCRAM-SHA-256"), 1
        )
        assert hs.error_code == 0
        bare = f"n=alice,r={secrets.token_urlsafe(18)}"
        first = await call_async(
            reader, writer, 36, 2, SaslAuthenticateRequest(auth_bytes=f"n,,{bare}".encode()), 2
        )
        assert first.error_code == 0, first.error_message
        final_msg = _client_final(bare, bytes(first.auth_bytes).decode())
        final = await call_async(
            reader, writer, 36, 2, SaslAuthenticateRequest(auth_bytes=final_msg.encode()), 3
        )
        assert final.error_code == 0, final.error_message
        assert bytes(final.auth_bytes).startswith(b"v=")
    finally:
        writer.close()


async def storm(
    port: int, ctx: ssl.SSLContext, seconds: float, concurrency: int
) -> tuple[int, float]:
    """Logins completed, and the seconds they took."""
    done = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            await _login(port, ctx)
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.monotonic() - start


def produce_rate(conf: dict[str, Any], seconds: float) -> float:
    from confluent_kafka import Producer

    producer = Producer({**conf, "acks": "all", "linger.ms": 5, "batch.size": 1_000_000})
    payload = b"x" * 1024
    topic = f"bench-{conf['security.protocol'].lower()}"
    producer.produce(topic, payload)
    producer.flush(30)
    sent, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            producer.produce(topic, payload)
            sent += 1
        except BufferError:
            producer.poll(0.01)
    assert producer.flush(60) == 0
    return sent * len(payload) / (time.monotonic() - start) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="auth-bench-"))
    certs = make_certs(tmp / "certs")
    broker = SecureBroker(
        tmp / "data",
        {
            "ssl.keystore.location": str(certs.server_keystore),
            "sasl.enabled.mechanisms": "SCRAM-SHA-256",
            "max.connections.per.ip": 100_000,
        },
        ("PLAINTEXT", "SSL", "SASL_SSL"),
    )
    broker.start()
    try:
        store_users(broker.metadata_url, ("alice",))
        ctx = ssl.create_default_context(cafile=str(certs.ca_file))
        assert broker.proc is not None
        cpu0 = cpu_seconds(broker.proc.pid)
        logins, took = asyncio.run(
            storm(broker.ports["SASL_SSL"], ctx, args.seconds, args.concurrency)
        )
        cpu = cpu_seconds(broker.proc.pid) - cpu0
        rate = logins / took
        print(
            f"SASL_SSL SCRAM-SHA-256 logins: {rate:.0f}/s ({args.concurrency} concurrent); "
            f"broker CPU {cpu / logins * 1000:.2f} ms per login "
            f"(= {logins / cpu:.0f} logins/s per busy core)"
        )
        base = {"ssl.ca.location": str(certs.ca_file)}
        rates = {}
        for listener in ("PLAINTEXT", "SSL", "SASL_SSL"):
            conf = {"bootstrap.servers": broker.address(listener), "security.protocol": listener}
            if listener != "PLAINTEXT":
                conf.update(base)
            if listener == "SASL_SSL":
                conf.update(
                    {
                        "sasl.mechanism": "SCRAM-SHA-256",
                        "sasl.username": "alice",
                        "sasl.password": PASSWORD,
                    }
                )
            rates[listener] = produce_rate(conf, args.seconds)
            print(f"produce over {listener}: {rates[listener]:.1f} MB/s")
        print(f"TLS / plaintext: {rates['SSL'] / rates['PLAINTEXT']:.2f}x")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
