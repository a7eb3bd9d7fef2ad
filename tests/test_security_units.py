"""Units of shoal.security: principal mapping (Kafka's documented examples and
its own test cases), listener parsing, SCRAM credentials, SASL mechanisms
against real client implementations (scramp's client), JWT validation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import trustme
from cryptography import x509
from scramp import ScramClient

from shoal.config import ConfigError, load_config
from shoal.security.listeners import resolve_listeners
from shoal.security.oauth import JwtValidator
from shoal.security.principal import NoMatchingRule, PrincipalMapper
from shoal.security.sasl import AuthenticationFailed, OAuthBearer, Plain, SaslSession, Scram
from shoal.security.scram import (
    CredentialError,
    ScramCredential,
    from_salted_password,
    make_credential,
    salted_password,
)
from shoal.security.tls import TlsSettings

# -- ssl.principal.mapping.rules ------------------------------------------------

DOC_RULES = (
    "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/,"
    "RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L,"
    "RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L,"
    "DEFAULT"
)


def test_kafka_documentation_example() -> None:
    """Kafka's security docs: these rules map the two DNs as shown there."""
    m = PrincipalMapper.parse(DOC_RULES)
    dn1 = "CN=serviceuser,OU=ServiceUsers,O=Unknown,L=Unknown,ST=Unknown,C=Unknown"
    assert m.name(dn1) == "serviceuser"
    dn2 = "CN=adminUser,OU=Admin,O=Unknown,L=Unknown,ST=Unknown,C=Unknown"
    assert m.name(dn2) == "adminuser@admin"


def test_kafka_mapper_cases() -> None:
    m = PrincipalMapper.parse(
        ", ".join(
            [
                "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/L",
                "RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/L",
                "RULE:^cn=(.*?),ou=(.*?),dc=(.*?),dc=(.*?)$/$1@$2/U",
                "RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/U",
                "DEFAULT",
            ]
        )
    )
    assert m.name("CN=Duke,OU=ServiceUsers,O=Org,C=US") == "duke"
    assert m.name("CN=Duke,OU=SME,O=mycp,L=Fulton,ST=MD,C=US") == "duke@sme"
    assert m.name("cn=duke,ou=sme,dc=mycp,dc=com") == "DUKE@SME"
    assert m.name("cN=duke,OU=JavaSoft,O=Sun Microsystems") == "DUKE"
    assert m.name("OU=JavaSoft,O=Sun Microsystems,C=US") == "OU=JavaSoft,O=Sun Microsystems,C=US"


def test_comma_inside_a_name() -> None:
    m = PrincipalMapper.parse(r"RULE:^CN=((\\, *|\w)+)(,.*|$)/$1/,DEFAULT")
    assert m.name(r"CN=Tkac\, Adam,OU=ITZ,DC=geodis,DC=cz") == r"Tkac\, Adam"


@pytest.mark.parametrize(
    "rules",
    [
        "DEFAULT",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/L, DEFAULT",
        "RULE:^CN=(.*?),OU=(.*?),O=(.*?),L=(.*?),ST=(.*?),C=(.*?)$/$1@$2/",
        "RULE:^.*[Cc][Nn]=([a-zA-Z0-9.]*).*$/$1/L",
        "RULE:^cn=(.?),ou=(.?),dc=(.?),dc=(.?)$/$1@$2/U",
        "RULE:^CN=([^,ADEFLTU,]+)(,.*|$)/$1/",
        "RULE:^CN=([^,DEFAULT,]+)(,.*|$)/$1/",
    ],
)
def test_valid_rules(rules: str) -> None:
    assert PrincipalMapper.parse(rules).rules


@pytest.mark.parametrize(
    "rules",
    [
        "default",
        "DEFAUL",
        "DEFAULT/L",
        "DEFAULT/U",
        "RULE:CN=(.*?),OU=ServiceUsers.*/$1",
        "rule:^CN=(.*?),OU=ServiceUsers.*$/$1/",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/$1/L/U",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/L",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/U",
        "RULE:^CN=(.*?),OU=ServiceUsers.*$/LU",
    ],
)
def test_invalid_rules(rules: str) -> None:
    with pytest.raises(ConfigError, match=r"ssl\.principal\.mapping\.rules"):
        PrincipalMapper.parse(rules)


@pytest.mark.parametrize(
    ("text", "count"),
    [("", 0), (",   , , ,      , , ,   ", 0), (",,RULE://,,,DEFAULT,,", 2)],
)
def test_empty_rules_are_skipped(text: str, count: int) -> None:
    assert len(PrincipalMapper.parse(text).rules) == count


