"""Monthly cost of a workload under shared-nothing Kafka, tiered Kafka and Shoal.

The model is plain arithmetic over a workload profile and a price sheet, so every
number it prints can be recomputed by hand (docs/COST.md gives the formulas). It
does no I/O except reading TOML. Three architectures:

- ``shared_nothing``: Kafka, replication factor RF across zones, all data on EBS.
- ``tiered``: the same with tiered storage: an RF-replicated local hot set on EBS
  and one copy of the full retention in S3.
- ``shared_storage``: Shoal: stateless brokers, data in S3 (WAL objects then
  compacted objects), metadata in PostgreSQL.

Four scenarios, each a full monthly bill: ``steady`` (no events),
``reconnect_burst`` (the outage pattern: sites go dark and replay their backlog),
``replay`` (consumers re-read history) and ``failover`` (brokers are lost).
"""

from __future__ import annotations

import math
import tomllib
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

MONTH_S = 30 * 86_400
"""Seconds in the model's month (30 days): every monthly figure uses it."""
MONTH_H = MONTH_S / 3600
GB = 1e9
MB = 1e6

ARCHITECTURES = ("shared_nothing", "tiered", "shared_storage")
ARCHITECTURE_LABELS = {
    "shared_nothing": "Kafka RF=3",
    "tiered": "Kafka tiered",
    "shared_storage": "Shoal (shared)",
}
SCENARIOS = ("steady", "reconnect_burst", "replay", "failover")
CATEGORIES = ("compute", "storage", "network", "requests")

# Every result carries the same lines in this order, so tables line up and a zero
# says "this architecture does not pay for it" rather than "not modelled".
LINE_ITEMS: tuple[tuple[str, str, str], ...] = (
    ("compute", "brokers", "instance-hours"),
    ("compute", "elastic_brokers", "instance-hours"),
    ("compute", "metadata", "instance-hours"),
    ("storage", "broker_disk", "GB-month"),
    ("storage", "object_storage", "GB-month"),
    ("storage", "metadata_storage", "GB-month"),
    ("network", "producer_ingress", "GB"),
    ("network", "consumer_egress", "GB"),
    ("network", "replication", "GB"),
    ("network", "cross_zone", "GB"),
    ("network", "private_link", "GB"),
    ("network", "private_link_endpoints", "endpoint-AZ-hours"),
    ("network", "internet_egress", "GB"),
    ("network", "cross_region", "GB"),
    ("requests", "object_put", "requests"),
    ("requests", "object_get", "requests"),
)


