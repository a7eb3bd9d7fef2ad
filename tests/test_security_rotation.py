"""Certificate rotation without a restart: the key file is replaced under load;
new connections get the new certificate, no existing connection is dropped and
every record is delivered."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from security_helpers import TlsRawClient, client_ssl_context, secure_broker, wait_for_log


def _served_cn(address: str, ctx: Any) -> str:
    with TlsRawClient(address, ctx) as c:
        cert = c.sock.getpeercert()
    return dict(x[0] for x in cert["subject"])["commonName"]


def _replace(path: Path, data: bytes) -> None:
    """Atomically, as deployment tools do (write beside, rename over)."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_rotation_under_load(tmp_path_factory: pytest.TempPathFactory) -> None:
    broker, certs, _ = secure_broker(tmp_path_factory.mktemp("rotate"))
    stop = threading.Event()
    try:
        ctx = client_ssl_context(certs)
        address = broker.address("SSL")
        assert _served_cn(address, ctx) == "shoal-broker"
        errors: list[Any] = []
        delivered: list[int] = []
        failed: list[Any] = []
        topic = f"rot-{uuid.uuid4().hex[:8]}"

        def on_delivery(err: Any, msg: Any) -> None:
            (failed if err is not None else delivered).append(err or 1)

        def produce(conf: dict[str, Any]) -> None:
            producer = Producer({**conf, "linger.ms": 2, "error_cb": errors.append})
            while not stop.is_set():
                producer.produce(topic, b"x" * 100, on_delivery=on_delivery)
                producer.poll(0.005)
            producer.flush(30)

        confs = [
            {
                "bootstrap.servers": broker.address(listener),
                "security.protocol": listener,
                "ssl.ca.location": str(certs.ca_file),
                **(
                    {
                        "sasl.mechanism": "SCRAM-SHA-256",
                        "sasl.username": "alice",
                        "sasl.password": "s3cret-pw",
                    }
                    if listener == "SASL_SSL"
                    else {}
                ),
            }
            for listener in ("SSL", "SSL", "SASL_SSL")
        ]
        threads = [threading.Thread(target=produce, args=(c,), daemon=True) for c in confs]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(delivered) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(delivered) >= 200, errors

        # A half-written file does not load: the old certificate stays in use.
        keystore = certs.server_keystore
        original = keystore.read_bytes()
        _replace(keystore, original[: len(original) // 3])
        deadline = time.monotonic() + 10
        while "TLS material changed but does not load yet" not in broker.log():
            assert time.monotonic() < deadline, broker.log()[-2000:]
            # files are checked when connections arrive
            assert _served_cn(address, ctx) == "shoal-broker"
            time.sleep(0.1)
        assert _served_cn(address, ctx) == "shoal-broker"

        # The new certificate arrives (same CA, new key): new connections get it.
        new = certs.ca.issue_cert("127.0.0.1", "localhost", common_name="shoal-broker-2")
        _replace(
            keystore,
            new.private_key_pem.bytes() + b"".join(b.bytes() for b in new.cert_chain_pems),
        )
        deadline = time.monotonic() + 10
        while _served_cn(address, ctx) != "shoal-broker-2":
            assert time.monotonic() < deadline, "new certificate not served"
            time.sleep(0.1)
        wait_for_log(broker, "TLS material reloaded")
        logins = broker.log().count("authenticated User:alice")
        before = len(delivered)
        deadline = time.monotonic() + 30
        while len(delivered) < before + 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(60)
        assert failed == [] and errors == [], (failed[:3], errors[:3])
        assert len(delivered) >= before + 200
        # no connection was dropped or re-made by the rotation
        assert "closing connection" not in broker.log()
        assert broker.log().count("authenticated User:alice") == logins
    finally:
        stop.set()
        broker.stop()
