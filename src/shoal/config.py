"""Configuration: Kafka's key names where one exists, typed and validated.

Precedence: defaults < TOML file < SHOAL_* environment < command-line flags.
Every error names the key and the bad value.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.config_catalog import TOPIC_CONFIGS, cleanup_policy, one_of


class ConfigError(ValueError):
    """A bad key or value; the message names it."""


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    kind: type  # int, bool or str
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None  # returns a complaint or None
    #: Never shown (DescribeConfigs, logs); may be given as file:/path or env:NAME.
    secret: bool = False

    @property
    def env(self) -> str:
        return "SHOAL_" + self.name.upper().replace(".", "_").replace("-", "_")

    def parse(self, raw: Any, source: str) -> Any:
        value: Any
        if self.secret and isinstance(raw, str):
            raw = resolve_secret(self.name, raw, source)
        try:
            if self.kind is bool:
                if isinstance(raw, bool):
                    value = raw
                elif isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0"):
                    value = raw.lower() in ("true", "1")
                else:
                    raise ValueError
            elif self.kind is int:
                if isinstance(raw, bool):
                    raise ValueError
                value = int(raw) if isinstance(raw, int) else int(str(raw).strip())
            elif self.kind is float:
                if isinstance(raw, bool):
                    raise ValueError
                value = float(raw) if isinstance(raw, int | float) else float(str(raw).strip())
            else:
                if not isinstance(raw, str | int | float):
                    raise ValueError
                value = str(raw)
        except ValueError:
            raise ConfigError(
                f"{self.name}: {raw!r} from {source} is not a valid {self.kind.__name__}"
            ) from None
        if self.check is not None:
            complaint = self.check(value)
            if complaint:
                raise ConfigError(f"{self.name}: {raw!r} from {source} {complaint}")
        return value


def resolve_secret(name: str, raw: str, source: str) -> str:
    """`file:/path` (the file's content, one trailing newline dropped) or
    `env:NAME` (that variable), so secrets stay out of config files."""
    if raw.startswith("file:"):
        path = raw[len("file:") :]
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise ConfigError(
                f"{name}: cannot read secret file {path!r} from {source}: {exc.strerror}"
            ) from None
        return text[:-1] if text.endswith("\n") else text
    if raw.startswith("env:"):
        var = raw[len("env:") :]
        if var not in os.environ:
            raise ConfigError(f"{name}: environment variable {var!r} from {source} is not set")
        return os.environ[var]
    return raw


def at_least(n: int) -> Callable[[Any], str | None]:
    return lambda v: None if v >= n else f"must be at least {n}"


def host_port(v: str) -> str | None:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit():
        return "must be HOST:PORT"
    if not 0 < int(port) < 65536:
        return f"has port {int(port)} out of range 1-65535"
    return None


def optional_host_port(v: str) -> str | None:
    return None if v == "" else host_port(v)


def parse_ip_overrides(raw: str) -> dict[str, int]:
    """`host:count,host:count`, Kafka's format for max.connections.per.ip.overrides.
    Raises ValueError naming the bad entry."""
    out: dict[str, int] = {}
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        host, sep, count = entry.rpartition(":")
        if not sep or not host or not count.strip().isdigit():
            raise ValueError(f"{entry!r}, which is not HOST:COUNT")
        out[host.strip().strip("[]")] = int(count)
    return out


def ip_overrides(v: str) -> str | None:
    try:
        parse_ip_overrides(v)
    except ValueError as exc:
        return f"has {exc}"
    return None


MIB = 1024 * 1024
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")


def _assignors(v: str) -> str | None:
    names = [n.strip() for n in v.split(",") if n.strip()]
    if not names:
        return "must name at least one assignor (uniform, range)"
    bad = [n for n in names if n not in ("uniform", "range")]
    return f"has unknown assignor {bad[0]!r}; known: uniform, range" if bad else None


def _names_in(allowed: tuple[str, ...], what: str) -> Callable[[Any], str | None]:
    def check(v: str) -> str | None:
        bad = [n for n in (p.strip() for p in v.split(",")) if n and n not in allowed]
        return f"has {what} {bad[0]!r}; known: {', '.join(allowed)}" if bad else None

    return check


#: Listeners, TLS and SASL (docs/SECURITY.md); checked together by
#: shoal.security.listeners.check_security once the config is loaded.
SECURITY_KEYS = [
    Key(
        "listeners",
        str,
        "",
        "listeners as NAME://HOST:PORT,... (names map to protocols by "
        "listener.security.protocol.map); empty: one PLAINTEXT listener on `listen`",
    ),
    Key(
        "advertised.listeners",
        str,
        "",
        "addresses given to clients per listener, NAME://HOST:PORT,... (default: listeners)",
    ),
    Key(
        "listener.security.protocol.map",
        str,
        "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
        "listener name to security protocol, NAME:PROTOCOL,...",
    ),
    Key("ssl.keystore.type", str, "PEM", "format of the key material", one_of("PEM")),
    Key(
        "ssl.keystore.location",
        str,
        "",
        "PEM file holding the private key and the certificate chain",
    ),
    Key(
        "ssl.keystore.certificate.chain",
        str,
        "",
        "certificate chain: inline PEM, or the path of a PEM file",
    ),
    Key(
        "ssl.keystore.key",
        str,
        "",
        "private key: inline PEM, or the path of a PEM file",
        secret=True,
    ),
    Key("ssl.key.password", str, "", "password of an encrypted private key", secret=True),
    Key("ssl.truststore.type", str, "PEM", "format of the trusted certificates", one_of("PEM")),
    Key(
        "ssl.truststore.location",
        str,
        "",
        "PEM file of the CA certificates client certificates are checked against",
    ),
    Key(
        "ssl.client.auth",
        str,
        "none",
        "client certificates: none, requested (checked when sent) or required",
        one_of("none", "requested", "required"),
    ),
    Key(
        "ssl.enabled.protocols",
        str,
        "TLSv1.2,TLSv1.3",
        "TLS versions accepted",
        _names_in(("TLSv1.2", "TLSv1.3"), "protocol"),
    ),
    Key(
        "ssl.cipher.suites",
        str,
        "",
        "TLS 1.2 cipher suites, OpenSSL names, comma-separated (empty: OpenSSL's defaults)",
    ),
    Key(
        "ssl.engine",
        str,
        "loop",
        "where TLS records are encrypted and decrypted: loop (uvloop's TLS, on the event "
        "loop) or threaded (a pool of worker threads; costs more CPU than it takes off the "
        "event loop on librdkafka's small TLS records, see docs/SECURITY.md)",
        one_of("threaded", "loop"),
    ),
    Key(
        "ssl.principal.mapping.rules",
        str,
        "DEFAULT",
        "client certificate subject to principal name, Kafka's RULE:pattern/replacement/[LU] "
        "syntax",
    ),
    Key(
        "ssl.reload.check.interval.ms",
        int,
        2000,
        "how often (at most, on new connections) the key and trust files are checked for "
        "changes; changed files are loaded for new connections",
        at_least(0),
    ),
    Key(
        "sasl.enabled.mechanisms",
        str,
        "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
        "SASL mechanisms offered on SASL listeners",
        _names_in(SASL_MECHANISMS, "mechanism"),
    ),
    Key(
        "sasl.oauthbearer.jwks.endpoint.url",
        str,
        "",
        "JWKS of the keys OAUTHBEARER tokens are signed with: file:///path.json",
    ),
    Key(
        "sasl.oauthbearer.expected.audience",
        str,
        "",
        "audiences a token must name (any of), comma-separated",
    ),
    Key("sasl.oauthbearer.expected.issuer", str, "", "issuer a token must name"),
    Key("sasl.oauthbearer.sub.claim.name", str, "sub", "claim holding the principal name"),
    Key(
        "sasl.oauthbearer.clock.skew.seconds",
        int,
        30,
        "tolerance on a token's exp, nbf and iat",
        at_least(0),
    ),
    Key(
        "connections.max.reauth.ms",
        int,
        0,
        "SASL session lifetime: a connection must re-authenticate within it or is closed "
        "(0: sessions do not expire; an OAUTHBEARER token's expiry still applies)",
        at_least(0),
    ),
    Key(
        "connection.failed.authentication.delay.ms",
        int,
        100,
        "delay before a failed authentication is answered and the connection closed",
        at_least(0),
    ),
]
LOCAL_LINGER_MS = 5  # a local PUT costs nothing and takes well under 1 ms
REMOTE_LINGER_MS = 50  # at most 20 PUTs/s per idle broker; see docs/STORAGE.md

BROKER_KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        Key("listen", str, "127.0.0.1:9092", "address the Kafka listener binds", host_port),
        Key(
            "advertise",
            str,
            "",
            "address given to clients (default: listen)",
            optional_host_port,
        ),
        *SECURITY_KEYS,
        Key("data.dir", str, "./shoal-data", "local directory for the embedded default"),
        Key("objects", str, "", "object store URL (default file://DATA_DIR/objects)"),
        Key("metadata", str, "", "metadata URL (default sqlite:///DATA_DIR/meta.db)"),
        Key("node.id", int, 0, "this broker's id", at_least(0)),
        Key("rack", str, "", "availability zone of this broker"),
        Key("num.partitions", int, 1, "partitions of an auto-created topic", at_least(1)),
        Key(
            "default.replication.factor",
            int,
            1,
            "accepted for compatibility: durability comes from the object store",
            at_least(1),
        ),
        Key("auto.create.topics.enable", bool, True, "create topics on first use"),
        Key("delete.topic.enable", bool, True, "allow DeleteTopics"),
        Key("socket.request.max.bytes", int, 100 * MIB, "largest request frame", at_least(1024)),
        Key(
            "sasl.server.max.receive.size",
            int,
            512 * 1024,
            "largest frame before a connection has authenticated (without SASL: before "
            "its first valid request)",
            at_least(1024),
        ),
        Key(
            "queued.max.request.bytes",
            int,
            256 * MIB,
            "bytes of requests being read or handled across all connections; past it the "
            "broker stops reading sockets instead of growing (-1: unbounded)",
            lambda v: None if v == -1 or v >= 1024 else "must be -1 or at least 1024",
        ),
        Key(
            "connections.max.idle.ms",
            int,
            600_000,
            "close a connection with nothing in flight and no complete request for this long "
            "(a client that stalls inside a frame included)",
            at_least(100),
        ),
        Key("max.connections", int, 2**31 - 1, "connections accepted at once", at_least(1)),
        Key(
            "max.connections.per.ip",
            int,
            2**31 - 1,
            "connections accepted at once from one IP address",
            at_least(1),
        ),
        Key(
            "max.connections.per.ip.overrides",
            str,
            "",
            "per-address exceptions: HOST:COUNT,HOST:COUNT",
            ip_overrides,
        ),
        Key(
            "connection.max.inflight.requests",
            int,
            64,
            "requests read from one connection and not yet answered before reading it pauses",
            at_least(1),
        ),
        Key("message.max.bytes", int, MIB + 12, "default max.message.bytes of topics", at_least(0)),
        Key(
            "log.retention.ms",
            int,
            7 * 24 * 3600 * 1000,
            "default retention.ms of topics",
            at_least(-1),
        ),
        Key("log.retention.bytes", int, -1, "default retention.bytes of topics", at_least(-1)),
        Key(
            "log.retention.check.interval.ms",
            int,
            300_000,
            "how often retention runs",
            at_least(100),
        ),
        Key(
            "log.cleanup.policy", str, "delete", "default cleanup.policy of topics", cleanup_policy
        ),
        Key(
            "log.message.timestamp.type",
            str,
            "CreateTime",
            "default message.timestamp.type of topics",
            one_of("CreateTime", "LogAppendTime"),
        ),
        Key(
            "wal.max.bytes", int, 8 * MIB, "WAL object size that triggers an upload", at_least(1024)
        ),
        Key(
            "wal.linger.ms",
            int,
            -1,
            "longest an append waits before its WAL object uploads; -1: 5 on a local "
            "store (file, memory), 50 on a remote one (S3, GCS, Azure), where each PUT is paid",
            at_least(-1),
        ),
        Key(
            "wal.idle.seal.bytes",
            int,
            512 * 1024,
            "on a remote store, a WAL buffer holding at least this much is uploaded once "
            "appends pause for 2 ms, without waiting out wal.linger.ms (a producer waiting "
            "for its answer sends nothing more); at most one more PUT per this many bytes; "
            "0: off",
            at_least(0),
        ),
        Key("wal.max.inflight", int, 4, "WAL objects uploading at once", at_least(1)),
        Key(
            "wal.buffer.max.bytes",
            int,
            64 * MIB,
            "unflushed bytes before produce requests wait (back-pressure)",
            at_least(1024),
        ),
        Key(
            "storage.min.free.bytes",
            int,
            0,
            "free space below which the broker refuses produce requests with the retriable "
            "KAFKA_STORAGE_ERROR (objects directory of a file:// store, SQLite's directory); "
            "0: only a full disk refuses them",
            at_least(0),
        ),
        Key("log.cache.bytes", int, 256 * MIB, "tail-read cache size", at_least(0)),
        Key(
            "log.cache.max.age.ms",
            int,
            300_000,
            "batches leave the tail-read cache this long after they were written (consumers "
            "further behind read through the block cache); 0: only log.cache.bytes bounds it",
            at_least(0),
        ),
        Key("block.cache.bytes", int, 256 * MIB, "catch-up read cache size", at_least(0)),
        Key("fetch.max.wait.cap.ms", int, 30_000, "cap on a fetch's max_wait_ms", at_least(0)),
        Key(
            "fetch.sessionless.pace.ms",
            int,
            50,
            "a fetch without a session (librdkafka) naming fetch.sessionless.pace.partitions "
            "or more is answered no sooner than this after the connection's previous one; "
            "0: never held",
            at_least(0),
        ),
        Key(
            "fetch.sessionless.pace.partitions",
            int,
            1000,
            "the size from which fetch.sessionless.pace.ms holds a fetch without a session",
            at_least(1),
        ),
        Key(
            "max.incremental.fetch.session.cache.slots",
            int,
            1000,
            "incremental fetch sessions (KIP-227) this broker keeps; 0: none",
            at_least(0),
        ),
        Key(
            "min.incremental.fetch.session.eviction.ms",
            int,
            120_000,
            "a full session cache gives an idle session's slot to a new one after this",
            at_least(0),
        ),
        Key(
            "catchup.read.max.bytes.per.sec",
            int,
            200 * MIB,
            "bytes/s served from objects (catch-up reads; the tail is not counted) while "
            "producers are active, so a backlog read leaves CPU for live traffic; 0: unlimited",
            at_least(0),
        ),
        Key(
            "fetch.response.max.bytes",
            int,
            8 * MIB,
            "cap on one fetch response (at least one batch is always sent): one large "
            "catch-up read must not stall the event loop for every other client",
            at_least(1024),
        ),
        Key(
            "log.cleaner.backoff.ms",
            int,
            15_000,
            "how often compacted topics (cleanup.policy=compact) are cleaned",
            at_least(100),
        ),
        Key(
            "compaction.interval.ms",
            int,
            30_000,
            "how often compaction runs: rounds until every WAL object old enough is "
            "compacted, for at most this long",
            at_least(100),
        ),
        Key(
            "compaction.process",
            bool,
            True,
            "build and write compacted objects in a child process (another core), off the "
            "event loop that serves clients; a memory:// store always does it in the broker",
        ),
        Key(
            "compaction.min.age.ms",
            int,
            10_000,
            "youngest WAL object compaction takes",
            at_least(0),
        ),
        Key(
            "compaction.max.bytes",
            int,
            128 * MIB,
            "most data one compaction round reads",
            at_least(1024),
        ),
        Key(
            "compaction.block.bytes",
            int,
            MIB,
            "block size of compacted objects (range reads)",
            at_least(1024),
        ),
        Key(
            "compaction.stream.object.bytes",
            int,
            8 * MIB,
            "data of one stream in a round that earns it an object of its own",
            at_least(1024),
        ),
        Key(
            "compaction.merge.min.objects",
            int,
            8,
            "small compacted objects (below compaction.stream.object.bytes) of one size tier "
            "(tiers a factor of this apart) that are merged together",
            at_least(2),
        ),
        Key(
            "compaction.merge.max.objects",
            int,
            64,
            "most compacted objects one merge round (the second compaction level) takes; "
            "0: no merging",
            at_least(0),
        ),
        Key(
            "compaction.rewrite.live.ratio",
            float,
            0.5,
            "a compacted object of which less than this share is still referenced (the rest "
            "trimmed by retention or DeleteRecords, or key-compacted) and at least "
            "compaction.block.bytes is not, is rewritten with its live ranges only; 0: never",
            lambda v: None if 0 <= v <= 1 else "must be between 0 and 1",
        ),
        Key(
            "object.delete.grace.ms",
            int,
            60_000,
            "how long replaced objects stay readable before deletion",
            at_least(0),
        ),
        Key(
            "object.orphan.grace.ms",
            int,
            600_000,
            "age after which an uploaded but uncommitted object is deleted",
            at_least(1000),
        ),
        Key(
            "producer.id.expiration.ms",
            int,
            86_400_000,
            "idle time after which a producer's sequence state is forgotten",
            at_least(1000),
        ),
        Key(
            "transaction.max.timeout.ms",
            int,
            900_000,
            "largest transaction.timeout.ms a transactional producer may ask for",
            at_least(1),
        ),
        Key(
            "transaction.abort.timed.out.transaction.cleanup.interval.ms",
            int,
            10_000,
            "how often the coordinator aborts transactions past their timeout",
            at_least(10),
        ),
        Key(
            "transaction.version",
            int,
            2,
            "finalized transaction.version feature: 2 offers Kafka 4's transaction protocol "
            "(KIP-890) to clients that ask for it, 1 keeps every client on version 1",
            lambda v: None if v in (1, 2) else "must be 1 or 2",
        ),
        Key(
            "transactional.id.expiration.ms",
            int,
            604_800_000,
            "idle time after which a transactional id with no open transaction is forgotten",
            at_least(1000),
        ),
        Key(
            "metrics.listen",
            str,
            "",
            "HOST:PORT of the Prometheus endpoint (off when empty)",
            optional_host_port,
        ),
        Key(
            "console.listen",
            str,
            "",
            "HOST:PORT of the web console (off when empty); log in with a SCRAM user",
            optional_host_port,
        ),
        Key(
            "console.sites.topic",
            str,
            "_shoal_sites",
            "compacted topic the edge gateways' site reports arrive on (console fleet view)",
        ),
        Key(
            "console.session.timeout.ms",
            int,
            8 * 3_600_000,
            "how long a console login lasts",
            at_least(60_000),
        ),
        Key("s3.endpoint", str, "", "S3 endpoint URL (MinIO, Ceph, R2...); or AWS_ENDPOINT_URL"),
        Key("s3.region", str, "", "S3 region; or AWS_REGION"),
        Key("s3.access.key.id", str, "", "S3 access key; or AWS_ACCESS_KEY_ID"),
        Key(
            "s3.secret.access.key",
            str,
            "",
            "S3 secret key; or AWS_SECRET_ACCESS_KEY",
            secret=True,
        ),
        Key("s3.path.style", bool, False, "path-style requests instead of virtual hosts"),
        Key("s3.allow.http", bool, False, "allow a plain-HTTP endpoint; or AWS_ALLOW_HTTP"),
        Key(
            "s3.server.side.encryption",
            str,
            "",
            "S3 server-side encryption of every object: AES256 (SSE-S3), aws:kms (SSE-KMS) "
            "or aws:kms:dsse; empty: the bucket's default",
            lambda v: (
                None
                if v in ("", "AES256", "aws:kms", "aws:kms:dsse")
                else ("must be AES256, aws:kms, aws:kms:dsse or empty")
            ),
        ),
        Key(
            "s3.sse.kms.key.id",
            str,
            "",
            "KMS key (id or ARN) for aws:kms and aws:kms:dsse; empty: the account's default",
        ),
        Key(
            "group.min.session.timeout.ms",
            int,
            6_000,
            "shortest session.timeout.ms a group member may ask for",
            at_least(1),
        ),
        Key(
            "group.max.session.timeout.ms",
            int,
            1_800_000,
            "longest session.timeout.ms a group member may ask for",
            at_least(1),
        ),
        Key(
            "group.initial.rebalance.delay.ms",
            int,
            3_000,
            "how long a new group waits for more members before its first assignment",
            at_least(0),
        ),
        Key(
            "offsets.retention.minutes",
            int,
            10_080,
            "how long an empty group's committed offsets are kept",
            at_least(1),
        ),
        Key(
            "offsets.retention.check.interval.ms",
            int,
            600_000,
            "how often expired offsets are removed",
            at_least(1),
        ),
        Key(
            "offset.metadata.max.bytes",
            int,
            4096,
            "longest metadata string of a committed offset",
            at_least(0),
        ),
        Key(
            "group.max.size",
            int,
            2**31 - 1,
            "most members a consumer group may have (default: unbounded)",
            at_least(1),
        ),
        Key(
            "group.consumer.session.timeout.ms",
            int,
            45_000,
            "consumer-protocol (KIP-848) groups: a member not heard from for this long is removed",
            at_least(1),
        ),
        Key(
            "group.consumer.min.session.timeout.ms",
            int,
            45_000,
            "lowest value group.consumer.session.timeout.ms may take",
            at_least(1),
        ),
        Key(
            "group.consumer.max.session.timeout.ms",
            int,
            60_000,
            "highest value group.consumer.session.timeout.ms may take",
            at_least(1),
        ),
        Key(
            "group.consumer.heartbeat.interval.ms",
            int,
            5_000,
            "consumer-protocol groups: how often members heartbeat (sent to them)",
            at_least(1),
        ),
        Key(
            "group.consumer.min.heartbeat.interval.ms",
            int,
            5_000,
            "lowest value group.consumer.heartbeat.interval.ms may take",
            at_least(1),
        ),
        Key(
            "group.consumer.max.heartbeat.interval.ms",
            int,
            15_000,
            "highest value group.consumer.heartbeat.interval.ms may take",
            at_least(1),
        ),
        Key(
            "group.consumer.max.size",
            int,
            2**31 - 1,
            "most members a consumer-protocol group may have (default: unbounded)",
            at_least(1),
        ),
        Key(
            "group.consumer.assignors",
            str,
            "uniform,range",
            "server-side assignors members may ask for; the first is the default",
            _assignors,
        ),
        Key(
            "group.consumer.migration.policy",
            str,
            "bidirectional",
            "online conversion of a group with members between the classic and the "
            "consumer protocol: bidirectional, upgrade, downgrade or disabled",
            lambda v: (
                None
                if v.lower() in ("bidirectional", "upgrade", "downgrade", "disabled")
                else "must be one of bidirectional, upgrade, downgrade, disabled"
            ),
        ),
        Key(
            "cluster.enable",
            str,
            "auto",
            "cluster mode: leases, controller, partition owners (auto: on with PostgreSQL)",
            one_of("auto", "true", "false"),
        ),
        Key(
            "broker.session.timeout.ms",
            int,
            6000,
            "a broker whose lease is not renewed for this long loses its partitions",
            at_least(100),
        ),
        Key(
            "broker.heartbeat.interval.ms",
            int,
            1000,
            "how often a broker renews its lease (and the controller runs)",
            at_least(10),
        ),
        Key(
            "cluster.refresh.interval.ms",
            int,
            250,
            "how often a broker checks topics and partition owners for changes "
            "(read again only when they moved)",
            at_least(10),
        ),
        Key(
            "cluster.reader.refresh.ms",
            int,
            100,
            "how stale a read replica's view of a partition's end may get",
            at_least(0),
        ),
        Key("balancer.enable", bool, True, "move partitions to even out load between brokers"),
        Key(
            "balancer.band.percent",
            int,
            20,
            "brokers within this percentage of the mean load are left alone",
            at_least(0),
        ),
        Key(
            "balancer.cooldown.ms",
            int,
            60_000,
            "a partition moved by the balancer stays put this long",
            at_least(0),
        ),
        Key("balancer.max.moves", int, 2, "partitions the balancer moves per round", at_least(1)),
        Key(
            "balancer.interval.ms",
            int,
            10_000,
            "how often the balancer looks at the load",
            at_least(100),
        ),
        Key(
            "authorizer.class.name",
            str,
            "",
            "any non-empty value (e.g. shoal) turns ACL authorization on; empty: "
            "everything is allowed, as Kafka without an authorizer",
        ),
        Key(
            "super.users",
            str,
            "",
            "principals allowed everything, ;-separated (User:admin;User:ops)",
            lambda v: (
                None
                if all(":" in p.strip() for p in v.split(";") if p.strip())
                else "must be Type:name principals separated by ;"
            ),
        ),
        Key(
            "allow.everyone.if.no.acl.found",
            bool,
            False,
            "allow a resource that no ACL names at all (with an authorizer)",
        ),
        Key(
            "acl.refresh.interval.ms",
            int,
            500,
            "how often a broker checks for ACL (cluster mode) and SCRAM credential changes "
            "made through another broker or straight in the metadata store",
            at_least(10),
        ),
        Key(
            "audit.log.path",
            str,
            "",
            "file of the audit trail, one JSON line per authentication, denial and "
            "admin change (off when empty)",
        ),
        Key(
            "audit.log.max.bytes",
            int,
            100 * MIB,
            "size at which the audit file rotates",
            at_least(1024),
        ),
        Key("audit.log.backup.count", int, 10, "rotated audit files kept", at_least(0)),
        Key(
            "quota.window.num",
            int,
            11,
            "samples a client quota's rate is measured over (Kafka's)",
            at_least(2),
        ),
        Key(
            "quota.window.size.seconds",
            int,
            1,
            "length of one client quota sample, in seconds (Kafka's)",
            at_least(1),
        ),
        Key(
            "quota.refresh.interval.ms",
            int,
            500,
            "cluster mode: how often a broker checks for client quota changes made through another",
            at_least(10),
        ),
    ]
}

#: Kafka 4's topic configs (config_catalog.py). Keys whose default a broker key
#: supplies (TOPIC_DEFAULT_FROM) have no default of their own here.
TOPIC_KEYS: dict[str, Key] = {
    d.name: Key(d.name, d.kind, d.default, d.doc, d.check) for d in TOPIC_CONFIGS
}

TOPIC_DEFAULT_FROM = {
    "retention.ms": "log.retention.ms",
    "retention.bytes": "log.retention.bytes",
    "max.message.bytes": "message.max.bytes",
    "cleanup.policy": "log.cleanup.policy",
    "message.timestamp.type": "log.message.timestamp.type",
}


class BrokerConfig(Mapping[str, Any]):
    """Resolved broker configuration: values[key] -> typed value."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str]) -> None:
        self._values = values
        self.sources = sources

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def data_dir(self) -> Path:
        return Path(self["data.dir"])

    @property
    def objects_url(self) -> str:
        return str(self["objects"]) or (self.data_dir.resolve() / "objects").as_uri()

    @property
    def metadata_url(self) -> str:
        return str(self["metadata"]) or f"sqlite:///{(self.data_dir.resolve() / 'meta.db')}"

    @property
    def local_dirs(self) -> tuple[tuple[str, str], ...]:
        """The local directories the broker writes, by kind of write: a
        file:// store's ("objects") and SQLite's ("metadata"), for the
        free-space watch."""
        from urllib.parse import urlparse

        from sqlalchemy.engine import make_url

        out: list[tuple[str, str]] = []
        if self.objects_url.startswith("file:"):
            out.append(("objects", urlparse(self.objects_url).path))
        if self.metadata_url.startswith("sqlite:"):
            database = make_url(self.metadata_url).database
            if database and database != ":memory:":
                out.append(("metadata", str(Path(database).resolve().parent)))
        return tuple(out)

    @property
    def cluster_mode(self) -> bool:
        """Leases and partition owners: on by default with PostgreSQL
        metadata (several brokers can share it), off with SQLite."""
        mode = str(self["cluster.enable"])
        if mode == "auto":
            return self.metadata_url.startswith(("postgresql", "postgres"))
        return mode == "true"

    @property
    def advertised(self) -> tuple[str, int]:
        """This broker's registered address: its first listener's advertised one."""
        from shoal.security.listeners import resolve_listeners

        first = resolve_listeners(self)[0]
        return first.advertised_host, first.advertised_port

    @property
    def wal_linger_ms(self) -> int:
        """wal.linger.ms, resolving -1 by where the objects go (see README)."""
        value = int(self["wal.linger.ms"])
        if value >= 0:
            return value
        local = self.objects_url.startswith(("file:", "memory:"))
        return LOCAL_LINGER_MS if local else REMOTE_LINGER_MS

    @property
    def wal_eager(self) -> bool:
        """Flush a lone append at once on a local store (see WalConfig.eager)."""
        return self.objects_url.startswith(("file:", "memory:"))

    @property
    def object_store_options(self) -> dict[str, Any]:
        """obstore options from the s3.* keys; unset keys leave the standard
        AWS environment variables in charge."""
        if not self.objects_url.startswith(("s3://", "s3a://")):
            return {}
        opts: dict[str, Any] = {}
        for key, name in (
            ("s3.endpoint", "endpoint"),
            ("s3.region", "region"),
            ("s3.access.key.id", "access_key_id"),
            ("s3.secret.access.key", "secret_access_key"),
        ):
            if self[key]:
                opts[name] = self[key]
        if self["s3.path.style"]:
            opts["virtual_hosted_style_request"] = False
        if self["s3.allow.http"]:
            opts["client_options"] = {"allow_http": True}
        if self["s3.server.side.encryption"]:
            opts["server_side_encryption"] = self["s3.server.side.encryption"]
        if self["s3.sse.kms.key.id"]:
            opts["sse_kms_key_id"] = self["s3.sse.kms.key.id"]
        return opts

    def topic_default(self, key: str) -> Any:
        if key in TOPIC_DEFAULT_FROM:
            return self[TOPIC_DEFAULT_FROM[key]]
        return TOPIC_KEYS[key].default


def default(name: str) -> Any:
    """The default of broker key `name`: the dataclasses that mirror keys
    (CompactionConfig, MergePolicy) take theirs from here, so a default is
    written once."""
    return BROKER_KEYS[name].default


def load_config(
    file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> BrokerConfig:
    values = {k.name: k.default for k in BROKER_KEYS.values()}
    sources = dict.fromkeys(values, "default")
    if file is not None:
        try:
            with open(file, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: invalid TOML: {exc}") from None
        for name, raw in _flatten(doc).items():
            key = BROKER_KEYS.get(name)
            if key is None:
                raise ConfigError(f"{name}: unknown configuration key in {file}")
            values[name] = key.parse(raw, str(file))
            sources[name] = str(file)
    environ = os.environ if env is None else env
    for key in BROKER_KEYS.values():
        if key.env in environ:
            values[key.name] = key.parse(environ[key.env], f"environment {key.env}")
            sources[key.name] = key.env
    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        key = BROKER_KEYS[name]
        values[name] = key.parse(raw, f"--{name.replace('.', '-')}")
        sources[name] = "flag"
    if values["s3.sse.kms.key.id"] and not str(values["s3.server.side.encryption"]).startswith(
        "aws:kms"
    ):
        raise ConfigError(
            "s3.sse.kms.key.id: a KMS key needs s3.server.side.encryption = aws:kms or "
            f"aws:kms:dsse (it is {values['s3.server.side.encryption']!r})"
        )
    queued = values["queued.max.request.bytes"]
    if queued != -1 and queued < values["socket.request.max.bytes"]:
        # A frame larger than the whole budget could never be read.
        raise ConfigError(
            f"queued.max.request.bytes: {queued} from {sources['queued.max.request.bytes']} "
            "must be -1 or at least socket.request.max.bytes "
            f"({values['socket.request.max.bytes']})"
        )
    _check_consumer_group_bounds(values, sources)
    return BrokerConfig(values, sources)


def _check_consumer_group_bounds(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Kafka's rules: each group.consumer value within its min/max, and the
    heartbeat interval below the session timeout."""
    for what in ("session.timeout.ms", "heartbeat.interval.ms"):
        name = f"group.consumer.{what}"
        low = values[f"group.consumer.min.{what}"]
        high = values[f"group.consumer.max.{what}"]
        if not low <= values[name] <= high:
            raise ConfigError(
                f"{name}: {values[name]} from {sources.get(name, 'the default')} must be between "
                f"group.consumer.min.{what} ({low}) and group.consumer.max.{what} ({high})"
            )
    interval = values["group.consumer.heartbeat.interval.ms"]
    session = values["group.consumer.session.timeout.ms"]
    if interval >= session:
        raise ConfigError(
            f"group.consumer.heartbeat.interval.ms: {interval} must be below "
            f"group.consumer.session.timeout.ms ({session})"
        )


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Accept both `"num.partitions" = 3` and `[num] partitions = 3` spellings."""
    out: dict[str, Any] = {}
    for k, v in doc.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def validate_topic_configs(configs: Mapping[str, str | None]) -> dict[str, str]:
    """Check topic configs as a client sends them (strings). Raises ConfigError
    naming the first unknown key or bad value; returns normalised strings."""
    out: dict[str, str] = {}
    for name, raw in configs.items():
        key = TOPIC_KEYS.get(name)
        if key is None:
            raise ConfigError(f"unknown topic config {name!r}")
        if raw is None:
            raise ConfigError(f"topic config {name!r} needs a value")
        value = key.parse(raw, "request")
        out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return out