class CostInputError(ValueError):
    """A profile or price value the model cannot use; ``key`` names it (``a.b``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class ProfileError(CostInputError):
    """A bad key or value in a workload profile."""


class PriceError(CostInputError):
    """A bad key or value in a price sheet or a price override."""


def _f(
    default: Any,
    doc: str,
    *,
    lo: float | None = 0.0,
    hi: float | None = None,
    gt: float | None = None,
) -> Any:
    """A profile field with its documentation and bounds (``lo``/``hi`` inclusive)."""
    return field(default=default, metadata={"doc": doc, "lo": lo, "hi": hi, "gt": gt})


# --- profile --------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """What the fleet sends and how long it is kept."""

    sites: int = _f(1000, "edge sites")
    devices_per_site: int = _f(50, "devices per site")
    messages_per_device_per_s: float = _f(1.0, "messages per second per device")
    message_bytes: float = _f(200.0, "payload bytes per message, uncompressed")
    record_overhead_bytes: float = _f(
        0.0, "bytes added per record on the wire and on disk: key, headers, batch share"
    )
    compression_ratio: float = _f(1.0, "uncompressed size / compressed size", lo=None, gt=0.0)
    retention_days: float = _f(7.0, "days every record is kept")
    consumer_fanout: int = _f(1, "consumer groups that read every record")


@dataclass(frozen=True)
class Outage:
    """How often sites lose their uplink and how fast they replay afterwards."""

    per_month: float = _f(1.0, "outages per month")
    hours: float = _f(4.0, "length of one outage in hours")
    site_share: float = _f(1.0, "share of sites offline together", hi=1.0)
    replay_rate_multiple: float = _f(
        4.0, "a reconnected site sends at this multiple of its live rate until caught up"
    )


@dataclass(frozen=True)
class Replay:
    """Consumers re-reading history (catch-up reads, reprocessing)."""

    per_month: float = _f(1.0, "history replays per month")
    history_hours: float = _f(24.0, "hours of history each replay reads")
    consumer_groups: int = _f(1, "consumer groups that replay together")
    read_mb_s: float = _f(50.0, "read speed of one replaying group, MB/s", lo=None, gt=0.0)


@dataclass(frozen=True)
class Failover:
    """Broker losses that need their data rebuilt (instance and volume gone)."""

    broker_losses_per_month: float = _f(1.0, "brokers lost per month")
    rebuild_mb_s: float = _f(
        100.0, "re-replication throttle in MB/s (only for the recovery time note)", lo=None, gt=0.0
    )


@dataclass(frozen=True)
class Network:
    """Zones and the paths bytes take in and out of the region."""

    azs: int = _f(3, "availability zones the cluster spans", lo=1)
    producer_cross_zone_share: float | None = _f(
        None,
        "share of producer bytes sent to a leader in another zone; default (azs-1)/azs",
        hi=1.0,
    )
    consumer_cross_zone_share: float | None = _f(
        None,
        "share of consumer bytes read from a leader in another zone; default (azs-1)/azs",
        hi=1.0,
    )
    cross_region_copies: int = _f(0, "full copies of the stream sent to other regions")
    internet_consumer_groups: int = _f(0, "consumer groups (of the fan-out) outside AWS")
    private_link_producer_share: float = _f(
        0.0, "share of producer bytes through PrivateLink", hi=1.0
    )
    private_link_consumer_share: float = _f(
        0.0, "share of consumer bytes through PrivateLink", hi=1.0
    )
    private_link_endpoints: int = _f(0, "interface endpoints, each billed in every zone")


@dataclass(frozen=True)
class Brokers:
    """Broker machines, the same for every architecture so only the design differs."""

    instance: str = _f("m7g.xlarge", "EC2 instance type (a key of the price sheet's instance)")
    throughput_mb_s: float = _f(
        100.0, "usable MB/s per broker per direction (network in, network out)", lo=None, gt=0.0
    )
    min_brokers: int = _f(3, "smallest cluster", lo=1)


@dataclass(frozen=True)
class Kafka:
    """Shared-nothing Kafka settings (also used by the tiered architecture)."""

    replication_factor: int = _f(3, "replicas of every partition, one per zone if possible", lo=1)
    follower_fetching: bool = _f(False, "consumers read from an in-zone replica (KIP-392)")
    controllers: int = _f(3, "KRaft controller nodes")
    controller_instance: str = _f("m7g.large", "EC2 instance type of a controller")
    disk_max_fill: float = _f(
        0.7, "EBS is provisioned so data fills this share", lo=None, gt=0.0, hi=1.0
    )


@dataclass(frozen=True)
class Tiered:
    """Kafka tiered storage (KIP-405) settings."""

    local_retention_hours: float = _f(12.0, "hours kept on broker disks (local.retention.ms)")
    segment_mb: float = _f(512.0, "segment size uploaded to S3 (segment.bytes)", lo=None, gt=0.0)
    puts_per_segment: float = _f(
        6.0, "PUTs per uploaded segment: data, indexes, snapshots, multipart parts"
    )
    fetch_chunk_mb: float = _f(4.0, "bytes per GET when reading remote segments", lo=None, gt=0.0)


@dataclass(frozen=True)
class Shoal:
    """Shoal (shared storage) settings."""

    wal_linger_ms: float = _f(
        250.0, "a WAL object is uploaded at least this often (wal.linger.ms)", lo=None, gt=0.0
    )
    wal_max_mb: float = _f(8.0, "or when it reaches this size (wal.max.bytes)", lo=None, gt=0.0)
    compaction_rewrites: float = _f(1.0, "times compaction rewrites each byte")
    compaction_put_mb: float = _f(
        16.0, "bytes per compaction PUT (multipart part size)", lo=None, gt=0.0
    )
    read_block_mb: float = _f(4.0, "bytes per range GET of a catch-up read", lo=None, gt=0.0)
    zone_local_reads: bool = _f(
        False, "consumers fetch from a broker in their own zone, which reads S3"
    )
    metadata_db_instance: str = _f("db.m7g.large", "RDS PostgreSQL instance class")
    metadata_db_multi_az: bool = _f(True, "RDS Multi-AZ (a standby, billed twice)")
    metadata_db_storage_gb: float = _f(20.0, "RDS storage, GB")
    elastic_overhead_minutes: float = _f(
        15.0, "minutes extra brokers are billed per event beyond the catch-up itself"
    )


SECTIONS: dict[str, type[Any]] = {
    "workload": Workload,
    "outage": Outage,
    "replay": Replay,
    "failover": Failover,
    "network": Network,
    "brokers": Brokers,
    "kafka": Kafka,
    "tiered": Tiered,
    "shoal": Shoal,
}


@dataclass(frozen=True)
class Profile:
    """A workload profile: every section has defaults, ``prices`` holds overrides."""

    workload: Workload = field(default_factory=Workload)
    outage: Outage = field(default_factory=Outage)
    replay: Replay = field(default_factory=Replay)
    failover: Failover = field(default_factory=Failover)
    network: Network = field(default_factory=Network)
    brokers: Brokers = field(default_factory=Brokers)
    kafka: Kafka = field(default_factory=Kafka)
    tiered: Tiered = field(default_factory=Tiered)
    shoal: Shoal = field(default_factory=Shoal)
    prices: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain data (for JSON output)."""
        return asdict(self)