def test_no_rule_matches() -> None:
    m = PrincipalMapper.parse("RULE:^CN=(.*?),OU=sites$/$1/")
    assert m.name("CN=plant-7,OU=sites") == "plant-7"
    with pytest.raises(NoMatchingRule):
        m.name("CN=plant-7,OU=other")


def test_backreference_beyond_groups_is_literal() -> None:
    m = PrincipalMapper.parse("RULE:^CN=(.*)$/$1-$2/")
    assert m.name("CN=x") == "x-$2"


# -- listeners --------------------------------------------------------------------


def _config(**keys: Any) -> Any:
    return load_config(None, {}, None) if not keys else load_config(None, {}, keys)


def test_listen_shorthand_is_one_plaintext_listener() -> None:
    (lst,) = resolve_listeners(load_config(None, {}, {"listen": "0.0.0.0:9000"}))
    assert (lst.name, lst.protocol, lst.host, lst.port) == (
        "PLAINTEXT",
        "PLAINTEXT",
        "0.0.0.0",
        9000,
    )
    assert (lst.advertised_host, lst.advertised_port) == ("0.0.0.0", 9000)


def test_several_named_listeners(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'listeners = "local://127.0.0.1:9092,PUBLIC://0.0.0.0:9093"\n'
        'advertised.listeners = "PUBLIC://broker1.example.com:19093"\n'
        'listener.security.protocol.map = "LOCAL:PLAINTEXT,PUBLIC:SASL_SSL"\n'
    )
    first, public = resolve_listeners(load_config(cfg, {}, None))
    assert (first.name, first.protocol, first.advertised_host) == (
        "LOCAL",
        "PLAINTEXT",
        "127.0.0.1",
    )
    assert (public.name, public.protocol, public.sasl, public.tls) == (
        "PUBLIC",
        "SASL_SSL",
        True,
        True,
    )
    assert (public.advertised_host, public.advertised_port) == ("broker1.example.com", 19093)


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        ({"listeners": "PLAINTEXT://127.0.0.1"}, "is not NAME://HOST:PORT"),
        ({"listeners": "PLAINTEXT://a:1,PLAINTEXT://b:2"}, "appears twice"),
        ({"listeners": "PLAINTEXT://127.0.0.1:0"}, "not 1-65535"),
        ({"listeners": "OTHER://127.0.0.1:9092"}, "no protocol"),
        ({"listeners": "PLAINTEXT://a:9092,SSL://b:9092"}, "both use port 9092"),
        ({"listeners": "PLAINTEXT://0.0.0.0:9092"}, "give clients an address"),
        (
            {"listeners": "PLAINTEXT://a:9092", "advertised.listeners": "SSL://b:1"},
            "not one of listeners",
        ),
        ({"listener.security.protocol.map": "X:TLS"}, "names protocol 'TLS'"),
        ({"listener.security.protocol.map": "X"}, "LISTENER_NAME:PROTOCOL"),
        ({"advertised.listeners": "PLAINTEXT://a:1"}, "needs listeners"),
    ],
)
def test_bad_listeners(tmp_path: Path, keys: dict[str, str], error: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("".join(f'"{k}" = "{v}"\n' for k, v in keys.items()))
    with pytest.raises(ConfigError, match=error):
        resolve_listeners(load_config(cfg, {}, None))


def test_listen_flag_with_listeners_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('listeners = "PLAINTEXT://127.0.0.1:9092"\n')
    with pytest.raises(ConfigError, match="listen: set by flag together with listeners"):
        resolve_listeners(load_config(cfg, {}, {"listen": "127.0.0.1:9000"}))


# -- secrets -----------------------------------------------------------------------


def test_secret_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PW", "from-the-env")
    secret = tmp_path / "s"
    secret.write_text("from-a-file\n")
    config = load_config(
        None,
        {"SHOAL_S3_SECRET_ACCESS_KEY": f"file:{secret}", "SHOAL_SSL_KEY_PASSWORD": "env:PW"},
        None,
    )
    assert config["s3.secret.access.key"] == "from-a-file"
    assert config["ssl.key.password"] == "from-the-env"
    with pytest.raises(ConfigError, match="variable 'PW_NOT_SET_ANYWHERE' from"):
        load_config(None, {"SHOAL_SSL_KEY_PASSWORD": "env:PW_NOT_SET_ANYWHERE"}, None)
    with pytest.raises(ConfigError, match="cannot read secret file"):
        load_config(None, {"SHOAL_SSL_KEY_PASSWORD": f"file:{tmp_path / 'nope'}"}, None)


# -- SCRAM credentials ---------------------------------------------------------------


def test_credential_bounds() -> None:
    with pytest.raises(CredentialError, match="iterations 100"):
        make_credential("SCRAM-SHA-256", "pw", 100)
    with pytest.raises(CredentialError, match="unknown SCRAM mechanism"):
        make_credential("SCRAM-SHA-1", "pw")
    with pytest.raises(CredentialError, match="salted password of 3 bytes"):
        from_salted_password("SCRAM-SHA-512", b"salt", b"abc", 4096)
    cred = make_credential("SCRAM-SHA-512", "secret", 4096)
    assert cred.matches_password("secret")
    assert not cred.matches_password("Secret")
    # what a client sends in AlterUserScramCredentials gives the same keys
    again = from_salted_password(
        "SCRAM-SHA-512",
        cred.salt,
        salted_password("SCRAM-SHA-512", "secret", cred.salt, 4096),
        4096,
    )
    assert again == cred


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_exchange_with_scramp_client(mechanism: str) -> None:
    creds = {mechanism: make_credential(mechanism, "pw-1", 4096)}
    client = ScramClient([mechanism], "alice,=x", "pw-1")
    server = Scram(mechanism)
    first = client.get_client_first().encode()
    assert server.user_of(first) == "alice,=x"
    client.set_server_first(server.step(first, creds).decode())
    final = server.step(client.get_client_final().encode(), creds)
    client.set_server_final(final.decode())  # raises if the server signature is wrong
    assert server.principal == "User:alice,=x"


def test_scram_wrong_password_unknown_user_and_bad_nonce() -> None:
    creds = {"SCRAM-SHA-256": make_credential("SCRAM-SHA-256", "right", 4096)}
    client = ScramClient(["SCRAM-SHA-256"], "bob", "wrong")
    server = Scram("SCRAM-SHA-256")
    client.set_server_first(server.step(client.get_client_first().encode(), creds).decode())
    with pytest.raises(AuthenticationFailed) as info:
        server.step(client.get_client_final().encode(), creds)
    assert "invalid credentials" in str(info.value)
    assert server.principal is None

    with pytest.raises(AuthenticationFailed, match="SCRAM-SHA-256") as unknown:
        Scram("SCRAM-SHA-256").step(b"n,,n=nobody,r=abc", {})
    assert "unknown user" in unknown.value.reason

    good = ScramClient(["SCRAM-SHA-256"], "bob", "right")
    server = Scram("SCRAM-SHA-256")
    server_first = server.step(good.get_client_first().encode(), creds).decode()
    good.set_server_first(server_first)
    final = good.get_client_final()
    nonce = server_first.split(",")[0][2:]
    tampered = final.replace(nonce, nonce[:-1] + ("A" if nonce[-1] != "A" else "B"))
    with pytest.raises(AuthenticationFailed) as bad_nonce:
        server.step(tampered.encode(), creds)
    assert "nonce" in bad_nonce.value.reason.lower()


@pytest.mark.parametrize(
    "token",
    [b"", b"garbage", b"n,,", b"\xff\xfe", b"n,,n=bob", b"p=tls-unique,,n=bob,r=x"],
)
def test_scram_malformed_first_message(token: bytes) -> None:
    creds = {"SCRAM-SHA-256": make_credential("SCRAM-SHA-256", "pw", 4096)}
    with pytest.raises(AuthenticationFailed):
        Scram("SCRAM-SHA-256").step(token, creds)


def _scram_final(client: ScramClient, creds: dict[str, ScramCredential]) -> tuple[Scram, str]:
    server = Scram("SCRAM-SHA-256")
    client.set_server_first(server.step(client.get_client_first().encode(), creds).decode())
    return server, client.get_client_final()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f.replace("c=biws", "c=eSws"), "channel binding"),  # y,, instead of n,,
        (lambda f: f.replace("c=biws", "c=bi*s"), "base64"),
        (lambda f: f.rpartition(",p=")[0], "without p=proof"),
        (lambda f: f.rpartition(",p=")[0] + ",p=AAAA", "proof of 3 bytes"),
        (lambda f: f.rpartition(",p=")[0] + ",p=not base64!", "base64"),
        (lambda f: "r=" + f.split(",r=")[1], "c=binding"),
    ],
)
def test_scram_bad_client_final(change: Any, reason: str) -> None:
    creds = {"SCRAM-SHA-256": make_credential("SCRAM-SHA-256", "pw", 4096)}
    server, final = _scram_final(ScramClient(["SCRAM-SHA-256"], "bob", "pw"), creds)
    with pytest.raises(AuthenticationFailed) as info:
        server.step(change(final).encode(), creds)
    assert reason in info.value.reason
    assert server.principal is None


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (b"n,a=alice,n=bob,r=abc", "asked to act as 'alice'"),
        (b"n,,m=ext,n=bob,r=abc", "without n=user"),
        (b"n,,n=bob,r=", "no nonce"),
        (b"n,,n=bob,r=a\x01b", "printable ASCII"),
        (b"n,,n=b=ob,r=abc", "=2C or =3D"),
        (b"q,,n=bob,r=abc", "GS2 flag"),
    ],
)
def test_scram_bad_client_first(token: bytes, reason: str) -> None:
    creds = {"SCRAM-SHA-256": make_credential("SCRAM-SHA-256", "pw", 4096)}
    with pytest.raises(AuthenticationFailed) as info:
        Scram("SCRAM-SHA-256").step(token, creds)
    assert reason in info.value.reason


