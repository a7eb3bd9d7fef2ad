"""Bad input on secured listeners, over the raw protocol: each case gets
Kafka's answer (or a closed connection), nothing is written, and the broker
goes on serving everybody else."""

from __future__ import annotations

import datetime
import json
import random
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.errors import ErrorCode
from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from scramp import ScramClient

from security_helpers import (
    PASSWORD,
    Certs,
    Jwks,
    SecureBroker,
    TlsRawClient,
    client_ssl_context,
    secure_broker,
    store_users,
    wait_for_log,
)
from wire import RawClient, request_frame

ENABLED = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
DELAY_S = 0.3  # connection.failed.authentication.delay.ms of the fixture


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureBroker, Certs, Jwks]]:
    tmp = tmp_path_factory.mktemp("bad")
    broker, certs, jwks = secure_broker(tmp, **{"audit.log.path": str(tmp / "audit.log")})
    yield broker, certs, jwks
    broker.stop()


def handshake(c: RawClient, mechanism: str) -> Any:
    return c.call(17, 1, SaslHandshakeRequest(mechanism=mechanism))


def authenticate(c: RawClient, data: bytes, cid: int = 2) -> Any:
    return c.call(36, 2, SaslAuthenticateRequest(auth_bytes=data), correlation_id=cid)


def metadata(c: RawClient, topic: str | None = None, cid: int = 9) -> Any:
    topics = None if topic is None else (MetadataRequestTopic(name=topic, topic_id=None),)
    body = MetadataRequest(
        topics=topics,
        allow_auto_topic_creation=topic is not None,
        include_topic_authorized_operations=False,
    )
    return c.call(3, 12, body, correlation_id=cid)


def assert_serving(broker: SecureBroker) -> None:
    """Everybody else is still served: a plaintext Metadata round trip."""
    with RawClient(broker.address("PLAINTEXT")) as c:
        assert metadata(c).brokers


def assert_failed_then_closed(c: RawClient, data: bytes) -> Any:
    start = time.monotonic()
    resp = authenticate(c, data)
    assert resp.error_code == ErrorCode.sasl_authentication_failed
    assert time.monotonic() - start >= DELAY_S * 0.9
    assert c.is_closed()
    return resp


def test_unsupported_mechanism_lists_the_enabled_ones(env: Any) -> None:
    broker = env[0]
    with RawClient(broker.address("SASL_PLAINTEXT")) as c:
        resp = handshake(c, "GSSAPI")
        assert resp.error_code == ErrorCode.unsupported_sasl_mechanism
        assert list(resp.mechanisms) == ENABLED
        assert c.is_closed()
    assert_serving(broker)