def _read_toml(
    source: Path | str | Mapping[str, Any], error: type[CostInputError], what: str
) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    try:
        with Path(source).open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise error(what, f"cannot read {source}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(what, f"{source} is not valid TOML: {exc}") from exc


def _check_value(key: str, hint: Any, meta: Mapping[str, Any], value: Any) -> Any:
    """Type- and range-check one profile value; return it in the field's type."""
    if isinstance(hint, types.UnionType):
        hint = next(a for a in hint.__args__ if a is not type(None))
    if hint is bool:
        if not isinstance(value, bool):
            raise ProfileError(key, f"must be true or false, not {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ProfileError(key, f"must be a string, not {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if hint is int else "a number"
        raise ProfileError(key, f"must be {kind}, not {value!r}")
    if hint is int and not isinstance(value, int):
        raise ProfileError(key, f"must be an integer, not {value!r}")
    if not math.isfinite(value):
        raise ProfileError(key, f"must be finite, not {value!r}")
    lo, hi, gt = meta.get("lo"), meta.get("hi"), meta.get("gt")
    if lo is not None and value < lo:
        raise ProfileError(key, f"must be >= {lo:g}, not {value!r}")
    if gt is not None and value <= gt:
        raise ProfileError(key, f"must be > {gt:g}, not {value!r}")
    if hi is not None and value > hi:
        raise ProfileError(key, f"must be <= {hi:g}, not {value!r}")
    return int(value) if hint is int else float(value)


def _build_section(name: str, cls: type[Any], data: Any) -> Any:
    if not isinstance(data, Mapping):
        raise ProfileError(name, f"must be a table, not {data!r}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            raise ProfileError(f"{name}.{key}", f"unknown key (known: {', '.join(known)})")
    values = {
        key: _check_value(f"{name}.{key}", hints[key], known[key].metadata, value)
        for key, value in data.items()
    }
    return cls(**values)


def load_profile(source: Path | str | Mapping[str, Any]) -> Profile:
    """Parse and validate a profile (a TOML path or the parsed dict).

    Strict on purpose: a misspelt key silently falling back to a default would
    make a cost comparison wrong without anyone noticing.
    """
    data = _read_toml(source, ProfileError, "profile")
    sections: dict[str, Any] = {}
    prices: Mapping[str, Any] = {}
    for name, value in data.items():
        if name == "prices":
            if not isinstance(value, Mapping):
                raise ProfileError("prices", f"must be a table, not {value!r}")
            _parse_price_layer(value, "prices")  # validate now, apply later
            prices = dict(value)
        elif name in SECTIONS:
            sections[name] = _build_section(name, SECTIONS[name], value)
        else:
            known = ", ".join([*SECTIONS, "prices"])
            raise ProfileError(name, f"unknown key (known sections: {known})")
    profile = Profile(**sections, prices=prices)
    _check_profile(profile)
    return profile


def _check_profile(p: Profile) -> None:
    """Checks that span keys."""
    w, o, n = p.workload, p.outage, p.network
    if n.internet_consumer_groups > w.consumer_fanout:
        raise ProfileError(
            "network.internet_consumer_groups",
            f"{n.internet_consumer_groups} exceeds workload.consumer_fanout={w.consumer_fanout}",
        )
    if o.per_month > 0 and o.hours > 0 and o.site_share > 0 and o.replay_rate_multiple <= 1:
        raise ProfileError(
            "outage.replay_rate_multiple",
            f"must be > 1 so a site can catch up, not {o.replay_rate_multiple!r}",
        )
    if o.per_month * o.hours > MONTH_H:
        raise ProfileError("outage.hours", "outages take longer than the month")


# --- prices --------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceSource:
    """Where a price comes from, so every number in a report can be checked."""

    value: float
    unit: str
    source: str
    as_of: str


@dataclass(frozen=True)
class Prices:
    """The price sheet in effect (defaults plus overrides), USD."""

    ebs_gp3_gb_month: float
    s3_standard_gb_month: float
    s3_put_per_1000: float
    s3_get_per_1000: float
    rds_gp3_gb_month: float
    inter_az_gb_each_direction: float
    internet_ingress_gb: float
    internet_egress_gb: float
    cross_region_gb: float
    privatelink_gb: float
    privatelink_endpoint_az_hour: float
    instance: Mapping[str, float]
    db_instance: Mapping[str, float]
    sources: Mapping[str, PriceSource]
    sheet: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        """Values and their sources (for JSON output)."""
        flat = {k: getattr(self, k) for k in FLAT_PRICES}
        return {
            "sheet": dict(self.sheet),
            **flat,
            "instance": dict(self.instance),
            "db_instance": dict(self.db_instance),
            "sources": {k: asdict(v) for k, v in self.sources.items()},
        }


FLAT_PRICES = (
    "ebs_gp3_gb_month",
    "s3_standard_gb_month",
    "s3_put_per_1000",
    "s3_get_per_1000",
    "rds_gp3_gb_month",
    "inter_az_gb_each_direction",
    "internet_ingress_gb",
    "internet_egress_gb",
    "cross_region_gb",
    "privatelink_gb",
    "privatelink_endpoint_az_hour",
)
_PRICE_TABLES = ("instance", "db_instance")


def _price_entry(key: str, raw: Any) -> PriceSource:
    """A price is a bare number or a table with ``value`` (and optional source)."""
    meta: Mapping[str, Any] = {}
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"value", "unit", "source", "as_of"}
        if unknown:
            raise PriceError(f"{key}.{sorted(unknown)[0]}", "unknown key")
        if "value" not in raw:
            raise PriceError(key, "needs a value")
        meta, raw = raw, raw["value"]
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise PriceError(key, f"must be a number, not {raw!r}")
    if not math.isfinite(raw) or raw < 0:
        raise PriceError(key, f"must be a finite number >= 0, not {raw!r}")
    for text in ("unit", "source", "as_of"):
        if not isinstance(meta.get(text, ""), str):
            raise PriceError(f"{key}.{text}", "must be a string")
    return PriceSource(
        value=float(raw),
        unit=str(meta.get("unit", "")),
        source=str(meta.get("source", "override")),
        as_of=str(meta.get("as_of", "")),
    )


def _parse_price_layer(data: Mapping[str, Any], prefix: str) -> dict[str, PriceSource]:
    """Flatten one price layer to ``{"s3_put_per_1000": .., "instance.m7g.large": ..}``."""
    out: dict[str, PriceSource] = {}
    for key, raw in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if key == "sheet":
            continue
        if key in _PRICE_TABLES:
            if not isinstance(raw, Mapping):
                raise PriceError(name, f"must be a table of names to prices, not {raw!r}")
            for sub, entry in raw.items():
                out[f"{key}.{sub}"] = _price_entry(f"{name}.{sub}", entry)
        elif key in FLAT_PRICES:
            out[key] = _price_entry(name, raw)
        else:
            raise PriceError(
                name,
                f"unknown price (known: {', '.join(FLAT_PRICES)}, instance.NAME, db_instance.NAME)",
            )
    return out


def default_price_sheet() -> Mapping[str, Any]:
    """The packaged price sheet as parsed TOML."""
    text = resources.files("shoal.tools").joinpath("prices.toml").read_text("utf-8")
    return tomllib.loads(text)


def load_price_file(path: Path | str) -> Mapping[str, Any]:
    """A ``--prices`` file as parsed TOML (validated when applied)."""
    data = _read_toml(path, PriceError, "prices")
    _parse_price_layer(data, "")
    return data


def load_prices(*overrides: Mapping[str, Any]) -> Prices:
    """The packaged sheet with each override layer applied in turn (later wins)."""
    base = default_price_sheet()
    merged = _parse_price_layer(base, "")
    for layer in overrides:
        merged.update(_parse_price_layer(layer, ""))
    sheet_raw = base.get("sheet", {})
    sheet = {str(k): str(v) for k, v in sheet_raw.items()} if isinstance(sheet_raw, Mapping) else {}
    flat = {k: merged[k].value for k in FLAT_PRICES}
    tables = {
        t: {k.split(".", 1)[1]: v.value for k, v in merged.items() if k.startswith(t + ".")}
        for t in _PRICE_TABLES
    }
    return Prices(
        **flat,
        instance=tables["instance"],
        db_instance=tables["db_instance"],
        sources=merged,
        sheet=sheet,
    )


# --- results -------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One billed quantity: ``cost`` = ``quantity`` x its price(s)."""

    category: str
    item: str
    quantity: float
    unit: str
    cost: float


@dataclass(frozen=True)
class ScenarioCost:
    """The monthly bill of one architecture in one scenario."""

    architecture: str
    scenario: str
    brokers: int
    peak_brokers: int
    lines: tuple[Line, ...]
    notes: tuple[str, ...] = ()

    def category(self, name: str) -> float:
        """Sum of the lines of one category."""
        return math.fsum(line.cost for line in self.lines if line.category == name)

    def line(self, item: str) -> Line:
        """The line named ``item``."""
        return next(line for line in self.lines if line.item == item)

    @property
    def compute(self) -> float:
        return self.category("compute")

    @property
    def storage(self) -> float:
        return self.category("storage")

    @property
    def network(self) -> float:
        return self.category("network")

    @property
    def requests(self) -> float:
        return self.category("requests")

    @property
    def total(self) -> float:
        return math.fsum(line.cost for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "scenario": self.scenario,
            "brokers": self.brokers,
            "peak_brokers": self.peak_brokers,
            "totals": {**{c: self.category(c) for c in CATEGORIES}, "total": self.total},
            "lines": [asdict(line) for line in self.lines],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Volumes:
    """Workload volumes every architecture shares (bytes are compressed, on the wire)."""

    messages_per_s: float
    ingest_bytes_s: float
    consumer_bytes_s: float
    stored_bytes: float
    month_ingest_bytes: float
    peak_ingest_bytes_s: float
    catch_up_hours: float

    def to_dict(self) -> dict[str, float]:
        return {
            "messages_per_s": self.messages_per_s,
            "ingest_mb_s": self.ingest_bytes_s / MB,
            "consumer_mb_s": self.consumer_bytes_s / MB,
            "stored_gb": self.stored_bytes / GB,
            "month_ingest_gb": self.month_ingest_bytes / GB,
            "peak_ingest_mb_s": self.peak_ingest_bytes_s / MB,
            "catch_up_hours": self.catch_up_hours,
        }


@dataclass(frozen=True)
class CostReport:
    """Every architecture x scenario for one profile and price sheet."""

    profile: Profile
    prices: Prices
    volumes: Volumes
    results: tuple[ScenarioCost, ...]

    def get(self, architecture: str, scenario: str) -> ScenarioCost:
        """The result of one architecture in one scenario."""
        return next(
            r for r in self.results if r.architecture == architecture and r.scenario == scenario
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "month_seconds": MONTH_S,
            "profile": self.profile.to_dict(),
            "prices": self.prices.to_dict(),
            "volumes": self.volumes.to_dict(),
            "results": [r.to_dict() for r in self.results],
        }


# --- model ---------------------------------------------------------------------------


def cross_zone_copies(replication_factor: int, azs: int) -> float:
    """Expected follower copies of a byte that land in another zone than its leader.

    Replicas are spread round-robin over ``min(RF, azs)`` zones and the leader is
    any replica; the copies in the leader's own zone are free. RF=3 over 3 zones
    gives 2, over 2 zones 4/3, over 1 zone 0.
    """
    counts = _zone_counts(replication_factor, azs)
    return replication_factor - sum(c * c for c in counts) / replication_factor


def rebuild_cross_zone_share(replication_factor: int, azs: int) -> float:
    """Share of a lost replica's bytes re-copied from another zone (1 when RF <= azs)."""
    if replication_factor < 2:
        return 0.0
    counts = _zone_counts(replication_factor, azs)
    same = sum(c * (c - 1) for c in counts)
    return 1.0 - same / (replication_factor * (replication_factor - 1))


def _zone_counts(replication_factor: int, azs: int) -> list[int]:
    zones = max(1, min(replication_factor, azs))
    return [
        replication_factor // zones + (1 if i < replication_factor % zones else 0)
        for i in range(zones)
    ]


def brokers_needed(
    load_in: float, load_out: float, per_broker: float, minimum: int, azs: int
) -> int:
    """Brokers for the busier direction, at least ``minimum``, a multiple of ``azs``.

    The multiple keeps the same capacity in every zone, which both rack-aware
    Kafka and zone-local Shoal reads need.
    """
    need = math.ceil(max(load_in, load_out) / per_broker - 1e-9)
    n = max(need, minimum, 1)
    return math.ceil(n / azs) * azs


def _volumes(p: Profile) -> Volumes:
    w, o = p.workload, p.outage
    msgs = w.sites * w.devices_per_site * w.messages_per_device_per_s
    ingest = msgs * (w.message_bytes + w.record_overhead_bytes) / w.compression_ratio
    bursting = o.per_month > 0 and o.hours > 0 and o.site_share > 0
    peak = ingest
    if bursting:
        # Sites still online send their live rate; reconnected ones k times it.
        peak = ingest * (1 - o.site_share + o.site_share * o.replay_rate_multiple)
    catch_up = o.hours / (o.replay_rate_multiple - 1) if bursting else 0.0
    return Volumes(
        messages_per_s=msgs,
        ingest_bytes_s=ingest,
        consumer_bytes_s=ingest * w.consumer_fanout,
        stored_bytes=ingest * w.retention_days * 86_400,
        month_ingest_bytes=ingest * MONTH_S,
        peak_ingest_bytes_s=peak,
        catch_up_hours=catch_up,
    )


class _Bill:
    """Accumulates quantities and costs per line item."""

    def __init__(self) -> None:
        self.qty: dict[str, float] = {item: 0.0 for _, item, _ in LINE_ITEMS}
        self.cost: dict[str, float] = {item: 0.0 for _, item, _ in LINE_ITEMS}

    def add(self, item: str, quantity: float, cost: float) -> None:
        self.qty[item] += quantity
        self.cost[item] += cost

    def lines(self) -> tuple[Line, ...]:
        return tuple(
            Line(category=cat, item=item, quantity=self.qty[item], unit=unit, cost=self.cost[item])
            for cat, item, unit in LINE_ITEMS
        )


@dataclass(frozen=True)
class _Ctx:
    p: Profile
    prices: Prices
    v: Volumes

    @property
    def inter_az_gb(self) -> float:
        """A byte crossing zones pays on the way out and on the way in."""
        return 2 * self.prices.inter_az_gb_each_direction

    @property
    def producer_xz(self) -> float:
        share = self.p.network.producer_cross_zone_share
        azs = self.p.network.azs
        return (azs - 1) / azs if share is None else share

    @property
    def consumer_xz_default(self) -> float:
        share = self.p.network.consumer_cross_zone_share
        azs = self.p.network.azs
        return (azs - 1) / azs if share is None else share

    def replay_bytes(self) -> tuple[float, float]:
        """(bytes one group reads per replay, bytes all replays read per month)."""
        r = self.p.replay
        one = min(self.v.ingest_bytes_s * r.history_hours * 3600, self.v.stored_bytes)
        return one, one * r.consumer_groups * r.per_month

    def burst_events(self) -> float:
        o = self.p.outage
        return o.per_month if self.v.catch_up_hours > 0 else 0.0


def _common_network(ctx: _Ctx, bill: _Bill, scenario: str, consumer_xz: float) -> None:
    """Network lines whose volume does not depend on the architecture."""
    p, prices, v = ctx.p, ctx.prices, ctx.v
    n = p.network
    month_in = v.month_ingest_bytes / GB
    month_out = v.consumer_bytes_s * MONTH_S / GB
    replay_gb = ctx.replay_bytes()[1] / GB if scenario == "replay" else 0.0
    bill.add("producer_ingress", month_in, month_in * prices.internet_ingress_gb)
    # In-region, same-zone reads are free; their cross-zone part is billed below.
    bill.add("consumer_egress", month_out + replay_gb, 0.0)
    xz_gb = month_in * ctx.producer_xz + (month_out + replay_gb) * consumer_xz
    bill.add("cross_zone", xz_gb, xz_gb * ctx.inter_az_gb)
    pl_gb = month_in * n.private_link_producer_share + month_out * n.private_link_consumer_share
    bill.add("private_link", pl_gb, pl_gb * prices.privatelink_gb)
    pl_hours = n.private_link_endpoints * n.azs * MONTH_H
    bill.add("private_link_endpoints", pl_hours, pl_hours * prices.privatelink_endpoint_az_hour)
    inet_gb = month_in * n.internet_consumer_groups
    bill.add("internet_egress", inet_gb, inet_gb * prices.internet_egress_gb)
    region_gb = month_in * n.cross_region_copies
    bill.add("cross_region", region_gb, region_gb * prices.cross_region_gb)


def _instance_price(key: str, name: str, table: Mapping[str, float]) -> float:
    """The hourly price of a named machine, or an error naming the profile key."""
    if name not in table:
        raise ProfileError(key, f"{name!r} is not in the price sheet (known: {', '.join(table)})")
    return table[name]


def _kafka(ctx: _Ctx, scenario: str, tiered: bool) -> ScenarioCost:
    """Shared-nothing Kafka; with ``tiered`` the local disks keep only the hot set."""
    p, prices, v = ctx.p, ctx.prices, ctx.v
    rf, azs = p.kafka.replication_factor, p.network.azs
    cap = p.brokers.throughput_mb_s * MB
    minimum = max(p.brokers.min_brokers, rf)
    w, r = v.ingest_bytes_s, v.consumer_bytes_s
    local_bytes = v.stored_bytes
    if tiered:
        local_bytes = min(v.stored_bytes, w * p.tiered.local_retention_hours * 3600)
    notes: list[str] = []

    def size(w_: float, r_: float, extra_in: float = 0.0, extra_out: float = 0.0) -> int:
        # Leaders take producer bytes, followers fetch RF-1 copies; leaders also
        # serve consumers and followers, and (tiered) upload each segment once.
        load_in = w_ * rf + extra_in
        load_out = r_ + w_ * (rf - 1) + (w_ if tiered else 0.0) + extra_out
        return brokers_needed(load_in, load_out, cap, minimum, azs)

    base = size(w, r)
    brokers = base
    rebuild_bytes = 0.0
    remote_read_bytes = 0.0
    if scenario == "reconnect_burst" and ctx.burst_events() > 0:
        peak_w = v.peak_ingest_bytes_s
        brokers = max(base, size(peak_w, peak_w * p.workload.consumer_fanout))
        notes.append(
            f"provisioned all month for the reconnect peak of {peak_w / MB:.1f} MB/s: "
            "adding brokers means moving partitions and their data"
        )
    elif scenario == "replay" and p.replay.per_month > 0:
        one, total = ctx.replay_bytes()
        rate = p.replay.read_mb_s * MB * p.replay.consumer_groups
        remote_share = 0.0
        if tiered and one > 0:
            remote_share = max(0.0, one - local_bytes) / one
            remote_read_bytes = total * remote_share
        brokers = max(base, size(w, r, extra_in=rate * remote_share, extra_out=rate))
        notes.append(
            f"replays read {total / GB:,.0f} GB/month from "
            + ("broker disks" if not tiered else f"disks and S3 ({remote_share:.0%} remote)")
        )
    elif scenario == "failover" and p.failover.broker_losses_per_month > 0:
        per_broker = local_bytes * rf / base
        rebuild_bytes = per_broker * p.failover.broker_losses_per_month
        hours = per_broker / (p.failover.rebuild_mb_s * MB) / 3600
        notes.append(
            f"each lost broker is rebuilt by copying {per_broker / GB:,.0f} GB from its "
            f"peers (~{hours:.1f} h at {p.failover.rebuild_mb_s:g} MB/s, under-replicated)"
        )

    bill = _Bill()
    broker_price = _instance_price("brokers.instance", p.brokers.instance, prices.instance)
    ctrl_price = _instance_price(
        "kafka.controller_instance", p.kafka.controller_instance, prices.instance
    )
    bill.add("brokers", brokers * MONTH_H, brokers * MONTH_H * broker_price)
    ctrl_hours = p.kafka.controllers * MONTH_H
    bill.add("metadata", ctrl_hours, ctrl_hours * ctrl_price)

    disk_gb = local_bytes * rf / p.kafka.disk_max_fill / GB
    bill.add("broker_disk", disk_gb, disk_gb * prices.ebs_gp3_gb_month)
    if tiered:
        s3_gb = v.stored_bytes / GB
        bill.add("object_storage", s3_gb, s3_gb * prices.s3_standard_gb_month)

    consumer_xz = ctx.consumer_xz_default
    if p.kafka.follower_fetching:
        consumer_xz = max(0, azs - min(rf, azs)) / azs
    _common_network(ctx, bill, scenario, consumer_xz)
    repl_gb = v.month_ingest_bytes * cross_zone_copies(rf, azs) / GB
    repl_gb += rebuild_bytes * rebuild_cross_zone_share(rf, azs) / GB
    bill.add("replication", repl_gb, repl_gb * ctx.inter_az_gb)

    if tiered:
        puts = v.month_ingest_bytes / (p.tiered.segment_mb * MB) * p.tiered.puts_per_segment
        bill.add("object_put", puts, puts / 1000 * prices.s3_put_per_1000)
        gets = remote_read_bytes / (p.tiered.fetch_chunk_mb * MB)
        bill.add("object_get", gets, gets / 1000 * prices.s3_get_per_1000)
    return ScenarioCost(
        architecture="tiered" if tiered else "shared_nothing",
        scenario=scenario,
        brokers=brokers,
        peak_brokers=brokers,
        lines=bill.lines(),
        notes=tuple(notes),
    )


def wal_objects_per_s(
    brokers: int, ingest_bytes_s: float, linger_ms: float, max_bytes: float
) -> float:
    """WAL uploads per second: every broker flushes at least every linger, or when full."""
    return max(brokers * 1000.0 / linger_ms, ingest_bytes_s / max_bytes)


def _shoal(ctx: _Ctx, scenario: str) -> ScenarioCost:
    """Shared storage: stateless brokers, one copy in S3, metadata in PostgreSQL."""
    p, prices, v = ctx.p, ctx.prices, ctx.v
    s, azs = p.shoal, p.network.azs
    cap = p.brokers.throughput_mb_s * MB
    w, r = v.ingest_bytes_s, v.consumer_bytes_s
    cf = s.compaction_rewrites
    # With zone-local reads every other zone reads each WAL object once from S3.
    other_zones = (azs - 1) if s.zone_local_reads else 0

    def size(w_: float, r_: float, extra: float = 0.0) -> int:
        load_in = w_ + w_ * cf + w_ * other_zones + extra
        load_out = r_ + w_ + w_ * cf + extra
        return brokers_needed(load_in, load_out, cap, p.brokers.min_brokers, azs)

    base = size(w, r)
    peak = base
    elastic_hours = 0.0
    overhead_h = s.elastic_overhead_minutes / 60
    linger, wal_max = s.wal_linger_ms, s.wal_max_mb * MB
    wal_objects = wal_objects_per_s(base, w, linger, wal_max) * MONTH_S
    catch_up_gets = 0.0
    notes: list[str] = []
    if scenario == "reconnect_burst" and ctx.burst_events() > 0:
        peak_w = v.peak_ingest_bytes_s
        peak = max(base, size(peak_w, peak_w * p.workload.consumer_fanout))
        events = ctx.burst_events()
        burst_s = min(MONTH_S, events * v.catch_up_hours * 3600)
        elastic_hours = (peak - base) * events * (v.catch_up_hours + overhead_h)
        wal_objects = (
            wal_objects_per_s(base, w, linger, wal_max) * (MONTH_S - burst_s)
            + wal_objects_per_s(peak, peak_w, linger, wal_max) * burst_s
        )
        notes.append(
            f"{base} brokers all month, {peak} during each {v.catch_up_hours:.2f} h catch-up "
            f"at {peak_w / MB:.1f} MB/s (stateless brokers are added without moving data)"
        )
    elif scenario == "replay" and p.replay.per_month > 0:
        one, total = ctx.replay_bytes()
        rate = p.replay.read_mb_s * MB * p.replay.consumer_groups
        peak = max(base, size(w, r, extra=rate))
        duration_h = one / (p.replay.read_mb_s * MB) / 3600
        elastic_hours = (peak - base) * p.replay.per_month * (duration_h + overhead_h)
        catch_up_gets = total / (s.read_block_mb * MB)
        notes.append(
            f"replays read {total / GB:,.0f} GB/month from S3 in {s.read_block_mb:g} MB range reads"
        )
    elif scenario == "failover" and p.failover.broker_losses_per_month > 0:
        notes.append("a lost broker's partitions move to others in metadata: no data is copied")

    bill = _Bill()
    broker_price = _instance_price("brokers.instance", p.brokers.instance, prices.instance)
    db_price = _instance_price(
        "shoal.metadata_db_instance", s.metadata_db_instance, prices.db_instance
    )
    db_copies = 2 if s.metadata_db_multi_az else 1
    bill.add("brokers", base * MONTH_H, base * MONTH_H * broker_price)
    bill.add("elastic_brokers", elastic_hours, elastic_hours * broker_price)
    db_hours = db_copies * MONTH_H
    bill.add("metadata", db_hours, db_hours * db_price)

    s3_gb = v.stored_bytes / GB
    bill.add("object_storage", s3_gb, s3_gb * prices.s3_standard_gb_month)
    db_gb = s.metadata_db_storage_gb * db_copies
    bill.add("metadata_storage", db_gb, db_gb * prices.rds_gp3_gb_month)

    _common_network(ctx, bill, scenario, 0.0 if s.zone_local_reads else ctx.consumer_xz_default)
    bill.add("replication", 0.0, 0.0)  # S3 keeps its copies inside its own price

    compaction_puts = cf * v.month_ingest_bytes / (s.compaction_put_mb * MB)
    puts = wal_objects + compaction_puts
    bill.add("object_put", puts, puts / 1000 * prices.s3_put_per_1000)
    # Compaction reads every WAL object once (more GETs if objects exceed a block);
    # zone-local reads fetch each WAL object once per other zone.
    compaction_gets = cf * max(wal_objects, v.month_ingest_bytes / (s.read_block_mb * MB))
    gets = compaction_gets + wal_objects * other_zones + catch_up_gets
    bill.add("object_get", gets, gets / 1000 * prices.s3_get_per_1000)
    notes.append(
        f"{wal_objects / MONTH_S:.1f} WAL objects/s on average, one metadata transaction each"
    )
    return ScenarioCost(
        architecture="shared_storage",
        scenario=scenario,
        brokers=base,
        peak_brokers=peak,
        lines=bill.lines(),
        notes=tuple(notes),
    )


def evaluate(profile: Profile, prices: Prices | None = None) -> CostReport:
    """Cost every architecture in every scenario."""
    if prices is None:
        prices = load_prices(profile.prices)
    ctx = _Ctx(p=profile, prices=prices, v=_volumes(profile))
    results: list[ScenarioCost] = []
    for scenario in SCENARIOS:
        results.append(_kafka(ctx, scenario, tiered=False))
        results.append(_kafka(ctx, scenario, tiered=True))
        results.append(_shoal(ctx, scenario))
    return CostReport(profile=profile, prices=prices, volumes=ctx.v, results=tuple(results))