def test_scram_authzid_of_the_user_itself_and_y_flag() -> None:
    """As Kafka: an authzid equal to the user is accepted; so is GS2 flag y
    (the client could bind a channel but thinks the server cannot). The
    channel binding attribute must then carry that header."""
    cred = make_credential("SCRAM-SHA-256", "pw", 4096)
    creds = {"SCRAM-SHA-256": cred}
    for gs2 in ("n,a=bob,", "y,,"):
        server = Scram("SCRAM-SHA-256")
        bare = "n=bob,r=client-nonce"
        server_first = server.step(f"{gs2}{bare}".encode(), creds).decode()
        binding = base64.b64encode(gs2.encode()).decode()
        final = server.step(_client_final(bare, server_first, binding, "pw", cred), creds)
        assert final.startswith(b"v=")
        assert server.principal == "User:bob"


def _client_final(
    bare: str, server_first: str, binding: str, password: str, cred: ScramCredential
) -> bytes:
    """A client-final message computed here, for GS2 headers scramp's client
    does not send."""
    salted = salted_password(cred.mechanism, password, cred.salt, cred.iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    nonce = server_first.split(",")[0][2:]
    without_proof = f"c={binding},r={nonce}"
    auth = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()


def test_plain() -> None:
    creds = {"SCRAM-SHA-256": make_credential("SCRAM-SHA-256", "pw", 4096)}
    ok = Plain()
    assert ok.user_of(b"\x00carol\x00pw") == "carol"
    ok.step(b"\x00carol\x00pw", creds)
    assert ok.principal == "User:carol"
    for token, reason in [
        (b"\x00carol\x00nope", "wrong password"),
        (b"carol\x00pw", "malformed"),
        (b"admin\x00carol\x00pw", "act as"),
        (b"\x00\x00pw", "without a user"),
    ]:
        with pytest.raises(AuthenticationFailed) as info:
            Plain().step(token, creds)
        assert reason in info.value.reason
    with pytest.raises(AuthenticationFailed) as unknown:
        Plain().step(b"\x00dave\x00pw", {})
    assert "unknown user" in unknown.value.reason


# -- OAUTHBEARER -------------------------------------------------------------------------


def _keys(tmp_path: Path) -> tuple[Any, Path]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return key, path


def _token(key: Any, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "plant-7", "iss": "https://idp", "aud": "shoal", "iat": now, "exp": now + 60}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, "RS256", {"kid": "k1"})


