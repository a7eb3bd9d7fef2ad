"""Security checks for `shoal scorecard`: what a secured cluster must refuse.

Why: a listener that quietly accepts plain text, anonymous clients, a wrong
password or one site writing another's topics passes every functional check;
only a test that expects the refusal finds it. Each check runs against any
cluster given its addresses and credentials, and is skipped (not failed)
without them. The refusal checks first prove that the right credentials work,
so a dead address or a broken login cannot pass as "refused".
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from shoal.tools.options import LIBRDKAFKA_LOG
from shoal.tools.scorecard import CheckFailed, Unsupported

if TYPE_CHECKING:
    from shoal.tools.scorecard import _Ctx


@dataclass(frozen=True, slots=True)
class SecurityOptions:
    """Where and how to reach the secured listeners; every field optional."""

    tls_bootstrap: str | None = None
    sasl_bootstrap: str | None = None
    sasl_protocol: str = "SASL_SSL"  # or SASL_PLAINTEXT
    mechanism: str = "SCRAM-SHA-512"
    user: str | None = None
    password: str | None = None
    ca_file: str | None = None
    other_site_topic: str | None = None


# The scorecard's quiet client logger (its handler is set up there).


def _need(ctx: _Ctx, *names: str) -> SecurityOptions:
    o = ctx.security
    missing = [n for n in names if not getattr(o, n)]
    if missing:
        flags = ", ".join(
            "--password-file" if n == "password" else "--" + n.replace("_", "-") for n in missing
        )
        raise Unsupported(f"not run: needs {flags}")
    return o


def _client_conf(o: SecurityOptions, *, sasl: bool, password: str | None = None) -> dict[str, Any]:
    """Settings for a client of the SASL listener: with the login (sasl) or
    with the same transport and no login at all."""
    tls = o.sasl_protocol == "SASL_SSL"
    conf: dict[str, Any] = {"bootstrap.servers": o.sasl_bootstrap, "logger": LIBRDKAFKA_LOG}
    if tls and o.ca_file:
        conf["ssl.ca.location"] = o.ca_file
    if sasl:
        conf.update(
            {
                "security.protocol": o.sasl_protocol,
                "sasl.mechanisms": o.mechanism,
                "sasl.username": o.user,
                "sasl.password": password if password is not None else o.password,
            }
        )
    else:
        conf["security.protocol"] = "SSL" if tls else "PLAINTEXT"
    return conf


class _Errors:
    """error_cb: what the client reported, by name."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.texts: list[str] = []

    def __call__(self, err: KafkaError) -> None:
        self.names.append(err.name())
        self.texts.append(err.str())


def _metadata(conf: dict[str, Any], timeout_s: float) -> tuple[int | None, _Errors]:
    """Topics seen (None when Metadata failed) and the client's errors."""
    errors = _Errors()
    full: dict[str, Any] = {**conf, "error_cb": errors}
    admin = AdminClient(full)
    try:
        md = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        # error_cb reports (the authentication failure) wait for a poll.
        deadline = time.monotonic() + 2.0
        while not errors.names and time.monotonic() < deadline:
            admin.poll(0.1)
        errors.names.append(exc.args[0].name())
        errors.texts.append(exc.args[0].str())
        return None, errors
    return len(md.topics), errors


def _control(ctx: _Ctx, o: SecurityOptions) -> int:
    """The right login works: otherwise a refusal below would prove nothing."""
    seen, errors = _metadata(_client_conf(o, sasl=True), min(10.0, ctx.remaining()))
    if seen is None:
        raise CheckFailed(
            f"control failed: {o.user} cannot log in on {o.sasl_bootstrap} "
            f"({o.sasl_protocol} {o.mechanism}): {', '.join(errors.names) or 'no answer'}"
        )
    return seen


