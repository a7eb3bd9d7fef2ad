"""Kafka 4's topic configs: every key a Kafka client may set on a topic, with
Kafka's type, default, validation and broker-side synonyms, and whether Shoal
honours it or only stores it (a replica or segment setting means nothing when
the data lives in shared object storage, but tools set them and read them back).

Kept apart from config.py so the catalogue reads as one table; config.py builds
TOPIC_KEYS from it. No imports from shoal: config.py imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# DescribeConfigs config_type values (Kafka's ConfigType)
BOOLEAN, STRING, INT, SHORT, LONG, DOUBLE, LIST, CLASS, PASSWORD = 1, 2, 3, 4, 5, 6, 7, 8, 9

INT_MAX = 2**31 - 1
INT_MIN = -(2**31)
LONG_MAX = 2**63 - 1
LONG_MIN = -(2**63)

HONOURED = "honoured"
STORED = "stored only"

Check = Callable[[Any], "str | None"]

#: compression.type values and their record-batch codec ids (producer: none)
COMPRESSION_CODECS = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
COMPRESSION_TYPES = ("uncompressed", "zstd", "lz4", "snappy", "gzip", "producer")
# Kafka's level ranges (GzipCompression, Lz4Compression, ZstdCompression)
GZIP_LEVELS = (1, 9, -1)  # min, max, default (-1: zlib's default, 6)
LZ4_LEVELS = (1, 17, 9)
ZSTD_LEVELS = (-131072, 22, 3)


@dataclass(frozen=True, slots=True)
class TopicConfigDef:
    name: str
    kind: type  # the Python type Key.parse produces: int, float, bool or str
    kafka_type: int
    default: Any  # Kafka's default (typed); None: no default
    doc: str
    check: Check | None = None
    synonyms: tuple[str, ...] = ()  # broker keys supplying the default, Kafka's order
    shoal: str = STORED
    note: str = ""  # why Shoal stores only, or what it does instead


def _range(lo: int | float | None, hi: int | float | None) -> Check:
    def check(v: Any) -> str | None:
        if lo is not None and v < lo:
            return f"must be at least {lo}" if hi is None else f"must be between {lo} and {hi}"
        if hi is not None and v > hi:
            return f"must be at most {hi}" if lo is None else f"must be between {lo} and {hi}"
        return None

    return check


def _int(lo: int | None = None, hi: int = INT_MAX) -> Check:
    return _range(INT_MIN if lo is None else lo, hi)


def _long(lo: int | None = None) -> Check:
    return _range(LONG_MIN if lo is None else lo, LONG_MAX)


def _level(levels: tuple[int, int, int]) -> Check:
    lo, hi, default = levels

    def check(v: int) -> str | None:
        if v == default or lo <= v <= hi:
            return None
        return f"must be between {lo} and {hi} (or {default})"

    return check


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else "must be one of " + ", ".join(choices)


def cleanup_policy(v: str) -> str | None:
    parts = [p.strip() for p in v.split(",")]
    if all(parts) and set(parts) <= {"delete", "compact"}:
        return None
    return "must be delete, compact or both (comma-separated)"


def _throttled_replicas(v: str) -> str | None:
    """Kafka's ThrottledReplicaListValidator: `*`, or PARTITION:BROKER,..."""
    items = [p.strip() for p in v.split(",") if p.strip()]
    if items == ["*"] or not items:
        return None
    for item in items:
        part, sep, broker = item.partition(":")
        if not sep or not part.isdigit() or not broker.isdigit():
            return "must be * or a list of PARTITION:BROKER pairs"
    return None


_DAY = 86_400_000
_WEEK = 7 * _DAY