def _bearer(token: str) -> bytes:
    return f"n,,\x01auth=Bearer {token}\x01\x01".encode()


def test_oauthbearer(tmp_path: Path) -> None:
    key, jwks = _keys(tmp_path)
    validator = JwtValidator(str(jwks), ["shoal"], "https://idp", "sub", 0)
    mech = OAuthBearer(validator)
    mech.step(_bearer(_token(key)), {})
    assert mech.principal == "User:plant-7"
    assert mech.expires_ms is not None and mech.expires_ms > time.time() * 1000

    from cryptography.hazmat.primitives.asymmetric import rsa

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token, reason in [
        (_token(key, exp=int(time.time()) - 10), "expired"),
        (_token(key, aud="other"), "audience"),
        (_token(key, iss="https://evil"), "issuer"),
        (_token(key, exp=None), "exp"),
        (_token(key, sub=None), "'sub'"),
        (_token(stranger), "Signature"),
        (jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "k" * 32, "HS256"), "algorithm"),
        ("not-a-jwt", "not a JWT"),
    ]:
        with pytest.raises(AuthenticationFailed) as info:
            OAuthBearer(validator).step(_bearer(token), {})
        assert reason.lower() in info.value.reason.lower(), info.value.reason
    for raw in [b"", b"n,,\x01auth=Basic x\x01\x01", b"\x01auth=Bearer x\x01\x01"]:
        with pytest.raises(AuthenticationFailed):
            OAuthBearer(validator).step(raw, {})


