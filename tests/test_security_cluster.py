"""Cluster mode: each broker answers Metadata with every broker's address on
the listener the client came in on (named listeners, mapped protocols), and
SCRAM users created through one broker log in on another at once."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from cluster_harness import FAST, new_database, wait_for
from harness import s3_endpoint
from security_helpers import PASSWORD, SecureBroker, store_users

KEYS = {
    "listener.security.protocol.map": "LOCAL:PLAINTEXT,SITES:SASL_PLAINTEXT",
    "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
}


def _sites(broker: SecureBroker, user: str, password: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.address("SITES"),
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": password,
    }


def test_per_listener_addresses_and_shared_users(tmp_path: Path) -> None:
    url = new_database()
    s3 = s3_endpoint()
    objects = f"s3://{s3['SHOAL_TEST_BUCKET']}/sec-{uuid.uuid4().hex[:6]}"
    brokers = [
        SecureBroker(
            tmp_path / f"node{n}",
            KEYS,
            ("LOCAL", "SITES"),
            args=["--metadata", url, "--objects", objects, "--node-id", str(n)],
            env={**s3, **FAST},
        )
        for n in (1, 2)
    ]
    try:
        for b in brokers:
            b.start()
        store_users(url, ("admin",))

        def nodes(conf: dict[str, Any]) -> dict[int, tuple[str, int]]:
            md = AdminClient(conf).list_topics(timeout=20)
            return {b.id: (b.host, b.port) for b in md.brokers.values()}

        want_local = {
            n: ("127.0.0.1", b.ports["LOCAL"]) for n, b in zip((1, 2), brokers, strict=True)
        }
        want_sites = {
            n: ("127.0.0.1", b.ports["SITES"]) for n, b in zip((1, 2), brokers, strict=True)
        }
        for b in brokers:
            wait_for(
                lambda b=b: nodes({"bootstrap.servers": b.address("LOCAL")}) == want_local,
                30,
                "both brokers on LOCAL",
            )
            assert nodes(_sites(b, "admin", PASSWORD)) == want_sites

        # a user created through broker 1 logs in on broker 2 right away
        admin = AdminClient(_sites(brokers[0], "admin", PASSWORD))
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
        done = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion("plant-3", info, b"pw-3")]
        )
        done["plant-3"].result(timeout=30)
        assert nodes(_sites(brokers[1], "plant-3", "pw-3")) == want_sites
    finally:
        for b in brokers:
            if b.proc is not None:
                b.kill()