def check_plaintext_on_tls(ctx: _Ctx) -> str:
    """A Kafka request in plain text to the TLS listener gets no Kafka answer,
    and the same port completes a TLS handshake (so it is a TLS listener, not
    a dead one)."""
    o = _need(ctx, "tls_bootstrap")
    assert o.tls_bootstrap is not None
    host, _, port_text = o.tls_bootstrap.rpartition(":")
    port = int(port_text)
    timeout = min(5.0, ctx.remaining())
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise CheckFailed(f"cannot connect to {o.tls_bootstrap}: {exc}") from exc
    client = b"scorecard"
    request = struct.pack(">hhih", 18, 0, 7, len(client)) + client  # ApiVersions v0
    answer = b""
    try:
        sock.sendall(struct.pack(">i", len(request)) + request)
        deadline = time.monotonic() + timeout
        while len(answer) < 8 and time.monotonic() < deadline:
            chunk = sock.recv(64)
            if not chunk:
                break
            answer += chunk
    except (TimeoutError, ConnectionError) as exc:
        answer += f" ({type(exc).__name__})".encode()
    finally:
        sock.close()
    if len(answer) >= 8 and struct.unpack(">i", answer[4:8])[0] == 7:
        raise CheckFailed(f"{o.tls_bootstrap} answered a plain-text ApiVersions request")
    ctx_tls = ssl.create_default_context(cafile=o.ca_file) if o.ca_file else _unverified()
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx_tls.wrap_socket(raw, server_hostname=host) as tls,
        ):
            version = tls.version()
    except (OSError, ssl.SSLError) as exc:
        raise CheckFailed(f"plain text got no answer, but no TLS handshake either: {exc}") from exc
    got = "the connection closed" if not answer.strip() else f"{len(answer)} non-Kafka bytes"
    verified = "certificate verified" if o.ca_file else "certificate not verified (no --ca-file)"
    return f"plain-text ApiVersions: {got}; TLS handshake {version}, {verified}"


def _unverified() -> ssl.SSLContext:
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    return c


def check_anonymous(ctx: _Ctx) -> str:
    """No login on the SASL listener: no metadata."""
    o = _need(ctx, "sasl_bootstrap", "user", "password")
    _control(ctx, o)
    seen, errors = _metadata(_client_conf(o, sasl=False), min(5.0, ctx.remaining()))
    if seen is not None:
        raise CheckFailed(f"a client without a login read metadata ({seen} topics)")
    return f"control login ok; without a login: {', '.join(sorted(set(errors.names)))}"


def check_wrong_password(ctx: _Ctx) -> str:
    o = _need(ctx, "sasl_bootstrap", "user", "password")
    _control(ctx, o)
    wrong = f"{o.password}-wrong-{uuid.uuid4().hex[:6]}"
    seen, errors = _metadata(_client_conf(o, sasl=True, password=wrong), min(5.0, ctx.remaining()))
    if seen is not None:
        raise CheckFailed(f"a wrong password for {o.user} was accepted ({seen} topics)")
    if "_AUTHENTICATION" not in errors.names:
        raise CheckFailed(
            f"refused, but not as an authentication failure: {', '.join(errors.names)}"
        )
    return f"control login ok; wrong password: _AUTHENTICATION ({errors.texts[0][:80]})"


def check_cross_site(ctx: _Ctx) -> str:
    """The logged-in site writes another site's topic: TOPIC_AUTHORIZATION_FAILED."""
    o = _need(ctx, "sasl_bootstrap", "user", "password", "other_site_topic")
    _control(ctx, o)
    errors = _Errors()
    reports: list[KafkaError | None] = []
    conf = {
        **_client_conf(o, sasl=True),
        "error_cb": errors,
        "message.timeout.ms": int(min(10.0, ctx.remaining()) * 1000),
        "enable.idempotence": False,
    }
    topic = o.other_site_topic
    assert topic is not None
    p = Producer(conf)
    p.produce(
        topic,
        b"shoal scorecard: this write must be refused",
        on_delivery=lambda err, _m: reports.append(err),
    )
    p.flush(min(15.0, ctx.remaining()))
    if not reports:
        raise CheckFailed("no delivery report")
    err = reports[0]
    if err is None:
        raise CheckFailed(f"{o.user} wrote to {o.other_site_topic}")
    if err.code() != KafkaError.TOPIC_AUTHORIZATION_FAILED:
        raise CheckFailed(f"refused with {err.name()} (not TOPIC_AUTHORIZATION_FAILED)")
    return f"{o.user} -> {o.other_site_topic}: TOPIC_AUTHORIZATION_FAILED"


CHECKS: list[tuple[str, str, bool, Callable[[_Ctx], str]]] = [
    ("security.plaintext_on_tls", "plain text refused on the TLS listener", True,
     check_plaintext_on_tls),
    ("security.anonymous", "client without a login refused", True, check_anonymous),
    ("security.wrong_password", "wrong password refused", True, check_wrong_password),
    ("security.cross_site", "write to another site's topic refused", True, check_cross_site),
]  # fmt: skip
