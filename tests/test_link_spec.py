"""The link's settings, patterns and redaction, without sockets."""

from __future__ import annotations

import pytest

from shoal.link.spec import (
    SpecError,
    check_name,
    matches,
    mirror_name,
    parse_settings,
    patterns,
    redact,
)


def test_settings_use_librdkafka_names() -> None:
    s = parse_settings(
        {
            "security.protocol": "sasl_ssl",
            "sasl.mechanisms": "scram-sha-512",
            "sasl.username": "mirror",
            "sasl.password": "pw",
            "ssl.ca.location": "/ca.pem",
            "ssl.endpoint.identification.algorithm": "none",
        }
    )
    assert (s.tls, s.sasl, s.mechanism, s.username, s.ca) == (
        True,
        True,
        "SCRAM-SHA-512",
        "mirror",
        "/ca.pem",
    )
    assert not s.check_hostname
    plain = parse_settings({})
    assert (plain.tls, plain.sasl, plain.check_hostname) == (False, False, True)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"fetch.max.bytes": "1"}, "unsupported source setting 'fetch.max.bytes'"),
        ({"security.protocol": "TLS"}, "bad security.protocol 'TLS'"),
        ({"sasl.mechanism": "GSSAPI"}, "unsupported sasl.mechanism 'GSSAPI'"),
        ({"security.protocol": "SASL_PLAINTEXT"}, "needs sasl.username and sasl.password"),
    ],
)
def test_bad_settings_are_named(raw: dict[str, str], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_settings(raw)


def test_secrets_are_redacted() -> None:
    out = redact({"sasl.password": "pw", "ssl.key.password": "k", "sasl.username": "u"})
    assert out == {"sasl.password": "***", "ssl.key.password": "***", "sasl.username": "u"}


def test_patterns_and_names() -> None:
    pats = patterns(" orders , events.* ,")
    assert pats == ["orders", "events.*"]
    assert matches(pats, "events.eu") and matches(pats, "orders")
    assert not matches(pats, "orders-v2")
    assert mirror_name("src.", "orders") == "src.orders"
    assert check_name("migrate-1") == "migrate-1"
    with pytest.raises(SpecError, match="bad link name 'a/b'"):
        check_name("a/b")