def test_oauthbearer_bad_jwks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not a usable JWKS"):
        JwtValidator(str(bad), [], "", "sub", 0).load_keys()
    cfg = load_config(None, {}, None)
    with pytest.raises(ConfigError, match="no JWKS is set"):
        JwtValidator.from_config(cfg)


# -- session rules ----------------------------------------------------------------------------


def test_session_gates_and_reauth() -> None:
    session = SaslSession(["PLAIN"], reauth_ms=50)
    assert session.allows(18) is None and session.allows(17) is None
    assert "before SASL authentication" in (session.allows(3) or "")
    assert not session.handshake("SCRAM-SHA-256", 1) and session.closing
    session = SaslSession(["PLAIN"], reauth_ms=50)
    assert session.handshake("PLAIN", 1)
    mech = session.mechanism
    assert mech is not None
    mech.principal = "User:a"
    assert session.finish(mech) == 50
    assert session.allows(3) is None
    assert "expired" in (session.allows(3, now=time.monotonic() + 1) or "")
    # re-authentication must keep the principal
    assert session.handshake("PLAIN", 1)
    other = session.mechanism
    assert other is not None
    other.principal = "User:b"
    with pytest.raises(AuthenticationFailed, match="invalid credentials"):
        session.finish(other)


# -- start-up errors: one line naming the key, no traceback --------------------------


