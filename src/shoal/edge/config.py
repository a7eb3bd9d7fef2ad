"""The gateway's TOML configuration: typed, validated, every error naming its key.

The reference (every key, its default and meaning) is docs/EDGE.md and the
commented example examples/edge.toml; the two and this module change together.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.config import (
    BROKER_KEYS,
    BrokerConfig,
    ConfigError,
    host_port,
    load_config,
    optional_host_port,
)

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
MIB = 1024 * 1024
COMPRESSION = ("none", "gzip", "snappy", "lz4", "zstd")
SASL = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOCAL_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# Broker keys that would describe a second listener: [local] owns the one.
LISTENER_KEYS = (
    "listen",
    "advertise",
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
)
# librdkafka properties the uplink owns: overriding them would break a guarantee.
MANAGED_KAFKA_KEYS = {
    "bootstrap.servers": "bootstrap",
    "enable.idempotence": "the idempotent producer is always on",
    "acks": "acks=all is required by the idempotent producer",
    "compression.type": "compression",
    "compression.codec": "compression",
    "message.timeout.ms": "the uplink retries until delivered",
    "delivery.timeout.ms": "the uplink retries until delivered",
    "max.in.flight.requests.per.connection": "ordering needs at most 5",
    "max.in.flight": "ordering needs at most 5",
    "transactional.id": "uplinks[].transactional_id (with exactly_once = true)",
    "transaction.timeout.ms": "uplinks[].transaction_timeout_ms",
}


class _Table:
    """A TOML table being read: typed getters that name the key on error, and
    a check that nothing unknown is left."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{path}: must be a table")
        self.data = dict(data)
        self.path = path
        self.known: set[str] = set()  # every key asked for: suggestions for typos
        # Required keys found absent: reported by done(), after unknown keys,
        # since a mistyped key (`bootstrp`) is the likelier cause.
        self.missing: list[str] = []

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str, default: Any) -> Any:
        self.known.add(name)
        return self.data.pop(name, default)

    def text(
        self, name: str, default: str, check: Callable[[str], str | None] | None = None
    ) -> str:
        present = name in self.data
        v = self._get(name, default)
        if not isinstance(v, str):
            raise ConfigError(f"{self.key(name)}: {v!r} is not a string")
        if check is not None and (complaint := check(v)):
            if not present:
                self.missing.append(f"{self.key(name)}: {complaint}")
                return v
            raise ConfigError(f"{self.key(name)}: {v!r} {complaint}")
        return v

    def integer(self, name: str, default: int, minimum: int | None = 0) -> int:
        v = self._get(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.key(name)}: {v!r} is not an integer")
        if minimum is not None and v < minimum:
            raise ConfigError(f"{self.key(name)}: {v} must be at least {minimum}")
        return v

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        v = self._get(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{self.key(name)}: {v!r} is not a number")
        if v < minimum:
            raise ConfigError(f"{self.key(name)}: {v} must be at least {minimum}")
        return float(v)

    def flag(self, name: str, default: bool) -> bool:
        v = self._get(name, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.key(name)}: {v!r} is not true or false")
        return v

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        def check(v: str) -> str | None:
            return None if v in choices else "must be one of " + ", ".join(choices)

        return self.text(name, default, check)

    def strings(self, name: str, default: list[str]) -> list[str]:
        v = self._get(name, default)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{self.key(name)}: must be a list of strings")
        return list(v)

    def table(self, name: str) -> _Table:
        return _Table(self._get(name, {}), self.key(name))

    def tables(self, name: str) -> list[_Table]:
        v = self._get(name, [])
        if not isinstance(v, list):
            raise ConfigError(f"{self.key(name)}: must be an array of tables ([[{name}]])")
        return [_Table(x, f"{self.key(name)}[{i}]") for i, x in enumerate(v)]

    def raw_table(self, name: str) -> dict[str, Any]:
        v = self._get(name, {})
        if not isinstance(v, Mapping):
            raise ConfigError(f"{self.key(name)}: must be a table")
        return dict(v)

    def has(self, name: str) -> bool:
        self.known.add(name)
        return name in self.data

    def done(self) -> None:
        if self.data:
            name = sorted(self.data)[0]
            close = difflib.get_close_matches(name, sorted(self.known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{self.key(name)}: unknown configuration key{hint}")
        if self.missing:
            raise ConfigError(self.missing[0])


def _name(v: str) -> str | None:
    return None if _NAME.match(v) else "may only contain letters, digits, '.', '_' and '-'"


def _topic(v: str) -> str | None:
    if v in (".", ".."):
        return "is reserved (not a valid Kafka topic name)"
    return None if _TOPIC.match(v) else "is not a valid Kafka topic name"


def _filter(v: str) -> str | None:
    if not v:
        return "is empty"
    levels = v.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "uses '#' other than as the whole last level"
        if "+" in level and level != "+":
            return "uses '+' other than as a whole level"
    return None


@dataclass(frozen=True, slots=True)
class LocalConfig:
    listen: str = "127.0.0.1:9092"
    advertise: str = ""
    partitions: int = 1
    linger_ms: float = 1.0
    max_batch_records: int = 5000
    cache_bytes: int = 32 * MIB
    local_retention_ms: int = 0
    compaction_interval_ms: int = 5000
    # Below this much free space in the data directory every lane acts as
    # full: block lanes hold new records, drop-oldest lanes drop their oldest.
    min_free_bytes: int = 0
    # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL: the local listener's
    # protocol; its TLS and SASL settings are broker keys in [local.broker].
    security_protocol: str = "PLAINTEXT"
    broker: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: str = "127.0.0.1:9644"
    status_interval_ms: int = 1000


@dataclass(frozen=True, slots=True)
class Route:
    filter: str
    topic: str
    key_level: int  # -1: no key
    qos: int


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int
    client_id: str
    username: str | None
    password: str | None
    protocol: str
    keepalive_s: int
    clean_start: bool
    session_expiry_s: int
    receive_maximum: int
    max_payload_bytes: int
    tls: bool
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    tls_insecure: bool
    reconnect_initial_ms: int
    reconnect_max_ms: int
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str
    topics: tuple[str, ...]
    max_body_bytes: int
    block_timeout_ms: int


@dataclass(frozen=True, slots=True)
class LaneConfig:
    name: str
    priority: int
    topics: tuple[str, ...]
    ttl_ms: int  # 0: records never expire
    disk_budget_bytes: int  # 0: unbounded
    when_full: str  # block | drop-oldest


@dataclass(frozen=True, slots=True)
class BandwidthConfig:
    cap_bytes_per_sec: int = 0  # 0: unlimited
    burst_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    name: str
    bootstrap: str
    topics: tuple[str, ...]  # local topics forwarded; ("*",) = all
    topic_map: dict[str, str]
    topic_prefix: str
    compression: str
    tls: bool
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    sasl_mechanism: str | None
    sasl_username: str | None
    sasl_password: str | None
    origin_header: str
    max_inflight_records: int
    max_inflight_bytes: int
    progress_interval_ms: int
    stall_timeout_ms: int
    connected_window_ms: int
    backoff_initial_ms: int
    backoff_max_ms: int
    replay_bytes_per_sec: int
    chunk_bytes: int
    kafka: dict[str, str]
    # Site status reports (edge/report.py): topic on the central cluster
    # ("" turns them off) and how often.
    report_topic: str = "_shoal_sites"
    report_interval_ms: int = 5000
    # Exactly-once forwarding (edge/txn.py): records and progress committed
    # centrally in one Kafka transaction.
    exactly_once: bool = False
    transactional_id: str = ""
    offsets_topic: str = "_shoal_edge_offsets"
    transaction_interval_ms: int = 100
    transaction_timeout_ms: int = 60_000

    def central_topic(self, local: str) -> str:
        return self.topic_map.get(local, self.topic_prefix + local)

    def forwards(self, local: str) -> bool:
        if self.exactly_once and self.central_topic(local) == self.offsets_topic:
            # never into our own positions, even through "*" (a topic named
            # explicitly is refused at parse time)
            return False
        return "*" in self.topics or local in self.topics

    def producer_config(self) -> dict[str, str | int | bool]:
        """librdkafka properties: the managed ones, then the passthrough."""
        conf: dict[str, str | int | bool] = {
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": self.compression,
            "message.timeout.ms": 0,  # never give up: the uplink owns retries
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": max(self.max_inflight_records * 2, 1000),
            "queue.buffering.max.kbytes": max(self.max_inflight_bytes * 2 // 1024, 1024),
            "topic.metadata.refresh.interval.ms": 10_000,
            "socket.keepalive.enable": True,
            "log.connection.close": False,
        }
        protocol = "SSL" if self.tls else "PLAINTEXT"
        if self.sasl_mechanism:
            protocol = "SASL_SSL" if self.tls else "SASL_PLAINTEXT"
            conf["sasl.mechanisms"] = self.sasl_mechanism
            if self.sasl_username is not None:
                conf["sasl.username"] = self.sasl_username
            if self.sasl_password is not None:
                conf["sasl.password"] = self.sasl_password
        conf["security.protocol"] = protocol
        if self.ca_file:
            conf["ssl.ca.location"] = self.ca_file
        if self.cert_file:
            conf["ssl.certificate.location"] = self.cert_file
        if self.key_file:
            conf["ssl.key.location"] = self.key_file
        conf.update(self.kafka)
        if self.exactly_once:
            conf["transactional.id"] = self.transactional_id
            conf["transaction.timeout.ms"] = self.transaction_timeout_ms
            # A record cannot outlive its transaction.
            conf["message.timeout.ms"] = self.transaction_timeout_ms
        return conf

    def client_config(self) -> dict[str, Any]:
        """The connection settings alone (bootstrap, TLS, SASL, socket), for
        an admin client or a consumer of the central cluster."""
        return {
            k: v
            for k, v in self.producer_config().items()
            if k.startswith(("bootstrap.", "security.", "sasl.", "ssl.", "socket."))
        }


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    site: str
    data_dir: Path
    local: LocalConfig
    admin: AdminConfig
    mqtt: MqttConfig | None
    http: HttpConfig | None
    lanes: tuple[LaneConfig, ...]
    default_lane: str
    bandwidth: BandwidthConfig
    uplinks: tuple[UplinkConfig, ...]
    source: str = "<memory>"

    def lane_of(self, topic: str) -> LaneConfig:
        for lane in self.lanes:
            if topic in lane.topics:
                return lane
        return next(lane for lane in self.lanes if lane.name == self.default_lane)

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "log"

    @property
    def state_path(self) -> Path:
        return self.data_dir / "state.db"

    @property
    def status_path(self) -> Path:
        return self.data_dir / "status.json"

    def check_files(self) -> None:
        """TLS files exist and can be read: checked at start, naming the key,
        rather than found by the uplink's producer or the MQTT client later."""
        files: list[tuple[str, str | None]] = []
        names = ("ca_file", "cert_file", "key_file")
        if self.mqtt is not None:
            files += [(f"mqtt.{n}", getattr(self.mqtt, n)) for n in names]
        for i, up in enumerate(self.uplinks):
            files += [(f"uplinks[{i}].{n}", getattr(up, n)) for n in names]
        for key, name in files:
            if not name:
                continue
            path = Path(name)
            shown = name if path.is_absolute() else f"{name} ({path.resolve()})"
            if not path.exists():
                raise ConfigError(f"{key}: {shown} does not exist")
            if not path.is_file():
                raise ConfigError(f"{key}: {shown} is not a file")
            if not os.access(path, os.R_OK):
                raise ConfigError(f"{key}: {shown} is not readable")

    def broker_config(self) -> BrokerConfig:
        """The embedded single-node broker: file object store and SQLite
        under data_dir/log, small caches, quick compaction so space comes
        back soon after data is forwarded."""
        flags: dict[str, Any] = {
            "listen": self.local.listen,
            "advertise": self.local.advertise or None,
            "data.dir": str(self.log_dir),
            "num.partitions": self.local.partitions,
            "log.cache.bytes": self.local.cache_bytes,
            "block.cache.bytes": self.local.cache_bytes,
            "log.retention.ms": -1,  # the gateway trims what it has forwarded
        }
        optional = {
            "compaction.interval.ms": self.local.compaction_interval_ms,
            "compaction.min.age.ms": min(2000, self.local.compaction_interval_ms),
            "object.delete.grace.ms": 1000,
        }
        for k, v in optional.items():
            if k in BROKER_KEYS:
                flags[k] = v
        for k, v in self.local.broker.items():
            if k not in BROKER_KEYS:
                raise ConfigError(f"local.broker.{k}: unknown broker configuration key")
            if k in LISTENER_KEYS:
                raise ConfigError(
                    f"local.broker.{k}: the local listener is local.listen, "
                    "local.advertise and local.security_protocol"
                )
            flags[k] = v
        protocol = self.local.security_protocol
        if protocol != "PLAINTEXT":
            # One listener named after its protocol (the protocol map's default).
            host = self.local.listen.rpartition(":")[0].strip("[]")
            if host in ("", "0.0.0.0", "::") and not self.local.advertise:
                raise ConfigError(
                    f"local.advertise: local.listen {self.local.listen} binds every "
                    "interface; give clients an address"
                )
            del flags["listen"], flags["advertise"]
            flags["listeners"] = f"{protocol}://{self.local.listen}"
            if self.local.advertise:
                flags["advertised.listeners"] = f"{protocol}://{self.local.advertise}"
        try:
            return load_config(None, {}, flags)
        except ConfigError as exc:
            raise ConfigError(f"local.broker: {exc}") from None


def load_edge_config(path: str | Path) -> EdgeConfig:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    base = Path(path).resolve().parent
    return parse_edge_config(doc, base, str(path))


def parse_edge_config(
    doc: Mapping[str, Any], base: Path | None = None, source: str = "<memory>"
) -> EdgeConfig:
    t = _Table(doc, "")
    site = t.text("site", "", lambda v: "is required" if not v else _name(v))
    data_dir = Path(t.text("data_dir", "./shoal-edge", lambda v: None if v else "is empty"))
    if not data_dir.is_absolute() and base is not None:
        data_dir = base / data_dir

    lt = t.table("local")
    local = LocalConfig(
        listen=lt.text("listen", "127.0.0.1:9092", host_port),
        advertise=lt.text("advertise", "", optional_host_port),
        partitions=lt.integer("partitions", 1, 1),
        linger_ms=lt.number("linger_ms", 1.0),
        max_batch_records=lt.integer("max_batch_records", 5000, 1),
        cache_bytes=lt.integer("cache_bytes", 32 * MIB, 0),
        local_retention_ms=lt.integer("local_retention_ms", 0, 0),
        compaction_interval_ms=lt.integer("compaction_interval_ms", 5000, 100),
        min_free_bytes=lt.integer("min_free_bytes", 0, 0),
        security_protocol=lt.choice("security_protocol", "PLAINTEXT", LOCAL_PROTOCOLS),
        broker=lt.raw_table("broker"),
    )
    lt.done()

    at = t.table("admin")
    admin = AdminConfig(
        listen=at.text("listen", "127.0.0.1:9644", optional_host_port),
        status_interval_ms=at.integer("status_interval_ms", 1000, 100),
    )
    at.done()

    mqtt: MqttConfig | None = None
    if t.has("mqtt"):
        mqtt = _mqtt(t.table("mqtt"), site)

    http: HttpConfig | None = None
    if t.has("http"):
        ht = t.table("http")
        http = HttpConfig(
            listen=ht.text("listen", "127.0.0.1:8080", host_port),
            topics=tuple(ht.strings("topics", [])),
            max_body_bytes=ht.integer("max_body_bytes", MIB, 1),
            block_timeout_ms=ht.integer("block_timeout_ms", 30_000, 0),
        )
        for i, name in enumerate(http.topics):
            if complaint := _topic(name):
                raise ConfigError(f"http.topics[{i}]: {name!r} {complaint}")
        ht.done()

    lanes: list[LaneConfig] = []
    seen_topics: dict[str, str] = {}
    for lt2 in t.tables("lanes"):
        name = lt2.text("name", "", lambda v: "is required" if not v else _name(v))
        topics = tuple(lt2.strings("topics", []))
        for i, topic in enumerate(topics):
            if complaint := _topic(topic):
                raise ConfigError(f"{lt2.key('topics')}[{i}]: {topic!r} {complaint}")
            if topic in seen_topics:
                raise ConfigError(
                    f"{lt2.key('topics')}[{i}]: topic {topic!r} is already in lane "
                    f"{seen_topics[topic]!r}"
                )
            seen_topics[topic] = name
        lane = LaneConfig(
            name=name,
            priority=lt2.integer("priority", 0, 0),
            topics=topics,
            ttl_ms=lt2.integer("ttl_ms", 0, 0),
            disk_budget_bytes=lt2.integer("disk_budget_bytes", 0, 0),
            when_full=lt2.choice("when_full", "block", ("block", "drop-oldest")),
        )
        lt2.done()
        if any(x.name == name for x in lanes):
            raise ConfigError(f"{lt2.key('name')}: lane {name!r} is defined twice")
        lanes.append(lane)
    explicit_default = t.has("default_lane")
    default_lane = t.text("default_lane", "default", _name)
    if not any(x.name == default_lane for x in lanes):
        if explicit_default and default_lane != "default":
            raise ConfigError(f"default_lane: no lane named {default_lane!r}")
        lowest = max((x.priority for x in lanes), default=-1) + 1
        lanes.append(LaneConfig("default", lowest, (), 0, 0, "block"))

    bt = t.table("bandwidth")
    bandwidth = BandwidthConfig(
        cap_bytes_per_sec=bt.integer("cap_bytes_per_sec", 0, 0),
        burst_bytes=bt.integer("burst_bytes", 64 * 1024, 1),
    )
    bt.done()

    uplinks: list[UplinkConfig] = []
    for ut in t.tables("uplinks"):
        up = _uplink(ut, site)
        if any(x.name == up.name for x in uplinks):
            raise ConfigError(f"{ut.key('name')}: uplink {up.name!r} is defined twice")
        if up.exactly_once and any(
            x.exactly_once and x.transactional_id == up.transactional_id for x in uplinks
        ):
            raise ConfigError(
                f"{ut.key('transactional_id')}: {up.transactional_id!r} is used by another "
                "uplink: each would fence the other"
            )
        uplinks.append(up)

    if mqtt is not None:
        for i, r in enumerate(mqtt.routes):
            if complaint := _topic(r.topic):
                raise ConfigError(f"mqtt.routes[{i}].topic: {r.topic!r} {complaint}")
    t.done()
    cfg = EdgeConfig(
        site=site,
        data_dir=data_dir,
        local=local,
        admin=admin,
        mqtt=mqtt,
        http=http,
        lanes=tuple(lanes),
        default_lane=default_lane,
        bandwidth=bandwidth,
        uplinks=tuple(uplinks),
        source=source,
    )
    cfg.broker_config()  # [local.broker] errors now, not after start-up's repairs
    return cfg


def _optional(v: str) -> str | None:
    return v or None


def _mqtt(mt: _Table, site: str) -> MqttConfig:
    routes: list[Route] = []
    for rt in mt.tables("routes"):
        routes.append(
            Route(
                filter=rt.text("filter", "", _filter),
                topic=rt.text("topic", "", lambda v: "is required" if not v else None),
                key_level=rt.integer("key_level", -1, -1),
                qos=rt.integer("qos", 1, 0),
            )
        )
        if routes[-1].qos > 1:
            raise ConfigError(f"{rt.key('qos')}: {routes[-1].qos} must be 0 or 1")
        rt.done()
    if not routes:
        raise ConfigError("mqtt.routes: at least one route ([[mqtt.routes]]) is required")
    cfg = MqttConfig(
        host=mt.text("host", "127.0.0.1", lambda v: None if v else "is empty"),
        port=mt.integer("port", 1883, 1),
        client_id=mt.text("client_id", f"shoal-edge-{site}", lambda v: None if v else "is empty"),
        username=_optional(mt.text("username", "")),
        password=_optional(mt.text("password", "")),
        protocol=mt.choice("protocol", "5", ("5", "3.1.1")),
        keepalive_s=mt.integer("keepalive_s", 30, 1),
        clean_start=mt.flag("clean_start", False),
        session_expiry_s=mt.integer("session_expiry_s", 7 * 24 * 3600, 0),
        receive_maximum=mt.integer("receive_maximum", 2000, 1),
        max_payload_bytes=mt.integer("max_payload_bytes", 1_000_000, 1),
        tls=mt.flag("tls", False),
        ca_file=_optional(mt.text("ca_file", "")),
        cert_file=_optional(mt.text("cert_file", "")),
        key_file=_optional(mt.text("key_file", "")),
        tls_insecure=mt.flag("tls_insecure", False),
        reconnect_initial_ms=mt.integer("reconnect_initial_ms", 200, 1),
        reconnect_max_ms=mt.integer("reconnect_max_ms", 30_000, 1),
        routes=tuple(routes),
    )
    if cfg.port > 65535:
        raise ConfigError(f"mqtt.port: {cfg.port} is not a TCP port")
    if cfg.receive_maximum > 65535:
        raise ConfigError(f"mqtt.receive_maximum: {cfg.receive_maximum} must be at most 65535")
    mt.done()
    return cfg


def _uplink(ut: _Table, site: str) -> UplinkConfig:
    name = ut.text("name", "central", _name)
    bootstrap = ut.text("bootstrap", "", lambda v: "is required" if not v else None)
    topics = tuple(ut.strings("topics", ["*"]))
    raw_map = ut.raw_table("topic_map")
    topic_map: dict[str, str] = {}
    for k, v in raw_map.items():
        if not isinstance(v, str) or _topic(v):
            raise ConfigError(f"{ut.key('topic_map')}.{k}: {v!r} is not a valid Kafka topic name")
        topic_map[k] = v
    kafka_raw = ut.raw_table("kafka")
    kafka: dict[str, str] = {}
    for k, v in kafka_raw.items():
        if k in MANAGED_KAFKA_KEYS:
            raise ConfigError(
                f"{ut.key('kafka')}.{k}: set by the gateway ({MANAGED_KAFKA_KEYS[k]})"
            )
        if isinstance(v, dict | list):
            raise ConfigError(f"{ut.key('kafka')}.{k}: must be a string, number or boolean")
        kafka[k] = str(v).lower() if isinstance(v, bool) else str(v)
    sasl = ut.text(
        "sasl_mechanism",
        "",
        lambda v: None if v in ("", *SASL) else "must be one of " + ", ".join(SASL),
    )
    up = UplinkConfig(
        name=name,
        bootstrap=bootstrap,
        topics=topics,
        topic_map=topic_map,
        topic_prefix=ut.text("topic_prefix", ""),
        compression=ut.choice("compression", "lz4", COMPRESSION),
        tls=ut.flag("tls", False),
        ca_file=_optional(ut.text("ca_file", "")),
        cert_file=_optional(ut.text("cert_file", "")),
        key_file=_optional(ut.text("key_file", "")),
        sasl_mechanism=sasl or None,
        sasl_username=_optional(ut.text("sasl_username", "")),
        sasl_password=_optional(ut.text("sasl_password", "")),
        origin_header=ut.text("origin_header", "shoal.origin", lambda v: None if v else "is empty"),
        max_inflight_records=ut.integer("max_inflight_records", 20_000, 1),
        max_inflight_bytes=ut.integer("max_inflight_bytes", 16 * MIB, 1024),
        progress_interval_ms=ut.integer("progress_interval_ms", 200, 10),
        stall_timeout_ms=ut.integer("stall_timeout_ms", 15_000, 100),
        connected_window_ms=ut.integer("connected_window_ms", 30_000, 100),
        backoff_initial_ms=ut.integer("backoff_initial_ms", 500, 1),
        backoff_max_ms=ut.integer("backoff_max_ms", 60_000, 1),
        replay_bytes_per_sec=ut.integer("replay_bytes_per_sec", 0, 0),
        chunk_bytes=ut.integer("chunk_bytes", 256 * 1024, 1024),
        kafka=kafka,
        report_topic=ut.text("report_topic", "_shoal_sites", lambda v: _topic(v) if v else None),
        report_interval_ms=ut.integer("report_interval_ms", 5000, 200),
        exactly_once=ut.flag("exactly_once", False),
        transactional_id=ut.text(
            "transactional_id",
            f"shoal-edge-{site}-{name}",
            lambda v: None if v.strip() else "is empty",
        ),
        offsets_topic=ut.text("offsets_topic", "_shoal_edge_offsets", _topic),
        transaction_interval_ms=ut.integer("transaction_interval_ms", 100, 10),
        transaction_timeout_ms=ut.integer("transaction_timeout_ms", 60_000, 1000),
    )
    if up.exactly_once and up.offsets_topic in (up.central_topic(t) for t in up.topics if t != "*"):
        raise ConfigError(
            f"{ut.key('offsets_topic')}: {up.offsets_topic!r} is also a forwarded topic"
        )
    if up.backoff_max_ms < up.backoff_initial_ms:
        raise ConfigError(f"{ut.key('backoff_max_ms')}: must be at least backoff_initial_ms")
    if up.sasl_mechanism and not (up.sasl_username and up.sasl_password):
        raise ConfigError(f"{ut.key('sasl_username')}: SASL needs a username and a password")
    ut.done()
    return up
