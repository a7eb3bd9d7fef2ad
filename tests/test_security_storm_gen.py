"""The reconnect storm's C load generator (bench/storm_gen.c), built as
bench/security_bench.py builds it, against a real broker's SASL_SSL listener:
every site logs in (TLS checked against the CA, SCRAM-SHA-512 with the
server signature checked, Metadata after), a wrong password is counted as a
failure with the broker's error, an untrusted broker certificate too, and the
generator sends the very request bytes of the Python generator. Skipped when
cc or OpenSSL's headers are missing (security_bench then falls back to its
Python generator)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import security_bench as sb
from security_helpers import Certs, SecureBroker, make_certs

SITES = 20


@dataclass
class Storm:
    binary: Path
    broker: SecureBroker
    certs: Certs
    salted: dict[str, bytes]
    dir: Path

    def run(self, salted: dict[str, bytes], ca: Path | None) -> dict[str, object]:
        sites = sb.write_sites(self.dir / f"sites-{len(salted)}-{id(salted)}.txt", salted)
        return sb.c_storm(self.binary, self.broker.ports["SASL_SSL"], sites, 8, ca)


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary, why = sb.build_c_generator(tmp_path_factory.mktemp("storm-gen"))
    if binary is None:
        pytest.skip(why)
    return binary


@pytest.fixture(scope="module")
def storm(generator: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storm]:
    tmp = tmp_path_factory.mktemp("storm")
    certs = make_certs(tmp / "certs")
    keys = {
        "ssl.keystore.location": str(certs.server_keystore),
        "ssl.truststore.location": str(certs.ca_file),
        "sasl.enabled.mechanisms": sb.MECH,
    }
    broker = SecureBroker(tmp / "data", keys, ("PLAINTEXT", "SASL_SSL"))
    broker.start()
    try:
        salted, creds = sb.make_sites([f"plant-{i}" for i in range(SITES)])
        sb.store_sites(broker.metadata_url, creds)
        yield Storm(generator, broker, certs, salted, tmp)
    finally:
        broker.stop()


def test_every_site_logs_in_with_the_broker_certificate_checked(storm: Storm) -> None:
    res = storm.run(storm.salted, storm.certs.ca_file)
    assert res["failures"] == 0, res["first_error"]
    assert res["logins"] == SITES
    assert res["first_error"] is None
    assert isinstance(res["cpu_seconds"], float) and res["cpu_seconds"] > 0


def test_a_wrong_password_is_a_failure_with_the_brokers_error(storm: Storm) -> None:
    salted = dict(storm.salted)
    wrong = [f"plant-{i}" for i in range(0, SITES, 4)]
    for name in wrong:
        salted[name] = bytes(b ^ 1 for b in salted[name])
    res = storm.run(salted, None)
    assert (res["logins"], res["failures"]) == (SITES - len(wrong), len(wrong))
    error = str(res["first_error"])
    assert error.split(":", 1)[0] in wrong, error
    # SASL_AUTHENTICATION_FAILED (58) and the broker's own message.
    assert "SaslAuthenticate error 58: Authentication failed" in error, error


def test_an_untrusted_broker_certificate_fails_every_login(storm: Storm, tmp_path: Path) -> None:
    other = make_certs(tmp_path / "other-ca")
    res = storm.run(dict(list(storm.salted.items())[:3]), other.ca_file)
    assert (res["logins"], res["failures"]) == (0, 3)
    assert "certificate verify failed" in str(res["first_error"]), res["first_error"]


def test_an_unreadable_sites_file_is_a_clear_error(generator: Path, tmp_path: Path) -> None:
    bad = tmp_path / "sites.txt"
    bad.write_text("plant-0 not-hex\n")
    done = subprocess.run(
        [str(generator), "--port", "9", "--sites", str(bad)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "plant-0: salted password is not 64 bytes of hex" in done.stderr


def test_the_c_generator_sends_the_python_generators_requests(generator: Path) -> None:
    out = subprocess.run(
        [str(generator), "--dump-frames"], capture_output=True, text=True, check=True
    ).stdout.split()
    first = b"n,,n=plant-0,r=abcdefghijklmnopqrstuvwx"
    assert out == [
        sb._HANDSHAKE.hex(),
        sb._METADATA.hex(),
        sb._authenticate_frame(2, first).hex(),
    ]