@pytest.mark.parametrize("listener", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_requests_before_authentication_close_the_connection(env: Any, listener: str) -> None:
    broker, certs, _ = env
    topic = f"never-{uuid.uuid4().hex[:8]}"

    def connect() -> RawClient:
        if listener == "SASL_SSL":
            return TlsRawClient(broker.address(listener), client_ssl_context(certs))
        return RawClient(broker.address(listener))

    with connect() as c:
        # ApiVersions is allowed before authentication
        assert c.call(
            18, 3, ApiVersionsRequest(client_software_name="t", client_software_version="1")
        ).api_keys
        c.send_raw(request_frame(3, 12, _metadata_body(topic)))
        assert c.is_closed()
    with connect() as c:  # after a handshake, but before authenticating
        assert handshake(c, "PLAIN").error_code == ErrorCode.none
        c.send_raw(request_frame(3, 12, _metadata_body(topic)))
        assert c.is_closed()
    wait_for_log(broker, "request before SASL authentication (Metadata)")
    with RawClient(broker.address("PLAINTEXT")) as c:  # nothing was auto-created
        assert topic not in {t.name for t in metadata(c).topics}


def _metadata_body(topic: str) -> Any:
    return MetadataRequest(
        topics=(MetadataRequestTopic(name=topic, topic_id=None),),
        allow_auto_topic_creation=True,
        include_topic_authorized_operations=False,
    )


@pytest.mark.parametrize(
    "token",
    [b"\x00alice\x00wrong", b"\x00nobody\x00" + PASSWORD.encode()],
    ids=["wrong-password", "unknown-user"],
)
def test_plain_failures_look_the_same(env: Any, token: bytes) -> None:
    broker = env[0]
    with RawClient(broker.address("SASL_PLAINTEXT")) as c:
        assert handshake(c, "PLAIN").error_code == ErrorCode.none
        resp = assert_failed_then_closed(c, token)
        # neither the user's existence nor the reason is told to the client
        assert (
            resp.error_message
            == "Authentication failed: invalid credentials with SASL mechanism PLAIN"
        )
    reason = "wrong password for user 'alice'" if b"alice" in token else "unknown user 'nobody'"
    wait_for_log(broker, reason)
    assert PASSWORD not in broker.log()
    assert_serving(broker)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_wrong_proof_and_wrong_nonce(env: Any, mechanism: str) -> None:
    broker = env[0]
    for tamper in ("proof", "nonce", "password", "user"):
        user = "nobody" if tamper == "user" else "alice"
        password = "wrong" if tamper == "password" else PASSWORD
        client = ScramClient([mechanism], user, password)
        with RawClient(broker.address("SASL_PLAINTEXT")) as c:
            assert handshake(c, mechanism).error_code == ErrorCode.none
            first = client.get_client_first().encode()
            if tamper == "user":
                assert_failed_then_closed(c, first)
                continue
            resp = authenticate(c, first)
            assert resp.error_code == ErrorCode.none
            server_first = bytes(resp.auth_bytes).decode()
            client.set_server_first(server_first)
            final = client.get_client_final()
            if tamper == "proof":
                head, _, proof = final.rpartition("p=")
                flipped = ("B" if proof[0] == "A" else "A") + proof[1:]
                final = head + "p=" + flipped
            elif tamper == "nonce":
                nonce = server_first.split(",")[0][2:]
                # (a nonce that ends in "zz" already, 1 in 4,096, once made this
                # no change at all and the login succeeded)
                tail = "yy" if nonce.endswith("zz") else "zz"
                final = final.replace(nonce, nonce[:-2] + tail)
                assert nonce not in final
            assert_failed_then_closed(c, final.encode())
    assert_serving(broker)


def test_handshake_and_authenticate_out_of_order(env: Any) -> None:
    broker = env[0]
    with RawClient(broker.address("SASL_PLAINTEXT")) as c:
        resp = authenticate(c, b"\x00alice\x00" + PASSWORD.encode())
        assert resp.error_code == ErrorCode.illegal_sasl_state
        assert c.is_closed()
    with RawClient(broker.address("PLAINTEXT")) as c:  # not a SASL listener
        assert handshake(c, "PLAIN").error_code == ErrorCode.illegal_sasl_state


@pytest.mark.parametrize("mechanism", ENABLED)
def test_malformed_sasl_tokens(env: Any, mechanism: str) -> None:
    """Garbage tokens (seeded, fuzz-style), each on its own connection:
    SASL_AUTHENTICATION_FAILED, then closed; the broker goes on."""
    broker = env[0]
    rng = random.Random(f"sasl-{mechanism}")
    tokens = [b"", b"\x00", b"n,,", b"\xff" * 3, b"n,,n=alice,r=" + b"\x00" * 5]
    tokens += [rng.randbytes(rng.randrange(1, 300)) for _ in range(6)]
    for token in tokens:
        with RawClient(broker.address("SASL_PLAINTEXT")) as c:
            assert handshake(c, mechanism).error_code == ErrorCode.none
            assert_failed_then_closed(c, token)
    assert "Traceback" not in broker.log()
    assert_serving(broker)


def test_truncated_and_undecodable_sasl_frames(env: Any) -> None:
    broker = env[0]
    good = request_frame(36, 2, SaslAuthenticateRequest(auth_bytes=b"\x00alice\x00x" * 10))
    # a frame cut off mid-body, then the client goes away
    with RawClient(broker.address("SASL_PLAINTEXT")) as c:
        assert handshake(c, "PLAIN").error_code == ErrorCode.none
        c.send_raw(good[: len(good) // 2])
    # a whole frame whose body is cut short (length says less than the fields)
    with RawClient(broker.address("SASL_PLAINTEXT")) as c:
        assert handshake(c, "PLAIN").error_code == ErrorCode.none
        body = good[4:-12]
        c.send_raw(struct.pack(">i", len(body)) + body)
        assert c.is_closed()
    # a frame far over sasl.server.max.receive.size before authentication
    with RawClient(broker.address("SASL_PLAINTEXT")) as c:
        c.send_raw(struct.pack(">i", 50 * 1024 * 1024) + b"\x00\x24\x00\x02")
        assert c.is_closed()
    assert "Traceback" not in broker.log()
    assert_serving(broker)


def test_plaintext_sent_to_a_tls_port(env: Any) -> None:
    broker = env[0]
    for listener in ("SSL", "SASL_SSL"):
        with RawClient(broker.address(listener)) as c:
            port = c.sock.getsockname()[1]
            c.send_raw(
                request_frame(
                    18, 3, ApiVersionsRequest(client_software_name="t", client_software_version="1")
                )
            )
            assert c.is_closed()
            # a failed authentication, with the client's address, logged and audited
            wait_for_log(broker, f"TLS handshake from 127.0.0.1:{port} on {listener}")
            assert tls_failures(broker, port)[0]["listener"] == listener
    assert "Traceback" not in broker.log()
    assert_serving(broker)


def tls_failures(broker: SecureBroker, port: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The audit's failed SSL authentications from the client port `port`."""
    path = broker.data_dir.parent / "audit.log"
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        found = [
            line
            for line in map(json.loads, lines)
            if line["event"] == "authentication"
            and line["mechanism"] == "SSL"
            and line["success"] is False
            and line["client_address"].endswith(f":{port}")
        ]
        if found or time.monotonic() > deadline:
            assert found, f"no failed SSL authentication from port {port} in {lines[-5:]}"
            return found
        time.sleep(0.05)


def test_expired_and_untrusted_client_certificates(env: Any) -> None:
    import trustme

    broker, certs, _ = env
    now = datetime.datetime.now(datetime.UTC)
    expired = certs.ca.issue_cert(
        "old.client",
        common_name="old",
        organization_unit_name="sites",
        not_before=now - datetime.timedelta(days=10),
        not_after=now - datetime.timedelta(days=1),
    )
    stranger = trustme.CA().issue_cert(
        "x.client", common_name="intruder", organization_unit_name="sites"
    )
    for leaf, reason in ((expired, "certificate has expired"), (stranger, "unable to get")):
        ctx = client_ssl_context(certs)
        leaf.configure_cert(ctx)
        raw = socket.create_connection(("127.0.0.1", broker.ports["SSL"]), timeout=10)
        port = raw.getsockname()[1]
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(
                    request_frame(
                        18,
                        3,
                        ApiVersionsRequest(client_software_name="t", client_software_version="1"),
                    )
                )
                if not tls.recv(4):
                    raise ConnectionError("closed by the broker")
        # refused in the handshake: a failed authentication, logged and audited
        wait_for_log(broker, f"TLS handshake from 127.0.0.1:{port} on SSL")
        assert reason in tls_failures(broker, port)[0]["error"]
    assert "User:old" not in broker.log() and "User:intruder" not in broker.log()
    assert_serving(broker)


def test_certificate_no_rule_matches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A client certificate that no ssl.principal.mapping.rules rule maps is
    refused, as in Kafka (here: only OU=sites certificates are mapped)."""
    broker, certs, _ = secure_broker(
        tmp_path_factory.mktemp("rules"),
        **{"ssl.principal.mapping.rules": "RULE:^CN=([^,]*),OU=sites,.*$/$1/"},
    )
    try:
        ok = client_ssl_context(certs, certs.client("plant-1"))
        with TlsRawClient(broker.address("SSL"), ok) as c:
            assert metadata(c).brokers
        bad = client_ssl_context(certs, certs.client("plant-2", ou="elsewhere"))
        with pytest.raises((ConnectionError, OSError)):
            with TlsRawClient(broker.address("SSL"), bad) as c:
                metadata(c)
        wait_for_log(broker, "no ssl.principal.mapping.rules rule applies")
    finally:
        broker.stop()


def test_reauthentication(tmp_path_factory: pytest.TempPathFactory) -> None:
    """connections.max.reauth.ms: the lifetime is in the answer; past it a
    request other than re-authentication closes the connection; a
    re-authentication renews it but may not change the principal."""
    broker, _, _ = secure_broker(
        tmp_path_factory.mktemp("reauth"), **{"connections.max.reauth.ms": 1500}
    )
    plain = b"\x00alice\x00" + PASSWORD.encode()
    try:
        with RawClient(broker.address("SASL_PLAINTEXT")) as c:
            assert handshake(c, "PLAIN").error_code == ErrorCode.none
            resp = authenticate(c, plain)
            assert resp.error_code == ErrorCode.none
            assert resp.session_lifetime == datetime.timedelta(milliseconds=1500)
            assert metadata(c).brokers
            time.sleep(1.7)
            c.send_raw(request_frame(3, 12, _metadata_body("x")))
            assert c.is_closed()
        wait_for_log(broker, "SASL session expired without re-authentication")
        with RawClient(broker.address("SASL_PLAINTEXT")) as c:
            assert handshake(c, "PLAIN").error_code == ErrorCode.none
            assert authenticate(c, plain).error_code == ErrorCode.none
            time.sleep(1.7)
            assert handshake(c, "PLAIN").error_code == ErrorCode.none  # re-authenticate
            assert authenticate(c, plain, cid=3).error_code == ErrorCode.none
            assert metadata(c).brokers
            assert handshake(c, "PLAIN").error_code == ErrorCode.none
            assert_failed_then_closed(c, b"\x00bob\x00" + PASSWORD.encode())
        wait_for_log(broker, "re-authentication as User:bob on a connection of User:alice")

        # librdkafka re-authenticates on its own (KIP-368): a producer that
        # outlives several sessions never loses its connection.
        from confluent_kafka import Producer

        errors: list[Any] = []
        producer = Producer(
            {
                "bootstrap.servers": broker.address("SASL_PLAINTEXT"),
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "SCRAM-SHA-256",
                "sasl.username": "alice",
                "sasl.password": PASSWORD,
                "error_cb": errors.append,
            }
        )
        topic = f"reauth-{uuid.uuid4().hex[:8]}"
        end = time.monotonic() + 5
        sent = 0
        while time.monotonic() < end:
            producer.produce(topic, f"{sent}".encode())
            sent += 1
            producer.poll(0.1)
        assert producer.flush(30) == 0
        assert errors == []
        wait_for_log(broker, "(re-authentication)")
    finally:
        broker.stop()


def test_tls_handshake_garbage_does_not_disturb_others(env: Any) -> None:
    """Random bytes on a TLS port from several clients at once."""
    broker = env[0]
    socks = []
    for i in range(5):
        s = socket.create_connection(("127.0.0.1", broker.ports["SASL_SSL"]), timeout=5)
        s.sendall(random.Random(i).randbytes(500))
        socks.append(s)
    assert_serving(broker)
    for s in socks:
        s.close()


def test_scram_admin_needs_cluster_rights(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With an authorizer, only a principal allowed ALTER on the cluster
    (here the super user) may change credentials; others get
    CLUSTER_AUTHORIZATION_FAILED and nothing changes."""
    from kio.schema.alter_user_scram_credentials.v0.request import (
        AlterUserScramCredentialsRequest,
        ScramCredentialUpsertion,
    )
    from kio.schema.describe_user_scram_credentials.v0.request import (
        DescribeUserScramCredentialsRequest,
    )

    from shoal.security.scram import salted_password

    broker, _, _ = secure_broker(
        tmp_path_factory.mktemp("scram-acl"),
        **{"authorizer.class.name": "shoal", "super.users": "User:admin"},
    )
    salt = b"0123456789abcdef"
    upsert = AlterUserScramCredentialsRequest(
        deletions=(),
        upsertions=(
            ScramCredentialUpsertion(
                name="mallory",
                mechanism=1,
                iterations=4096,
                salt=salt,
                salted_password=salted_password("SCRAM-SHA-256", "pw", salt, 4096),
            ),
        ),
    )
    describe = DescribeUserScramCredentialsRequest(users=None)
    try:
        for user, allowed in (("alice", False), ("admin", True)):
            with RawClient(broker.address("SASL_PLAINTEXT")) as c:
                assert handshake(c, "PLAIN").error_code == ErrorCode.none
                assert authenticate(c, f"\x00{user}\x00{PASSWORD}".encode()).error_code == 0
                listing = c.call(50, 0, describe, correlation_id=5)
                altered = c.call(51, 0, upsert, correlation_id=6)
                (result,) = altered.results
                if allowed:
                    assert listing.error_code == ErrorCode.none
                    assert {r.user for r in listing.results} >= {"alice", "admin"}
                    assert result.error_code == ErrorCode.none
                else:
                    assert listing.error_code == ErrorCode.cluster_authorization_failed
                    assert listing.results == ()
                    assert result.error_code == ErrorCode.cluster_authorization_failed
            if not allowed:  # alice's attempt changed nothing: no such user
                with RawClient(broker.address("SASL_PLAINTEXT")) as c:
                    assert handshake(c, "PLAIN").error_code == ErrorCode.none
                    assert_failed_then_closed(c, b"\x00mallory\x00pw")
        with RawClient(broker.address("SASL_PLAINTEXT")) as c:  # mallory exists now
            assert handshake(c, "PLAIN").error_code == ErrorCode.none
            assert authenticate(c, b"\x00mallory\x00pw").error_code == ErrorCode.none
    finally:
        broker.stop()


def test_silent_client_on_a_tls_port_is_closed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A client that opens a TLS port and never starts the handshake is cut
    after min(connections.max.idle.ms, 10 s), not asyncio's default 60 s."""
    broker, _certs, _jwks = secure_broker(
        tmp_path_factory.mktemp("silent"), **{"connections.max.idle.ms": 1000}
    )
    try:
        s = socket.create_connection(("127.0.0.1", broker.ports["SSL"]), timeout=20)
        start = time.monotonic()
        assert s.recv(1) == b""  # closed by the broker
        assert time.monotonic() - start < 15
        s.close()
        assert_serving(broker)
    finally:
        broker.stop()


def scram_login(broker: SecureBroker, user: str, password: str) -> bool:
    """A whole SCRAM-SHA-256 exchange over the raw protocol: True if accepted."""
    client = ScramClient(["SCRAM-SHA-256"], user, password)
    with RawClient(broker.address("SASL_PLAINTEXT")) as c:
        assert handshake(c, "SCRAM-SHA-256").error_code == ErrorCode.none
        resp = authenticate(c, client.get_client_first().encode())
        if resp.error_code != ErrorCode.none:
            return False
        client.set_server_first(bytes(resp.auth_bytes).decode())
        resp = authenticate(c, client.get_client_final().encode(), cid=3)
        return bool(resp.error_code == ErrorCode.none)


def test_credentials_changed_behind_the_brokers_back_apply(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Logins use the broker's in-memory credentials; a password changed or a
    user created straight in the metadata store (as `shoal users --metadata`
    does) applies within the poll interval, and the old password stops working."""
    broker, _certs, _jwks = secure_broker(tmp_path_factory.mktemp("cache"))
    try:
        assert scram_login(broker, "alice", PASSWORD)  # now cached
        store_users(broker.metadata_url, ("alice",), password="rotated-pw")
        wait_until = time.monotonic() + 10
        while scram_login(broker, "alice", PASSWORD):
            assert time.monotonic() < wait_until, "the old password still works"
            time.sleep(0.1)
        assert scram_login(broker, "alice", "rotated-pw")
        store_users(broker.metadata_url, ("carol",))  # a user never tried works at once
        assert scram_login(broker, "carol", PASSWORD)
        # A miss is remembered (no store query per guessed name) until the
        # next reload, which a user created behind the broker's back triggers.
        assert not scram_login(broker, "mallory", PASSWORD)
        store_users(broker.metadata_url, ("mallory",))
        wait_until = time.monotonic() + 10
        while not scram_login(broker, "mallory", PASSWORD):
            assert time.monotonic() < wait_until, "the new user never got in"
            time.sleep(0.1)
        assert "SCRAM credentials reloaded" in broker.log()
    finally:
        broker.stop()