def _serve(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """`shoal serve` with tmp_path/c.toml, expected to stop at once."""
    cmd = [sys.executable, "-m", "shoal", "serve", "--data-dir", str(tmp_path / "d")]
    return subprocess.run(
        [*cmd, "--config", str(tmp_path / "c.toml"), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("keys", "flags", "error"),
    [
        (
            {"listeners": "SSL://127.0.0.1:19093", "ssl.keystore.location": "/nonexistent.pem"},
            [],
            "ssl.keystore.location: no file '/nonexistent.pem'",
        ),
        ({"listeners": "SSL://127.0.0.1:19093"}, [], "a TLS listener needs a certificate"),
        (
            {"listeners": "PLAINTEXT://127.0.0.1:19092"},
            ["--listen", "127.0.0.1:19094"],
            "listen: set by flag together with listeners",
        ),
        (
            {
                "listeners": "SASL_PLAINTEXT://127.0.0.1:19092",
                "sasl.enabled.mechanisms": "OAUTHBEARER",
            },
            [],
            "sasl.oauthbearer.jwks.endpoint.url: OAUTHBEARER is enabled but no JWKS is set",
        ),
        ({"sasl.enabled.mechanisms": "GSSAPI"}, [], "has mechanism 'GSSAPI'"),
    ],
)
def test_serve_refuses_bad_security_config(
    tmp_path: Path, keys: dict[str, str], flags: list[str], error: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("".join(f'"{k}" = "{v}"\n' for k, v in keys.items()))
    done = _serve(tmp_path, *flags)
    assert done.returncode != 0
    assert error in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_port_in_use_names_the_listener(tmp_path: Path) -> None:
    import socket

    from harness import free_port

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cfg = tmp_path / "c.toml"
        cfg.write_text(
            f'listeners = "PLAINTEXT://127.0.0.1:{free_port()},OTHER://127.0.0.1:{busy}"\n'
            'listener.security.protocol.map = "PLAINTEXT:PLAINTEXT,OTHER:PLAINTEXT"\n'
        )
        done = _serve(tmp_path)
    assert done.returncode == 1
    assert f"cannot listen on OTHER://127.0.0.1:{busy}: " in done.stderr
    assert "already in use" in done.stderr.lower()
    assert "Traceback" not in done.stderr


def test_credential_cache_remembers_misses_until_a_reload() -> None:
    from shoal.security import credentials as cc
    from shoal.security.scram import make_credential

    cache = cc.CredentialCache()
    assert cache.get("ghost") is None  # the store must be asked
    cache.put("ghost", {})
    assert cache.get("ghost") == {}  # known not to exist: no second query
    cred = {"SCRAM-SHA-256": make_credential("SCRAM-SHA-256", "pw", 4096)}
    cache.replace({"ghost": cred}, 7)
    assert cache.get("ghost") == cred and cache.version == 7
    for i in range(cc.MAX_UNKNOWN + 1):  # bounded: the set starts over when full
        cache.put(f"guess-{i}", {})
    assert cache.get("guess-0") is None and cache.get(f"guess-{cc.MAX_UNKNOWN}") == {}


# -- TLS: the keystore's chain, completed once from the trust store ---------------


def _tls_settings(keystore: Path, truststore: Path | None) -> TlsSettings:
    return TlsSettings.from_config(
        {
            "ssl.enabled.protocols": "TLSv1.2,TLSv1.3",
            "ssl.keystore.location": str(keystore),
            "ssl.keystore.certificate.chain": "",
            "ssl.keystore.key": "",
            "ssl.key.password": "",
            "ssl.truststore.location": str(truststore or ""),
            "ssl.client.auth": "none",
            "ssl.cipher.suites": "",
            "ssl.reload.check.interval.ms": 1000,
        }
    )


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """A TLS handshake in memory; raises ssl.SSLError if the client refuses."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(10):
        for i, side in enumerate((c, s)):
            if not done[i]:
                try:
                    side.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done):
            return
    raise AssertionError("handshake did not finish")


def test_keystore_chain_completed_from_the_truststore(tmp_path: Path) -> None:
    """A keystore with the certificate alone gets its issuers from the trust
    store, once (instead of OpenSSL building the chain on every handshake);
    a client that trusts only the root still verifies the broker."""
    root = trustme.CA()
    middle = root.create_child_ca()
    leaf = middle.issue_cert("localhost")
    alone = tmp_path / "alone.pem"
    alone.write_bytes(leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes())
    trust = tmp_path / "trust.pem"
    trust.write_bytes(middle.cert_pem.bytes() + root.cert_pem.bytes())
    settings = _tls_settings(alone, trust)
    chain = settings.completed_chain()
    assert chain is not None
    subjects = [c.subject for c in x509.load_pem_x509_certificates(chain.encode())]
    certs = [leaf.cert_chain_pems[0], middle.cert_pem, root.cert_pem]
    assert subjects == [x509.load_pem_x509_certificate(p.bytes()).subject for p in certs]
    client = ssl.create_default_context(cadata=root.cert_pem.bytes().decode())
    _handshake(settings.build(), client)  # the completed chain loads with its key, in order

    # a keystore with its chain is used as is; so is one whose issuer is not trusted
    full = tmp_path / "full.pem"
    full.write_bytes(
        leaf.private_key_pem.bytes() + b"".join(p.bytes() for p in leaf.cert_chain_pems)
    )
    assert _tls_settings(full, trust).completed_chain() is None
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    assert _tls_settings(alone, other).completed_chain() is None
    assert _tls_settings(alone, None).completed_chain() is None
    with pytest.raises(ssl.SSLError):  # the middle CA is not sent: the client refuses
        _handshake(_tls_settings(alone, other).build(), client)


def test_keystore_rewritten_between_its_reads_is_a_config_error(tmp_path: Path) -> None:
    """The chain is completed from one read of the keystore and loaded with
    the key from another: if a rotation lands in between, the two do not
    match, and that is the ConfigError that keeps the old context (not an
    ssl.SSLError out of the rebuild)."""
    root = trustme.CA()
    leaf = root.create_child_ca().issue_cert("localhost")
    keystore = tmp_path / "alone.pem"
    keystore.write_bytes(leaf.private_key_pem.bytes() + leaf.cert_chain_pems[0].bytes())
    rotated = root.issue_cert("localhost")  # another key: what the next read finds

    class Rewritten(TlsSettings):
        def completed_chain(self) -> str | None:
            return rotated.cert_chain_pems[0].bytes().decode() + root.cert_pem.bytes().decode()

    settings = _tls_settings(keystore, None)
    moved = Rewritten(**{f: getattr(settings, f) for f in TlsSettings.__slots__})
    with pytest.raises(ConfigError, match=r"ssl\.keystore\.location: cannot load"):
        moved.build()
    settings.build()  # the keystore itself loads