#: Kafka 4's topic configs, alphabetical (the order Kafka's tools show), plus
#: the three Kafka 3.x keys migration tools still set.
TOPIC_CONFIGS: tuple[TopicConfigDef, ...] = (
    TopicConfigDef(
        "cleanup.policy", str, LIST, "delete",
        "delete (retention by time and size), compact (keep the last record per key) or both",
        cleanup_policy, ("log.cleanup.policy",), HONOURED,
    ),
    TopicConfigDef(
        "compression.gzip.level", int, INT, GZIP_LEVELS[2],
        "gzip level used when compression.type is gzip", _level(GZIP_LEVELS),
        ("compression.gzip.level",), HONOURED,
    ),
    TopicConfigDef(
        "compression.lz4.level", int, INT, LZ4_LEVELS[2],
        "lz4 level used when compression.type is lz4", _level(LZ4_LEVELS),
        ("compression.lz4.level",), HONOURED,
    ),
    TopicConfigDef(
        "compression.type", str, STRING, "producer",
        "codec of stored batches: producer keeps the producer's; another codec "
        "recompresses batches that arrive in a different one",
        one_of(*COMPRESSION_TYPES), ("compression.type",), HONOURED,
    ),
    TopicConfigDef(
        "compression.zstd.level", int, INT, ZSTD_LEVELS[2],
        "zstd level used when compression.type is zstd", _level(ZSTD_LEVELS),
        ("compression.zstd.level",), HONOURED,
    ),
    TopicConfigDef(
        "delete.retention.ms", int, LONG, _DAY,
        "how long tombstones stay readable in compacted topics", _long(0),
        ("log.cleaner.delete.retention.ms",), HONOURED,
    ),
    TopicConfigDef(
        "file.delete.delay.ms", int, LONG, 60_000,
        "delay before a deleted segment file is removed", _long(0),
        ("log.segment.delete.delay.ms",), STORED,
        "replaced objects are deleted after compaction.grace.ms",
    ),
    TopicConfigDef(
        "flush.messages", int, LONG, LONG_MAX,
        "records written before a local fsync is forced", _long(1),
        ("log.flush.interval.messages",), STORED,
        "every acknowledged batch is already in the object store",
    ),
    TopicConfigDef(
        "flush.ms", int, LONG, LONG_MAX,
        "time before a local fsync is forced", _long(0),
        ("log.flush.interval.ms", "log.flush.scheduler.interval.ms"), STORED,
        "every acknowledged batch is already in the object store",
    ),
    TopicConfigDef(
        "follower.replication.throttled.replicas", str, LIST, "",
        "replicas whose follower replication is throttled", _throttled_replicas, (), STORED,
        "no replication: the object store keeps the copies",
    ),
    TopicConfigDef(
        "index.interval.bytes", int, INT, 4096,
        "bytes between offset index entries", _int(0), ("log.index.interval.bytes",), STORED,
        "objects carry their own index",
    ),
    TopicConfigDef(
        "leader.replication.throttled.replicas", str, LIST, "",
        "replicas whose leader replication is throttled", _throttled_replicas, (), STORED,
        "no replication: the object store keeps the copies",
    ),
    TopicConfigDef(
        "local.retention.bytes", int, LONG, -2,
        "size kept on local disk under tiered storage (-2: retention.bytes)", _long(-2),
        ("log.local.retention.bytes",), STORED, "no local tier: all data is in the object store",
    ),
    TopicConfigDef(
        "local.retention.ms", int, LONG, -2,
        "time kept on local disk under tiered storage (-2: retention.ms)", _long(-2),
        ("log.local.retention.ms",), STORED, "no local tier: all data is in the object store",
    ),
    TopicConfigDef(
        "max.compaction.lag.ms", int, LONG, LONG_MAX,
        "longest a record may stay uncompacted", _long(1),
        ("log.cleaner.max.compaction.lag.ms",), STORED,
        "compaction runs by min.cleanable.dirty.ratio",
    ),
    TopicConfigDef(
        "max.message.bytes", int, INT, 1_048_588,
        "largest record batch accepted", _int(0), ("message.max.bytes",), HONOURED,
    ),
    TopicConfigDef(
        "message.downconversion.enable", bool, BOOLEAN, True,
        "Kafka 3.x: down-convert for old fetchers (removed in Kafka 4)", None, (), STORED,
        "Kafka 3.x key, kept for migration tools; Shoal never down-converts",
    ),
    TopicConfigDef(
        "message.format.version", str, STRING, "3.0-IV1",
        "Kafka 3.x: on-disk message format (removed in Kafka 4)", None,
        ("log.message.format.version",), STORED,
        "Kafka 3.x key, kept for migration tools; batches are always v2",
    ),
    TopicConfigDef(
        "message.timestamp.after.max.ms", int, LONG, 3_600_000,
        "how far in the future a CreateTime timestamp may be", _long(0),
        ("log.message.timestamp.after.max.ms",), HONOURED,
    ),
    TopicConfigDef(
        "message.timestamp.before.max.ms", int, LONG, LONG_MAX,
        "how far in the past a CreateTime timestamp may be", _long(0),
        ("log.message.timestamp.before.max.ms",), HONOURED,
    ),
    TopicConfigDef(
        "message.timestamp.difference.max.ms", int, LONG, LONG_MAX,
        "Kafka 3.x: largest difference between a timestamp and the broker's clock "
        "(removed in Kafka 4)", _long(0), ("log.message.timestamp.difference.max.ms",), STORED,
        "Kafka 3.x key, kept for migration tools; use message.timestamp.before/after.max.ms",
    ),
    TopicConfigDef(
        "message.timestamp.type", str, STRING, "CreateTime",
        "CreateTime (the producer's) or LogAppendTime (the broker's)",
        one_of("CreateTime", "LogAppendTime"), ("log.message.timestamp.type",), HONOURED,
    ),
    TopicConfigDef(
        "min.cleanable.dirty.ratio", float, DOUBLE, 0.5,
        "share of not-yet-compacted data that triggers key compaction", _range(0, 1),
        ("log.cleaner.min.cleanable.ratio",), HONOURED,
    ),
    TopicConfigDef(
        "min.compaction.lag.ms", int, LONG, 0,
        "youngest record compaction may remove", _long(0),
        ("log.cleaner.min.compaction.lag.ms",), HONOURED,
    ),
    TopicConfigDef(
        "min.insync.replicas", int, INT, 1,
        "replicas that must acknowledge an acks=all write", _int(1), ("min.insync.replicas",),
        STORED, "an acknowledged write is in the object store, whatever this says",
    ),
    TopicConfigDef(
        "preallocate", bool, BOOLEAN, False,
        "preallocate segment files", None, ("log.preallocate",), STORED, "no segment files",
    ),
    TopicConfigDef(
        "remote.log.copy.disable", bool, BOOLEAN, False,
        "stop copying segments to the remote tier", None, (), STORED,
        "no tiers: the object store is the only copy",
    ),
    TopicConfigDef(
        "remote.log.delete.on.disable", bool, BOOLEAN, False,
        "delete the remote tier when tiered storage is turned off", None, (), STORED,
        "no tiers: the object store is the only copy",
    ),
    TopicConfigDef(
        "remote.storage.enable", bool, BOOLEAN, False,
        "tiered storage for this topic", None, (), STORED,
        "every topic lives in the object store already",
    ),
    TopicConfigDef(
        "retention.bytes", int, LONG, -1,
        "size kept per partition before old data is deleted (-1: unbounded)", _long(),
        ("log.retention.bytes",), HONOURED,
    ),
    TopicConfigDef(
        "retention.ms", int, LONG, _WEEK,
        "how long records are kept (-1: forever)", _long(-1),
        ("log.retention.ms", "log.retention.minutes", "log.retention.hours"), HONOURED,
    ),
    TopicConfigDef(
        "segment.bytes", int, INT, 1 << 30,
        "segment file size", _int(1 << 20), ("log.segment.bytes",), STORED,
        "objects are sized by wal.max.bytes and compaction",
    ),
    TopicConfigDef(
        "segment.index.bytes", int, INT, 10 << 20,
        "offset index file size", _int(4), ("log.index.size.max.bytes",), STORED,
        "objects carry their own index",
    ),
    TopicConfigDef(
        "segment.jitter.ms", int, LONG, 0,
        "random jitter subtracted from segment.ms", _long(0),
        ("log.roll.jitter.ms", "log.roll.jitter.hours"), STORED, "no segments to roll",
    ),
    TopicConfigDef(
        "segment.ms", int, LONG, _WEEK,
        "time before a segment is rolled", _long(1), ("log.roll.ms", "log.roll.hours"), STORED,
        "no segments to roll",
    ),
    TopicConfigDef(
        "unclean.leader.election.enable", bool, BOOLEAN, False,
        "let an out-of-sync replica become leader", None, ("unclean.leader.election.enable",),
        STORED, "one copy in the object store: every new owner is in sync",
    ),
)  # fmt: skip

