"""One schema for SQLite and PostgreSQL, as SQLAlchemy Core tables."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

SCHEMA_VERSION = 1

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
)

cluster = Table(
    "cluster",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

topics = Table(
    "topics",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(249), nullable=False, unique=True),
    Column("topic_uuid", String(36), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

topic_configs = Table(
    "topic_configs",
    metadata,
    Column("topic_id", Integer, ForeignKey("topics.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("value", Text, nullable=False),
)

streams = Table(
    "streams",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Taking the stream bumps the epoch; every commit checks it (fencing).
    Column("epoch", Integer, nullable=False, default=0),
    Column("start_offset", BigInteger, nullable=False, default=0),
    Column("end_offset", BigInteger, nullable=False, default=0),
    Column("deleted", Boolean, nullable=False, default=False),
)

partitions = Table(
    "partitions",
    metadata,
    Column("topic_id", Integer, ForeignKey("topics.id", ondelete="CASCADE"), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("stream_id", Integer, ForeignKey("streams.id"), nullable=False),
    Column("leader_epoch", Integer, nullable=False, default=0),
    Column("owner_node", Integer, nullable=True),
)

objects = Table(
    "objects",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(512), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("node_id", Integer, nullable=False),
    # "wal" (one broker's flush, many streams) or "compacted" (merged blocks).
    Column("kind", String(16), nullable=False, default="wal"),
    # Set once no range refers to the object: deleted from the store after it,
    # so that readers in flight finish first.
    Column("delete_after_ms", BigInteger, nullable=True),
)

stream_ranges = Table(
    "stream_ranges",
    metadata,
    Column("stream_id", Integer, ForeignKey("streams.id"), primary_key=True),
    Column("start_offset", BigInteger, primary_key=True),
    Column("end_offset", BigInteger, nullable=False),  # exclusive
    Column("object_id", Integer, ForeignKey("objects.id"), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("max_timestamp", BigInteger, nullable=False),
)

Index("stream_ranges_object", stream_ranges.c.object_id)

# Idempotent producers: the last batches of each producer, per stream, written
# in the same transaction as the WAL commit that makes those batches visible.
producer_states = Table(
    "producer_states",
    metadata,
    Column("stream_id", Integer, ForeignKey("streams.id"), primary_key=True),
    Column("producer_id", BigInteger, primary_key=True),
    Column("epoch", Integer, nullable=False),
    Column("batches", Text, nullable=False),  # JSON [[first_seq, last_seq, base, last], ...]
    Column("last_timestamp_ms", BigInteger, nullable=False),
    # Transactions (issue 11): first offset of the producer's open transaction
    # on the stream, -1 when none; the oldest is the last stable offset.
    Column("txn_first_offset", BigInteger, nullable=False, default=-1, server_default="-1"),
)

# Aborted transactions per stream (first record .. abort marker), written in
# the WAL commit that makes the marker durable; read_committed fetches list
# the ones they overlap. Trimmed with the stream's start.
aborted_txns = Table(
    "aborted_txns",
    metadata,
    Column("stream_id", Integer, ForeignKey("streams.id"), primary_key=True),
    Column("last_offset", BigInteger, primary_key=True),
    Column("producer_id", BigInteger, nullable=False),
    Column("first_offset", BigInteger, nullable=False),
)

# Transaction coordinator state (issue 11), one row per transactional id.
# `partitions` is JSON [[topic, partition], ...]; `offsets` JSON
# {group: [[topic, partition, offset, leader_epoch, metadata], ...]} holds the
# TxnOffsetCommits applied at commit. A row in PrepareCommit/PrepareAbort is a
# decision taken whose markers may not all be written: whoever coordinates the
# id next (after a restart or a move) finishes it.
transactions = Table(
    "transactions",
    metadata,
    Column("transactional_id", Text, primary_key=True),
    Column("producer_id", BigInteger, nullable=False),
    Column("producer_epoch", Integer, nullable=False),
    Column("timeout_ms", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("partitions", Text, nullable=False, default="[]"),
    Column("offsets", Text, nullable=False, default="{}"),
    Column("start_ms", BigInteger, nullable=False, default=-1),
    Column("update_ms", BigInteger, nullable=False),
    # Bumped by every change, which must name the version it read: two
    # brokers writing one id (cluster mode) cannot lose each other's change.
    Column("version", Integer, nullable=False, default=1),
    # KIP-890 (transaction protocol version 2): the version of the id's last
    # end, and the producer id an epoch overflow replaced (a retried EndTxn
    # may still name it).
    Column("txn_version", Integer, nullable=False, default=0),
    Column("prev_producer_id", BigInteger, nullable=False, default=-1),
)

# Markers a coordinator asks another broker to write (cluster mode): the
# owner of the stream writes the marker and deletes the row in the WAL commit
# that makes the marker durable, so each is written exactly once, by whoever
# owns the partition then.
txn_markers = Table(
    "txn_markers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("transactional_id", Text, nullable=False),
    Column("stream_id", Integer, ForeignKey("streams.id"), nullable=False),
    Column("producer_id", BigInteger, nullable=False),
    Column("producer_epoch", Integer, nullable=False),
    Column("commit", Boolean, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

Index("txn_markers_tid", txn_markers.c.transactional_id)

#: (table, column, DDL) added to existing databases by MetaStore.migrate
ADDED_COLUMNS = [
    ("producer_states", "txn_first_offset", "BIGINT NOT NULL DEFAULT -1"),
    ("transactions", "txn_version", "INTEGER NOT NULL DEFAULT 0"),
    ("transactions", "prev_producer_id", "BIGINT NOT NULL DEFAULT -1"),
]

# Named counters (producer id blocks).
counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# SCRAM credentials (issue 10), as Kafka keeps them: never the password, only
# what verifies a proof (StoredKey) and proves the server (ServerKey).
scram_credentials = Table(
    "scram_credentials",
    metadata,
    Column("user_name", String(255), primary_key=True),
    Column("mechanism", String(32), primary_key=True),
    Column("salt", LargeBinary, nullable=False),
    Column("stored_key", LargeBinary, nullable=False),
    Column("server_key", LargeBinary, nullable=False),
    Column("iterations", Integer, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Each broker's advertised address per listener name (issue 10), JSON
# {"NAME": [host, port]}: Metadata answers a client with the addresses of the
# listener it connected on. Written at registration, beside the lease row.
broker_listeners = Table(
    "broker_listeners",
    metadata,
    Column("node_id", Integer, primary_key=True),
    Column("listeners", Text, nullable=False),
)

# Consumer groups (issue 4). A group's row carries what must survive a restart:
# its protocol type (for ListGroups and expiry), its generation (so generations
# keep increasing) and since when it has been Empty (for offset expiry). Classic
# members are not stored: after a restart they rejoin, as they would after a
# coordinator move in Kafka; consumer-protocol members are (consumer_group_members).
consumer_groups = Table(
    "consumer_groups",
    metadata,
    Column("group_id", Text, primary_key=True),
    Column("protocol_type", Text, nullable=False, default=""),
    Column("generation", Integer, nullable=False, default=0),
    Column("state", String(32), nullable=False),
    Column("state_ms", BigInteger, nullable=False),
)

# Consumer-protocol (KIP-848) group state, so that a group survives a
# coordinator move or restart as in Kafka (whose coordinator replays its
# ConsumerGroupMetadata, TargetAssignment and CurrentMemberAssignment records):
# the group's epochs, and per member its epochs, subscription, target, current
# assignment and partitions pending revocation. Assignments are JSON
# {"topic": [partition, ...]}. Written on epoch, assignment and membership
# changes, never on a plain heartbeat. Added after schema v1: migrate()'s
# create_all adds them to an existing database.
consumer_group_state = Table(
    "consumer_group_state",
    metadata,
    Column("group_id", Text, primary_key=True),
    Column("group_epoch", Integer, nullable=False),
    Column("assignment_epoch", Integer, nullable=False),
    Column("assignor", String(255), nullable=False, default=""),
    # JSON [[name, topic id, partitions], ...]: the topics the target was computed from
    Column("topics", Text, nullable=False, default="[]"),
)

consumer_group_members = Table(
    "consumer_group_members",
    metadata,
    Column("group_id", Text, primary_key=True),
    Column("member_id", String(255), primary_key=True),
    Column("instance_id", String(255), nullable=True),
    Column("member_epoch", Integer, nullable=False),
    Column("previous_epoch", Integer, nullable=False),
    Column("state", String(32), nullable=False),
    Column("rack_id", String(255), nullable=True),
    Column("client_id", String(255), nullable=False, default=""),
    Column("client_host", String(255), nullable=False, default=""),
    Column("subscribed_topic_names", Text, nullable=False, default="[]"),
    Column("subscribed_topic_regex", Text, nullable=True),
    Column("hidden_topics", Text, nullable=False, default="[]"),
    Column("server_assignor", String(255), nullable=True),
    Column("rebalance_timeout_ms", Integer, nullable=False),
    Column("assigned", Text, nullable=False, default="{}"),
    Column("pending_revocation", Text, nullable=False, default="{}"),
    Column("target", Text, nullable=False, default="{}"),
    # A classic member inside the consumer group: JSON {"session_timeout_ms":
    # n, "protocols": [[name, base64 metadata], ...]}; NULL for the consumer protocol.
    Column("classic", Text, nullable=True),
)

# Committed offsets by topic name: a deleted topic's offsets are removed with it,
# so a topic re-created under the same name starts without them.
group_offsets = Table(
    "group_offsets",
    metadata,
    Column("group_id", Text, primary_key=True),
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("committed_offset", BigInteger, nullable=False),
    Column("leader_epoch", Integer, nullable=False, default=-1),
    Column("metadata", Text, nullable=False, default=""),
    Column("commit_ms", BigInteger, nullable=False),
)

Index("group_offsets_topic", group_offsets.c.topic)

# Cluster mode (issue 5). A broker's row is its lease: renewed every heartbeat,
# replaced (incarnation + 1) when the broker registers again, deleted by the
# controller once expired. Owners of partitions live in partitions.owner_node.
brokers = Table(
    "brokers",
    metadata,
    Column("node_id", Integer, primary_key=True),
    Column("incarnation", Integer, nullable=False),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("rack", String(255), nullable=True),
    Column("registered_ms", BigInteger, nullable=False),
    Column("lease_expiry_ms", BigInteger, nullable=False),
    # Moves everything off this broker and keeps new partitions away (drain).
    Column("draining", Boolean, nullable=False, default=False),
    # Load reported with each heartbeat: bytes/s in and out, and per partition
    # as JSON {"topic_id:partition": [in, out]} for self-balancing.
    Column("bytes_in", BigInteger, nullable=False, default=0),
    Column("bytes_out", BigInteger, nullable=False, default=0),
    Column("load", Text, nullable=False, default="{}"),
)

# One row (id = 1): the controller lease, taken with compare-and-set.
controller = Table(
    "controller",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("node_id", Integer, nullable=False),
    Column("incarnation", Integer, nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("lease_expiry_ms", BigInteger, nullable=False),
)

# Requested partition moves (AlterPartitionReassignments, `shoal partitions
# move`, drains, balancing). The controller moves the owner (moved_ms set);
# the target deletes the row once it has opened the stream.
reassignments = Table(
    "reassignments",
    metadata,
    Column("topic_id", Integer, ForeignKey("topics.id", ondelete="CASCADE"), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("source_node", Integer, nullable=True),
    Column("target_node", Integer, nullable=False),
    Column("requested_ms", BigInteger, nullable=False),
    Column("moved_ms", BigInteger, nullable=True),
    Column("reason", String(32), nullable=False, default="admin"),
)

# ACLs (issue 10), Kafka's model with its wire codes: one row per binding,
# no duplicates. Every change bumps counters["acls.version"] in the same
# transaction; brokers poll that one row to reload.
acls = Table(
    "acls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("resource_type", Integer, nullable=False),
    Column("resource_name", String(1024), nullable=False),
    Column("pattern_type", Integer, nullable=False),
    Column("principal", String(1024), nullable=False),
    Column("host", String(64), nullable=False),
    Column("operation", Integer, nullable=False),
    Column("permission", Integer, nullable=False),
    UniqueConstraint(
        "resource_type",
        "resource_name",
        "pattern_type",
        "principal",
        "host",
        "operation",
        "permission",
        name="acls_binding",
    ),
)

# Client quotas (issue 10): one row per entity and key. `entity` is the
# canonical JSON of security.quotas.Entity ({"user":"alice"}, null for
# <default>). Every change bumps counters["quotas.version"] in the same
# transaction; brokers poll that row to reload. Added after schema v1:
# migrate()'s create_all adds the table to an existing database.
client_quotas = Table(
    "client_quotas",
    metadata,
    Column("entity", String(2048), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", Float, nullable=False),
)

# Migration links (issue 12): a source cluster mirrored into this one with its
# offsets. `settings` holds the source's client settings (librdkafka names),
# secrets included: they are never logged or printed (link.spec.redact).
# Every change by `shoal link` bumps counters["links.version"]; brokers poll it.
# Added after schema v1: migrate()'s create_all adds them to an existing database.
links = Table(
    "links",
    metadata,
    Column("name", String(249), primary_key=True),
    Column("source", String(1024), nullable=False),
    Column("settings", Text, nullable=False, default="{}"),
    Column("topics", String(1024), nullable=False),
    Column("groups", String(1024), nullable=False, default=""),
    Column("prefix", String(249), nullable=False, default=""),
    Column("paused", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    # Produce to a mirror topic is forwarded to the source (cutover without a stop).
    Column("write_through", Boolean, nullable=False, default=False),
)

# One row per mirror topic: read-only for clients until its state is
# "promoted". "promoting" asks the owners to stop once each partition has
# reached the source's end.
link_topics = Table(
    "link_topics",
    metadata,
    Column("mirror", String(249), primary_key=True),
    Column("link", String(249), nullable=False),
    Column("source_topic", String(249), nullable=False),
    Column("state", String(16), nullable=False),
    Column("state_ms", BigInteger, nullable=False),
)

# Per mirror partition, written by its owner: the source's bounds last seen
# (the mirror's own end is its stream's end: offsets are the source's), bytes
# copied, whether promotion reached the end, and the last error.
link_partitions = Table(
    "link_partitions",
    metadata,
    Column("mirror", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("source_start", BigInteger, nullable=False, default=0),
    Column("source_end", BigInteger, nullable=False, default=0),
    Column("mirror_end", BigInteger, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("promoted", Boolean, nullable=False, default=False),
    Column("error", Text, nullable=False, default=""),
    Column("updated_ms", BigInteger, nullable=False),
    # When the mirror last held the source's end (0: not yet): lag in seconds.
    Column("caught_up_ms", BigInteger, nullable=False, default=0),
)

# Reverse links (rollback after promotion): a promoted topic whose new records
# are copied back to the link's source, so the old cluster stays a place to go
# back to. State: "copying", "stopping" (`shoal link rollback` waits for the
# end; the topic is read-only here meanwhile), "rolled_back".
link_reverse = Table(
    "link_reverse",
    metadata,
    Column("mirror", String(249), primary_key=True),
    Column("link", String(249), nullable=False),
    Column("state", String(16), nullable=False),
    Column("state_ms", BigInteger, nullable=False),
)

# The reverse link's offset map, in ranges: `count` offsets from `shoal_start`
# here are at `source_start` on the source (the source assigns offsets when it
# takes a produce). Usually one row per partition: ranges that continue each
# other are merged.
link_offset_map = Table(
    "link_offset_map",
    metadata,
    Column("mirror", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("shoal_start", BigInteger, primary_key=True),
    Column("source_start", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
)

# Per reversed partition, written by its owner with the map rows: Shoal's end,
# how far the copy got (`copied_to`: the next Shoal offset to copy), the
# source's end as the map has it, offsets found on the source after a restart
# that were written but not yet mapped (`recovered`), the last error, and
# `stopped`: the topic is read-only here and everything was copied (rollback).
link_reverse_partitions = Table(
    "link_reverse_partitions",
    metadata,
    Column("mirror", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("shoal_end", BigInteger, nullable=False, default=0),
    Column("copied_to", BigInteger, nullable=False, default=0),
    Column("source_end", BigInteger, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("recovered", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=False, default=""),
    Column("stopped", Boolean, nullable=False, default=False),
    Column("updated_ms", BigInteger, nullable=False),
)
