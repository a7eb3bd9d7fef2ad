"""What a link is, sans-IO: its source client settings, topic and group
patterns, mirror topic names, and how secrets are hidden."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

#: Source client settings a link understands (librdkafka's names, so the
#: same -X flags work for `shoal link` and every other tool).
SETTINGS = {
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
}
PROTOCOLS = {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}
MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}
_SECRET = re.compile(r"password|secret", re.IGNORECASE)
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class SpecError(ValueError):
    """A link setting that cannot work; the message names the bad value."""


@dataclass(frozen=True, slots=True)
class SourceSettings:
    security_protocol: str = "PLAINTEXT"
    mechanism: str = "PLAIN"
    username: str = ""
    password: str = ""
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    key_password: str | None = None
    check_hostname: bool = True

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise SpecError(f"bad link name {name!r}: use 1-200 of A-Z a-z 0-9 . _ -")
    return name


def parse_settings(raw: dict[str, str]) -> SourceSettings:
    """Check the -X settings of a source; unknown keys are refused, by name."""
    for key in raw:
        if key not in SETTINGS:
            raise SpecError(
                f"unsupported source setting {key!r} (supported: {', '.join(sorted(SETTINGS))})"
            )
    proto = raw.get("security.protocol", "PLAINTEXT").upper()
    if proto not in PROTOCOLS:
        raise SpecError(f"bad security.protocol {raw['security.protocol']!r}")
    mech = raw.get("sasl.mechanism", raw.get("sasl.mechanisms", "PLAIN")).upper()
    if mech not in MECHANISMS:
        raise SpecError(f"unsupported sasl.mechanism {mech!r} (use PLAIN or SCRAM-SHA-256/512)")
    if proto.startswith("SASL_") and not raw.get("sasl.username"):
        raise SpecError(f"security.protocol {proto} needs sasl.username and sasl.password")
    algo = raw.get("ssl.endpoint.identification.algorithm", "https").lower()
    return SourceSettings(
        proto,
        mech,
        raw.get("sasl.username", ""),
        raw.get("sasl.password", ""),
        raw.get("ssl.ca.location"),
        raw.get("ssl.certificate.location"),
        raw.get("ssl.key.location"),
        raw.get("ssl.key.password"),
        algo not in ("none", ""),
    )


def redact(settings: dict[str, str]) -> dict[str, str]:
    """Settings fit to print or log: every password or secret replaced."""
    return {k: ("***" if _SECRET.search(k) else v) for k, v in settings.items()}


def patterns(text: str) -> list[str]:
    """Comma-separated glob patterns (`orders,events.*`); empty means none."""
    return [p.strip() for p in text.split(",") if p.strip()]


def matches(pats: list[str], name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in pats)


def mirror_name(prefix: str, source_topic: str) -> str:
    return f"{prefix}{source_topic}"


def check_patterns(text: str, what: str) -> str:
    if not patterns(text):
        raise SpecError(f"{what}: expected comma-separated patterns, got {text!r}")
    return text