BY_NAME: dict[str, TopicConfigDef] = {d.name: d for d in TOPIC_CONFIGS}

#: Kafka's broker-side defaults for the synonyms (the value Kafka shows as the
#: DEFAULT_CONFIG synonym): hours and minutes keys in their own unit.
SYNONYM_DEFAULTS: dict[str, str | None] = {
    "log.retention.minutes": None,
    "log.retention.hours": "168",
    "log.roll.ms": None,
    "log.roll.hours": "168",
    "log.roll.jitter.ms": None,
    "log.roll.jitter.hours": "0",
    "log.flush.interval.ms": None,
    "log.flush.scheduler.interval.ms": str(LONG_MAX),
}


def synonym_default(d: TopicConfigDef, synonym: str) -> str | None:
    """What Kafka reports as the default of a broker synonym of `d`."""
    if synonym in SYNONYM_DEFAULTS:
        return SYNONYM_DEFAULTS[synonym]
    return render(d.default)


def render(value: Any) -> str | None:
    """A value as Kafka writes it in DescribeConfigs."""
    if value is None:
        return None
    return str(value).lower() if isinstance(value, bool) else str(value)


def combination_problem(value: Callable[[str], Any]) -> str | None:
    """Kafka's checks across keys (LogConfig.validateValues and the broker's
    remote-storage ones), given each key's effective typed value."""
    lo, hi = value("min.compaction.lag.ms"), value("max.compaction.lag.ms")
    if lo > hi:
        return f"min.compaction.lag.ms ({lo}) must not exceed max.compaction.lag.ms ({hi})"
    if value("remote.storage.enable"):
        for local, total in (
            ("local.retention.ms", "retention.ms"),
            ("local.retention.bytes", "retention.bytes"),
        ):
            mine, whole = value(local), value(total)
            if mine == -1 and whole != -1:
                return f"{local} (-1, unbounded) must not exceed {total} ({whole})"
            if whole != -1 and mine > whole:
                return f"{local} ({mine}) must not exceed {total} ({whole})"
    return None
