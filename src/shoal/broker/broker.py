"""The broker's state: configuration, metadata, storage engine, topic catalog.

Handlers receive this object; it is the only thing they share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.broker.advertised import Advertised
from shoal.broker.fetch_sessions import SessionCache
from shoal.broker.topics import GroupTopics, Topic, TopicCatalog
from shoal.config import BrokerConfig
from shoal.group.consumer import ConsumerGroupConfig
from shoal.group.coordinator import GroupConfig, GroupCoordinator
from shoal.meta.acls import AclStore
from shoal.meta.quotas import QuotaStore
from shoal.meta.security import SecurityStore
from shoal.meta.store import MetaStore, PartitionRecord
from shoal.meta.transactions import TxnRepository
from shoal.producer.ids import ProducerIdAllocator
from shoal.protocol.errors import ErrorCode, KafkaError
from shoal.security.acls import AclBinding, AclOperation, ResourceType
from shoal.security.audit import AuditLog, Who
from shoal.security.authorizer import Authorizer, parse_super_users, peer_host
from shoal.security.credentials import CredentialCache
from shoal.security.listeners import resolve_listeners
from shoal.security.quotas import Entity, Quotas
from shoal.security.sync import VersionPoller
from shoal.storage.compaction import CompactionConfig
from shoal.storage.objectstore import ObjectStore
from shoal.storage.streams import EngineConfig, StreamEngine
from shoal.storage.wal import WalConfig
from shoal.txn.coordinator import TransactionCoordinator, TxnConfig

if TYPE_CHECKING:
    from shoal.broker.txn_io import MarkerPoller
    from shoal.cluster.member import ClusterMember

log = logging.getLogger("shoal.broker")

#: the error code of a denial, by resource type (Kafka's)
DENIED: dict[ResourceType, ErrorCode] = {
    ResourceType.TOPIC: ErrorCode.topic_authorization_failed,
    ResourceType.GROUP: ErrorCode.group_authorization_failed,
    ResourceType.CLUSTER: ErrorCode.cluster_authorization_failed,
    ResourceType.TRANSACTIONAL_ID: ErrorCode.transactional_id_authorization_failed,
    ResourceType.DELEGATION_TOKEN: ErrorCode.delegation_token_authorization_failed,
    ResourceType.USER: ErrorCode.cluster_authorization_failed,
}


@dataclass(frozen=True, slots=True)
class Node:
    node_id: int
    host: str
    port: int
    rack: str | None


class Broker:
    groups: GroupCoordinator  # set by open()
    txn: TransactionCoordinator  # set by open()
    markers: MarkerPoller | None = None  # cluster mode: markers asked of this broker
    cluster: ClusterMember | None = None  # cluster mode only

    def __init__(
        self,
        config: BrokerConfig,
        meta: MetaStore,
        store: ObjectStore,
        engine: StreamEngine,
        catalog: TopicCatalog,
        cluster_id: str,
    ) -> None:
        self.config = config
        self.meta = meta
        self.store = store
        self.engine = engine
        self.topics = catalog
        self.cluster_id = cluster_id
        # KIP-227 sessions, in memory: a restart answers FETCH_SESSION_ID_NOT_FOUND.
        self.fetch_sessions = SessionCache(
            int(config["max.incremental.fetch.session.cache.slots"]),
            int(config["min.incremental.fetch.session.eviction.ms"]),
        )
        engine.on_advance.append(self.fetch_sessions.advanced)
        host, port = config.advertised
        self.node = Node(int(config["node.id"]), host, port, config["rack"] or None)
        self.listeners = resolve_listeners(config)
        self.advertised = Advertised(self.node.node_id, self.listeners, meta)
        self.started = time.time()
        # Mirror topics of migration links (topic -> link), read-only for
        # clients until promoted; kept by shoal.link's manager.
        self.mirrors: dict[str, str] = {}
        # Mirror topics whose link forwards produce to the source (write-through):
        # (topic, partition, records) -> base offset, once the source and the
        # mirror both hold the records.
        self.forwarders: dict[str, Callable[[str, int, bytes], Awaitable[int]]] = {}
        # More Prometheus metric families, read at scrape time (links add theirs).
        self.collectors: list[Callable[[], Iterable[Any]]] = []
        self.producer_ids = ProducerIdAllocator(meta)
        self.acl_store = AclStore(meta)
        credential_store = SecurityStore(meta)
        self.credentials = CredentialCache()
        self.credential_sync = VersionPoller(
            "SCRAM credentials",
            self.credentials,
            credential_store.version,
            credential_store.load_all,
            int(config["acl.refresh.interval.ms"]) / 1000,
        )
        self.audit = AuditLog(
            config["audit.log.path"],
            config["audit.log.max.bytes"],
            config["audit.log.backup.count"],
        )
        self.authorizer = Authorizer(
            bool(config["authorizer.class.name"]),
            parse_super_users(config["super.users"]),
            bool(config["allow.everyone.if.no.acl.found"]),
        )
        self.acl_sync: VersionPoller[list[AclBinding]] = VersionPoller(
            "ACLs",
            self.authorizer,
            self.acl_store.version,
            self.load_acls,
            int(config["acl.refresh.interval.ms"]) / 1000,
        )
        self.quota_store = QuotaStore(meta)
        self.quotas = Quotas(
            int(config["quota.window.num"]), float(config["quota.window.size.seconds"])
        )
        self.quota_sync = VersionPoller(
            "client quotas",
            self.quotas,
            self.quota_store.version,
            self.load_quotas,
            int(config["quota.refresh.interval.ms"]) / 1000,
        )

    @classmethod
    async def open(cls, config: BrokerConfig) -> Broker:
        store = ObjectStore(config.objects_url, config.object_store_options)
        await store.check()
        meta = await MetaStore.open(config.metadata_url)
        engine = StreamEngine(
            store,
            meta,
            EngineConfig(
                node_id=int(config["node.id"]),
                wal=WalConfig(
                    max_bytes=config["wal.max.bytes"],
                    linger_ms=config.wal_linger_ms,
                    eager=config.wal_eager,
                    idle_seal_bytes=config["wal.idle.seal.bytes"],
                    max_inflight=config["wal.max.inflight"],
                    buffer_max_bytes=config["wal.buffer.max.bytes"],
                ),
                compaction=CompactionConfig(
                    min_age_ms=config["compaction.min.age.ms"],
                    max_bytes=config["compaction.max.bytes"],
                    block_bytes=config["compaction.block.bytes"],
                    stream_object_bytes=config["compaction.stream.object.bytes"],
                    merge_min_objects=config["compaction.merge.min.objects"],
                    merge_max_objects=config["compaction.merge.max.objects"],
                    rewrite_live_ratio=config["compaction.rewrite.live.ratio"],
                    delete_grace_ms=config["object.delete.grace.ms"],
                    process=config["compaction.process"],
                ),
                log_cache_bytes=config["log.cache.bytes"],
                log_cache_max_age_ms=config["log.cache.max.age.ms"],
                block_cache_bytes=config["block.cache.bytes"],
                catchup_bytes_per_s=config["catchup.read.max.bytes.per.sec"],
                orphan_grace_ms=config["object.orphan.grace.ms"],
                reader_refresh_ms=config["cluster.reader.refresh.ms"],
                disk_dirs=config.local_dirs,
                min_free_bytes=config["storage.min.free.bytes"],
            ),
        )
        engine.disk.start()
        if not config.cluster_mode:
            # Objects past the metadata's ends (an upload just before a crash,
            # an older backup restored) are adopted or refuse the start; in a
            # cluster the first broker to start does it (cluster/member.py).
            from shoal.storage.inventory import reconcile

            await reconcile(store, meta, int(config["node.id"]))
        catalog = TopicCatalog(meta, config)
        await catalog.load()
        engine.labeler = catalog.stream_label
        broker = cls(config, meta, store, engine, catalog, await meta.cluster_id())
        broker.groups = await GroupCoordinator.open(
            meta,
            GroupConfig.from_config(config),
            ConsumerGroupConfig.from_config(config),
            GroupTopics(catalog),
        )
        await broker.acl_sync.refresh()
        await broker.quota_sync.refresh()
        await broker.credential_sync.refresh()
        # Always polled: `shoal users --metadata` writes behind a lone broker's back.
        broker.credential_sync.start()
        if config.cluster_mode:
            broker.acl_sync.start()
            broker.quota_sync.start()
            from shoal.cluster.member import ClusterMember

            await broker.advertised.publish()  # before others can see this broker
            node = broker.node
            catalog.cluster_mode = True
            broker.cluster = ClusterMember(
                config,
                meta,
                engine,
                catalog,
                broker.groups,
                node.node_id,
                node.host,
                node.port,
                node.rack,
            )
            catalog.on_created = broker.cluster.assign_new
            await broker.cluster.start()
        from shoal.broker.txn_io import BrokerTxnIO, MarkerPoller

        repo = TxnRepository(meta)
        broker.txn = TransactionCoordinator(
            repo,
            broker.producer_ids.allocate,
            BrokerTxnIO(broker, repo),
            TxnConfig.from_config(config),
            shared=config.cluster_mode,
        )
        broker.txn.owns = lambda tid: broker.coordinator_node(tid).node_id == broker.node.node_id
        if config.cluster_mode:
            broker.markers = MarkerPoller(broker, repo)
            broker.markers.start()
        await broker.txn.start()
        return broker

    async def close(self) -> None:
        """Commit everything pending, then let go of the metadata store."""
        if self.cluster is not None:
            await self.cluster.stop()
        await self.acl_sync.stop()
        await self.quota_sync.stop()
        await self.credential_sync.stop()
        self.audit.close()
        if hasattr(self, "txn"):
            await self.txn.close()
        if self.markers is not None:
            await self.markers.stop()
        await self.groups.close()
        await self.engine.close()
        await self.meta.close()

    async def load_acls(self) -> tuple[int, list[AclBinding]]:
        version, rows = await self.acl_store.load()
        return version, [AclBinding.of(*row) for row in rows]

    async def load_quotas(self) -> tuple[int, dict[Entity, dict[str, float]]]:
        version, rows = await self.quota_store.load()
        configs: dict[Entity, dict[str, float]] = {}
        for entity, key, value in rows:
            configs.setdefault(Entity.from_key(entity), {})[key] = value
        return version, configs

    def authorize(
        self,
        client: Who,
        op: AclOperation,
        rtype: ResourceType,
        name: str,
        log_denial: bool = True,
    ) -> bool:
        """May this client do `op` on the resource? (Always, with no authorizer.)"""
        if not self.authorizer.enabled:
            return True
        if self.authorizer.authorize_peer(client.principal, client.peer, op, rtype, name):
            return True
        if log_denial:
            log.info(
                "authorization denied: %s may not %s %s %r (client %s)",
                client.principal,
                op.name,
                rtype.name,
                name,
                client,
            )
            self.audit.denied(client, op.name, rtype.name, name)
        return False

    def require(self, client: Who, op: AclOperation, rtype: ResourceType, name: str) -> None:
        """`authorize`, raising the Kafka error a client expects when denied."""
        if not self.authorize(client, op, rtype, name):
            raise KafkaError(
                DENIED[rtype], f"{client.principal} may not {op.name} {rtype.name} {name!r}"
            )

    def authorize_any(self, client: Who, op: AclOperation, rtype: ResourceType) -> bool:
        """May this client do `op` on at least one resource of the type?"""
        return self.authorizer.authorize_any(client.principal, peer_host(client.peer), op, rtype)

    def partition(self, topic_name: str, index: int) -> tuple[Topic, PartitionRecord]:
        topic = self.topics.get(topic_name)
        if topic is None or not 0 <= index < len(topic.partitions):
            raise KafkaError(
                ErrorCode.unknown_topic_or_partition, f"no partition {topic_name}-{index}"
            )
        return topic, topic.partitions[index]

    def live_nodes(self) -> list[Node]:
        """Brokers to list in Metadata: every live one in a cluster."""
        if self.cluster is None or not self.cluster.live:
            return [self.node]
        return [Node(b.node_id, b.host, b.port, b.rack) for b in self.cluster.live]

    def leaders(self, parts: Sequence[PartitionRecord]) -> list[int]:
        """The leader to name for each partition (Metadata,
        DescribeTopicPartitions): this broker, alone; in a cluster the owner
        while it is live, else -1 (LEADER_NOT_AVAILABLE)."""
        if self.cluster is None:
            return [self.node.node_id] * len(parts)
        live = {b.node_id for b in self.cluster.live}
        return [p.owner if p.owner is not None and p.owner in live else -1 for p in parts]

    def coordinator_node(self, key: str) -> Node:
        """The broker that coordinates a group (this one, alone)."""
        if self.cluster is None:
            return self.node
        target = self.cluster.coordinator_for(key)
        for n in self.live_nodes():
            if n.node_id == target:
                return n
        return self.node

    def controller_id(self) -> int:
        if self.cluster is None:
            return self.node.node_id
        return self.cluster.controller_id

    def owns(self, part: PartitionRecord) -> bool:
        """May this broker write (and answer ListOffsets for) the partition?
        Always on one node; in a cluster, while it is the owner with a live lease."""
        return self.cluster is None or self.cluster.owns(part)

    def check_owner(self, part: PartitionRecord) -> None:
        if not self.owns(part):
            raise KafkaError(
                ErrorCode.not_leader_or_follower,
                f"partition owned by node {part.owner}, not {self.node.node_id}",
            )

    def record_traffic(
        self, topic: Topic, part: PartitionRecord, bytes_in: int, bytes_out: int
    ) -> None:
        if self.cluster is not None:
            self.cluster.record(topic.id, part.partition, bytes_in, bytes_out)

    def check_leader_epoch(self, part: PartitionRecord, current_leader_epoch: int) -> None:
        """Clients send the leader epoch they know; Kafka fences stale or future ones."""
        if current_leader_epoch < 0 or current_leader_epoch == part.leader_epoch:
            return
        if current_leader_epoch < part.leader_epoch:
            raise KafkaError(ErrorCode.fenced_leader_epoch)
        raise KafkaError(ErrorCode.unknown_leader_epoch)
