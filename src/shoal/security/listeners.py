"""Listeners the Kafka way: `listeners`, `advertised.listeners` and
`listener.security.protocol.map`, resolved into one `Listener` per socket.

`listen`/`advertise` stay the shorthand for a single PLAINTEXT listener; they
cannot be combined with `listeners` (which one would win is not obvious).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from shoal.config import BrokerConfig, ConfigError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_ENTRY = re.compile(r"^(?P<name>[^:/]+)://(?P<host>\[[^\]]*\]|[^:]*):(?P<port>\d+)$")


@dataclass(frozen=True, slots=True)
class Listener:
    name: str  # upper case, as Kafka normalises it
    protocol: str  # one of PROTOCOLS
    host: str  # bind address ("" or 0.0.0.0: every interface)
    port: int
    advertised_host: str
    advertised_port: int

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def __str__(self) -> str:
        return f"{self.name}://{self.host}:{self.port}"


def parse_protocol_map(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        name, sep, proto = entry.partition(":")
        name, proto = name.strip().upper(), proto.strip().upper()
        if not sep or not _NAME.match(name):
            raise ConfigError(
                f"listener.security.protocol.map: {entry!r} is not LISTENER_NAME:PROTOCOL"
            )
        if proto not in PROTOCOLS:
            raise ConfigError(
                f"listener.security.protocol.map: {entry!r} names protocol {proto!r}; "
                f"known: {', '.join(PROTOCOLS)}"
            )
        if name in out:
            raise ConfigError(f"listener.security.protocol.map: {name} appears twice")
        out[name] = proto
    return out


def parse_listener_list(key: str, raw: str) -> dict[str, tuple[str, int]]:
    """NAME://HOST:PORT,... -> {NAME: (host, port)}, names upper-cased."""
    out: dict[str, tuple[str, int]] = {}
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        m = _ENTRY.match(entry)
        if m is None or not _NAME.match(m["name"]):
            raise ConfigError(f"{key}: {entry!r} is not NAME://HOST:PORT")
        port = int(m["port"])
        if not 0 < port < 65536:
            raise ConfigError(f"{key}: {entry!r} has port {port}, not 1-65535")
        name = m["name"].upper()
        if name in out:
            raise ConfigError(f"{key}: listener name {name} appears twice")
        out[name] = (m["host"].strip("[]"), port)
    return out


def resolve_listeners(config: BrokerConfig | Any) -> list[Listener]:
    """Every listener of this broker, first one first (its advertised address
    is the broker's registered one). Raises ConfigError naming the bad key."""
    protocols = parse_protocol_map(str(config["listener.security.protocol.map"]))
    raw = str(config["listeners"]).strip()
    sources = getattr(config, "sources", {})
    if not raw:
        bind_host, _, bind_port = str(config["listen"]).rpartition(":")
        adv = str(config["advertise"]) or str(config["listen"])
        adv_host, _, adv_port_text = adv.rpartition(":")
        if str(config["advertised.listeners"]).strip():
            raise ConfigError("advertised.listeners: needs listeners (or use advertise)")
        return [
            Listener(
                "PLAINTEXT", "PLAINTEXT", bind_host, int(bind_port), adv_host, int(adv_port_text)
            )
        ]
    for shorthand in ("listen", "advertise"):
        if sources.get(shorthand, "default") != "default":
            raise ConfigError(
                f"{shorthand}: set by {sources[shorthand]} together with listeners; "
                f"use one or the other"
            )
    binds = parse_listener_list("listeners", raw)
    advertised = parse_listener_list(
        "advertised.listeners", str(config["advertised.listeners"]).strip()
    )
    for name in advertised:
        if name not in binds:
            raise ConfigError(f"advertised.listeners: {name} is not one of listeners")
    seen_ports: dict[int, str] = {}
    out = []
    for name, (host, port) in binds.items():
        proto = protocols.get(name)
        if proto is None:
            raise ConfigError(
                f"listeners: {name} has no protocol in listener.security.protocol.map "
                f"(name it after a protocol or map it, e.g. {name}:SASL_SSL)"
            )
        if port in seen_ports:
            raise ConfigError(f"listeners: {name} and {seen_ports[port]} both use port {port}")
        seen_ports[port] = name
        adv_host, adv_port = advertised.get(name, (host, port))
        if name not in advertised and host in ("", "0.0.0.0", "::"):
            raise ConfigError(
                f"advertised.listeners: {name} binds {host or 'every interface'}; "
                "give clients an address to reach it"
            )
        out.append(Listener(name, proto, host, port, adv_host, adv_port))
    return out


def advertised_map(listeners: list[Listener]) -> dict[str, tuple[str, int]]:
    return {lst.name: (lst.advertised_host, lst.advertised_port) for lst in listeners}


def check_security(config: BrokerConfig) -> list[Listener]:
    """Everything about listeners, TLS and SASL that a key alone cannot check,
    at start-up: a ConfigError names the key and the problem."""
    from shoal.security.principal import PrincipalMapper
    from shoal.security.tls import TlsSettings

    listeners = resolve_listeners(config)
    PrincipalMapper.parse(str(config["ssl.principal.mapping.rules"]))
    if any(lst.tls for lst in listeners):
        TlsSettings.from_config(config).build()
    if any(lst.sasl for lst in listeners):
        mechanisms = [m.strip() for m in str(config["sasl.enabled.mechanisms"]).split(",")]
        if not any(mechanisms):
            raise ConfigError("sasl.enabled.mechanisms: empty, but a listener uses SASL")
        if "OAUTHBEARER" in mechanisms:
            from shoal.security.oauth import JwtValidator

            JwtValidator.from_config(config).load_keys()
    return listeners
