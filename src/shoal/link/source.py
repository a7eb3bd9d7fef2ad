"""An async Kafka client for a link's source cluster: just the requests a
mirror needs, with TLS and SASL (PLAIN, SCRAM) as librdkafka's settings name
them.

Fetch answers carry record batches as raw bytes, which is the point: batches
are copied whole and unchanged (confluent-kafka cannot hand them out). Mostly
non-flexible request versions are used (header v1, response header v0), which
Kafka accepts from 2.x through 4.x; InitProducerId is v3, flexible (tansu
answers v0-v2 with an error: it wants their producer id and epoch fields).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import logging
import ssl
import struct
from dataclasses import dataclass
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.api_versions.v0.request import ApiVersionsRequest
from kio.schema.describe_configs.v2.request import DescribeConfigsRequest, DescribeConfigsResource
from kio.schema.describe_groups.v4.request import DescribeGroupsRequest
from kio.schema.fetch.v11.request import FetchPartition, FetchRequest, FetchTopic
from kio.schema.find_coordinator.v2.request import FindCoordinatorRequest
from kio.schema.init_producer_id.v3.request import InitProducerIdRequest
from kio.schema.list_groups.v2.request import ListGroupsRequest
from kio.schema.list_offsets.v4.request import (
    ListOffsetsPartition,
    ListOffsetsRequest,
    ListOffsetsTopic,
)
from kio.schema.metadata.v8.request import MetadataRequest
from kio.schema.offset_commit.v7.request import (
    OffsetCommitRequest,
    OffsetCommitRequestPartition,
    OffsetCommitRequestTopic,
)
from kio.schema.offset_fetch.v5.request import OffsetFetchRequest
from kio.schema.produce.v7.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.sasl_authenticate.v1.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest
from kio.schema.types import BrokerId, GroupId, TopicName
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import Records, i8, i16, i32, i32Timedelta, i64

from shoal.link.spec import SourceSettings
from shoal.protocol.errors import RequestDecodeError
from shoal.protocol.guard import check_body

log = logging.getLogger("shoal.link.source")

_API_VERSIONS = (18, 0)
_METADATA = (3, 8)
_FETCH = (1, 11)
_PRODUCE = (0, 7)
_LIST_OFFSETS = (2, 4)
_DESCRIBE_CONFIGS = (32, 2)
_LIST_GROUPS = (16, 2)
_OFFSET_FETCH = (9, 5)
_FIND_COORDINATOR = (10, 2)
_DESCRIBE_GROUPS = (15, 4)
_OFFSET_COMMIT = (8, 7)
_INIT_PRODUCER_ID = (22, 3)
_SASL_HANDSHAKE = (17, 1)
_SASL_AUTHENTICATE = (36, 1)
_MAX_FRAME = 256 * 1024 * 1024
#: Kafka's DYNAMIC_TOPIC_CONFIG source: a topic's own overrides
_TOPIC_OVERRIDE = 1


class SourceError(Exception):
    """The source could not be reached or refused; the message names it."""


class SourceAuthError(SourceError):
    """The source refused the link's credentials: retrying will not help."""


class ProduceRefused(SourceError):
    """The source answered a produce with an error code (`error`: Kafka's name)."""

    def __init__(self, message: str, error: str) -> None:
        super().__init__(message)
        self.error = error


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SourceError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def tls_context(settings: SourceSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=settings.ca)
    ctx.check_hostname = settings.check_hostname
    if settings.cert:
        ctx.load_cert_chain(settings.cert, settings.key, settings.key_password)
    return ctx


class Connection:
    """One connection to one source broker; one request at a time."""

    def __init__(
        self, address: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.address = address
        self.reader = reader
        self.writer = writer
        self._correlation = 0
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, address: str, settings: SourceSettings, timeout: float) -> Connection:
        host, port = split_address(address)
        try:
            ctx = tls_context(settings) if settings.tls else None
        except (OSError, ssl.SSLError) as exc:
            raise SourceError(f"TLS settings for {address}: {exc}") from None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=ctx, server_hostname=host if ctx else None, limit=1 << 20
                ),
                timeout,
            )
        except TimeoutError:
            raise SourceError(f"cannot reach {address}: no answer within {timeout:g}s") from None
        except ssl.SSLError as exc:
            raise SourceError(f"TLS handshake with {address} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise SourceError(f"cannot reach {address}: {exc.strerror or exc}") from None
        conn = cls(address, reader, writer)
        try:
            if settings.sasl:
                await asyncio.wait_for(conn._authenticate(settings), timeout)
        except TimeoutError:
            conn.close()
            raise SourceError(f"{address}: no answer to SASL within {timeout:g}s") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        self.writer.close()

    async def _authenticate(self, settings: SourceSettings) -> None:
        hs = await self.request(_SASL_HANDSHAKE, SaslHandshakeRequest(mechanism=settings.mechanism))
        if hs.error_code.value != 0:
            raise SourceAuthError(
                f"{self.address} does not offer SASL {settings.mechanism} "
                f"(it offers {', '.join(hs.mechanisms) or 'none'})"
            )
        if settings.mechanism == "PLAIN":
            msg = f"\0{settings.username}\0{settings.password}".encode()
            await self._sasl_step(msg)
            return
        import scramp

        client = scramp.ScramClient([settings.mechanism], settings.username, settings.password)
        first = await self._sasl_step(client.get_client_first().encode())
        try:
            client.set_server_first(first.decode())
            final = await self._sasl_step(client.get_client_final().encode())
            client.set_server_final(final.decode())
        except scramp.ScramException as exc:
            raise SourceAuthError(f"{self.address}: SCRAM exchange failed: {exc}") from None

    async def _sasl_step(self, data: bytes) -> bytes:
        resp = await self.request(_SASL_AUTHENTICATE, SaslAuthenticateRequest(auth_bytes=data))
        if resp.error_code.value != 0:
            raise SourceAuthError(
                f"{self.address} refused the link's credentials: "
                f"{resp.error_message or resp.error_code.name}"
            )
        return bytes(resp.auth_bytes)

    async def request(self, api: tuple[int, int], body: Any) -> Any:
        async with self._lock:
            return await self._request(api, body)

    async def _request(self, api: tuple[int, int], body: Any) -> Any:
        key, version = api
        self._correlation += 1
        out = io.BytesIO()
        out.write(struct.pack(">hhih", key, version, self._correlation, 5) + b"shoal")
        schema = load_request_schema(key, version)
        flexible = bool(schema.__flexible__) and key != _API_VERSIONS[0]
        if flexible:
            out.write(b"\0")  # request header v2: no tagged fields
        entity_writer(schema)(out, body)
        data = out.getvalue()
        try:
            self.writer.write(struct.pack(">i", len(data)) + data)
            await self.writer.drain()
            (size,) = struct.unpack(">i", await self.reader.readexactly(4))
            if not 4 <= size <= _MAX_FRAME:
                raise SourceError(f"{self.address} sent a frame of {size} bytes")
            frame = await self.reader.readexactly(size)
        except asyncio.IncompleteReadError:
            raise SourceError(f"{self.address} closed the connection") from None
        except OSError as exc:
            raise SourceError(f"{self.address}: {exc.strerror or exc}") from None
        (correlation,) = struct.unpack_from(">i", frame)
        if correlation != self._correlation:
            raise SourceError(
                f"{self.address} answered request {correlation}, not {self._correlation}"
            )
        cls = load_response_schema(key, version)
        start = 4
        if flexible:  # response header v1: skip its tagged fields (none expected)
            if frame[4:5] != b"\0":
                raise SourceError(f"{self.address} sent response header tagged fields")
            start = 5
        try:
            check_body(frame, start, cls)
        except RequestDecodeError as exc:
            raise SourceError(f"{self.address} sent a {exc}") from None
        return entity_reader(cls)(frame, start)[0]


@dataclass(frozen=True, slots=True)
class SourceMetadata:
    brokers: dict[int, str]  # node id -> HOST:PORT
    partitions: dict[str, list[int]]  # topic -> leader node id per partition (-1: none)


@dataclass(frozen=True, slots=True)
class Fetched:
    topic: str
    partition: int
    error: str  # "none" or Kafka's error name
    high_watermark: int
    log_start: int
    records: bytes


class SourceCluster:
    """Connections to the brokers of one source cluster, opened on demand and
    dropped on any error (the next call reconnects)."""

    def __init__(self, bootstrap: str, settings: SourceSettings, timeout: float = 10.0) -> None:
        self.bootstrap = [a.strip() for a in bootstrap.split(",") if a.strip()]
        self.settings = settings
        self.timeout = timeout
        self._conns: dict[str, Connection] = {}
        self._brokers: dict[int, str] = {}
        self._leaders: dict[str, list[int]] = {}  # from the last metadata (see leader())

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._conns.clear()

    async def _conn(self, address: str) -> Connection:
        conn = self._conns.get(address)
        if conn is None:
            conn = await Connection.open(address, self.settings, self.timeout)
            self._conns[address] = conn
        return conn

    async def _call(self, address: str, api: tuple[int, int], body: Any, timeout: float) -> Any:
        conn = await self._conn(address)
        try:
            return await asyncio.wait_for(conn.request(api, body), timeout)
        except TimeoutError:
            self._drop(address)
            raise SourceError(f"{address}: no answer within {timeout:g}s") from None
        except BaseException:
            self._drop(address)
            raise

    def _drop(self, address: str) -> None:
        self._leaders = {}  # a broker failed: leaders may have moved
        conn = self._conns.pop(address, None)
        if conn is not None:
            conn.close()

    async def _any(self, api: tuple[int, int], body: Any) -> Any:
        """Ask the first bootstrap (or known) broker that answers."""
        errors = []
        for address in [*self._conns, *self.bootstrap, *self._brokers.values()]:
            try:
                return await self._call(address, api, body, self.timeout)
            except SourceAuthError:
                raise
            except SourceError as exc:
                errors.append(str(exc))
        raise SourceError("; ".join(dict.fromkeys(errors)) or "no source address")

    async def metadata(self) -> SourceMetadata:
        resp = await self._any(
            _METADATA,
            MetadataRequest(
                topics=None,
                allow_auto_topic_creation=False,
                include_cluster_authorized_operations=False,
                include_topic_authorized_operations=False,
            ),
        )
        self._brokers = {int(b.node_id): f"{b.host}:{b.port}" for b in resp.brokers}
        topics: dict[str, list[int]] = {}
        for t in resp.topics:
            if t.error_code.value != 0 or t.is_internal or t.name.startswith("__"):
                continue
            leaders = [-1] * len(t.partitions)
            for p in t.partitions:
                if 0 <= p.partition_index < len(leaders):
                    leaders[p.partition_index] = int(p.leader_id)
            topics[str(t.name)] = leaders
        self._leaders = topics
        return SourceMetadata(dict(self._brokers), topics)

    async def leader(self, topic: str, partition: int, refresh: bool = False) -> int:
        """The node leading a source partition, from the last metadata unless
        it does not know the partition or its leader (none during an
        election), or `refresh`. Forgotten when a request fails, or a produce
        or end-offset fetch is refused by the partition."""
        leaders = self._leaders.get(topic, [])
        if refresh or partition >= len(leaders) or leaders[partition] not in self._brokers:
            leaders = (await self.metadata()).partitions.get(topic, [])
        if partition >= len(leaders) or leaders[partition] not in self._brokers:
            raise SourceError(f"source partition {topic}-{partition} has no leader")
        return leaders[partition]

    async def fetch(
        self,
        node_id: int,
        wanted: list[tuple[str, int, int]],
        max_wait_ms: int,
        max_bytes: int,
        partition_max_bytes: int,
    ) -> list[Fetched]:
        """Raw batches from `offset` of each (topic, partition, offset) led by
        `node_id`: everything up to the high watermark, aborted transactions
        and markers included (read_uncommitted), as a replica would copy."""
        address = self._brokers.get(node_id)
        if address is None:
            raise SourceError(f"source broker {node_id} is not in the source's metadata")
        by_topic: dict[str, list[FetchPartition]] = {}
        for topic, partition, offset in wanted:
            by_topic.setdefault(topic, []).append(
                FetchPartition(
                    partition=i32(partition),
                    current_leader_epoch=i32(-1),
                    fetch_offset=i64(offset),
                    log_start_offset=i64(-1),
                    partition_max_bytes=i32(partition_max_bytes),
                )
            )
        body = FetchRequest(
            replica_id=BrokerId(-1),
            max_wait=i32Timedelta.parse(datetime.timedelta(milliseconds=max_wait_ms)),
            min_bytes=i32(1),
            max_bytes=i32(max_bytes),
            isolation_level=i8(0),
            session_id=i32(0),
            session_epoch=i32(-1),
            topics=tuple(
                FetchTopic(topic=TopicName(t), partitions=tuple(ps)) for t, ps in by_topic.items()
            ),
            forgotten_topics_data=(),
            rack_id="",
        )
        resp = await self._call(address, _FETCH, body, self.timeout + max_wait_ms / 1000)
        if resp.error_code.value != 0:
            raise SourceError(f"{address}: fetch failed: {resp.error_code.name}")
        return [
            Fetched(
                str(t.topic),
                int(p.partition_index),
                p.error_code.name,
                int(p.high_watermark),
                int(p.log_start_offset),
                bytes(p.records or b""),
            )
            for t in resp.responses
            for p in t.partitions
        ]

    async def produce(
        self, node_id: int, topic: str, partition: int, records: bytes, timeout: float
    ) -> int:
        """Write `records` to a source partition (acks=all); its base offset."""
        address = self._brokers.get(node_id)
        if address is None:
            raise SourceError(f"source broker {node_id} is not in the source's metadata")
        body = ProduceRequest(
            transactional_id=None,
            acks=i16(-1),
            timeout=i32Timedelta.parse(datetime.timedelta(seconds=timeout)),
            topic_data=(
                TopicProduceData(
                    name=TopicName(topic),
                    partition_data=(
                        PartitionProduceData(index=i32(partition), records=Records(records)),
                    ),
                ),
            ),
        )
        resp = await self._call(address, _PRODUCE, body, timeout + self.timeout)
        part = resp.responses[0].partition_responses[0]
        if part.error_code.value != 0:
            self._leaders.pop(topic, None)
            raise ProduceRefused(
                f"{address}: produce to {topic}-{partition}: {part.error_code.name}",
                part.error_code.name,
            )
        return int(part.base_offset)

    async def init_producer_id(self) -> tuple[int, int]:
        """A new idempotent producer id and epoch on the source (reverse links)."""
        resp = await self._any(
            _INIT_PRODUCER_ID,
            InitProducerIdRequest(
                transactional_id=None,
                transaction_timeout=i32Timedelta.parse(datetime.timedelta(seconds=60)),
            ),
        )
        if resp.error_code.value != 0:
            raise SourceError(f"no producer id from the source: {resp.error_code.name}")
        return int(resp.producer_id), int(resp.producer_epoch)

    async def _coordinator(self, group: str) -> str:
        found = await self._any(
            _FIND_COORDINATOR, FindCoordinatorRequest(key=group, key_type=i8(0))
        )
        if found.error_code.value != 0:
            raise SourceError(f"no coordinator for group {group!r}: {found.error_code.name}")
        return f"{found.host}:{found.port}"

    async def group_members(self, group: str) -> int:
        """How many members GROUP has on the source (0: empty or unknown)."""
        address = await self._coordinator(group)
        resp = await self._call(
            address,
            _DESCRIBE_GROUPS,
            DescribeGroupsRequest(groups=(GroupId(group),), include_authorized_operations=False),
            self.timeout,
        )
        [g] = resp.groups
        if g.error_code.value != 0:
            raise SourceError(f"group {group!r}: {g.error_code.name}")
        return len(g.members)

    async def commit_offsets(
        self, group: str, offsets: dict[tuple[str, int], tuple[int, str]]
    ) -> None:
        """Set GROUP's committed offsets on the source, as an admin does
        (no member: the group must be empty there)."""
        address = await self._coordinator(group)
        by_topic: dict[str, list[OffsetCommitRequestPartition]] = {}
        for (topic, partition), (offset, metadata) in sorted(offsets.items()):
            by_topic.setdefault(topic, []).append(
                OffsetCommitRequestPartition(
                    partition_index=i32(partition),
                    committed_offset=i64(offset),
                    committed_metadata=metadata,
                )
            )
        resp = await self._call(
            address,
            _OFFSET_COMMIT,
            OffsetCommitRequest(
                group_id=GroupId(group),
                generation_id_or_member_epoch=i32(-1),
                member_id="",
                group_instance_id=None,
                topics=tuple(
                    OffsetCommitRequestTopic(name=TopicName(t), partitions=tuple(ps))
                    for t, ps in by_topic.items()
                ),
            ),
            self.timeout,
        )
        errors = sorted(
            {
                f"{t.name}-{p.partition_index}: {p.error_code.name}"
                for t in resp.topics
                for p in t.partitions
                if p.error_code.value != 0
            }
        )
        if errors:
            raise SourceError(f"group {group!r}: commit refused ({', '.join(errors)})")

    async def offsets(self, topic: str, partition: int) -> tuple[int, int]:
        """(log start, high watermark) of a source partition, from its leader."""
        address = self._brokers[await self.leader(topic, partition, refresh=True)]
        out = []
        for ts in (-2, -1):  # EARLIEST, LATEST
            resp = await self._call(
                address,
                _LIST_OFFSETS,
                ListOffsetsRequest(
                    replica_id=BrokerId(-1),
                    isolation_level=i8(0),
                    topics=(
                        ListOffsetsTopic(
                            name=TopicName(topic),
                            partitions=(
                                ListOffsetsPartition(
                                    partition_index=i32(partition),
                                    current_leader_epoch=i32(-1),
                                    timestamp=i64(ts),
                                ),
                            ),
                        ),
                    ),
                ),
                self.timeout,
            )
            part = resp.topics[0].partitions[0]
            if part.error_code.value != 0:
                raise SourceError(f"offsets of {topic}-{partition}: {part.error_code.name}")
            out.append(int(part.offset))
        return out[0], out[1]

    async def end_offset(self, topic: str, partition: int, at: int) -> int:
        """A source partition's high watermark from a Fetch at offset `at`
        (tansu answers ListOffsets' latest wrongly; its Fetch is right), or
        from ListOffsets when `at` is out of range or nothing answers."""
        node = await self.leader(topic, partition)
        # (tansu answers a Fetch with max_wait 0 with no partitions at all)
        found = await self.fetch(node, [(topic, partition, at)], 100, 1024, 1024)
        if found and found[0].error == "none":
            return found[0].high_watermark
        if found and found[0].error != "offset_out_of_range":
            self._leaders.pop(topic, None)
            raise SourceError(f"source {topic}-{partition}: {found[0].error}")
        return (await self.offsets(topic, partition))[1]

    async def topic_configs(self, topics: list[str]) -> dict[str, dict[str, str]]:
        """Each topic's own overrides (not the source's broker defaults)."""
        if not topics:
            return {}
        resp = await self._any(
            _DESCRIBE_CONFIGS,
            DescribeConfigsRequest(
                resources=tuple(
                    DescribeConfigsResource(
                        resource_type=i8(2), resource_name=t, configuration_keys=None
                    )
                    for t in topics
                ),
                include_synonyms=False,
            ),
        )
        out: dict[str, dict[str, str]] = {}
        for r in resp.results:
            if r.error_code.value != 0:
                continue
            out[r.resource_name] = {
                c.name: c.value
                for c in r.configs
                if c.config_source == _TOPIC_OVERRIDE and c.value is not None and not c.is_sensitive
            }
        return out

    async def groups(self) -> list[str]:
        """Consumer group ids, from every source broker."""
        if not self._brokers:
            await self.metadata()
        found: set[str] = set()
        for address in list(self._brokers.values()):
            resp = await self._call(address, _LIST_GROUPS, ListGroupsRequest(), self.timeout)
            if resp.error_code.value == 0:
                found.update(str(g.group_id) for g in resp.groups)
        return sorted(found)

    async def group_offsets(self, group: str) -> dict[tuple[str, int], tuple[int, str]]:
        """GROUP's committed offsets on the source: (topic, partition) -> (offset, metadata)."""
        address = await self._coordinator(group)
        resp = await self._call(
            address,
            _OFFSET_FETCH,
            OffsetFetchRequest(group_id=GroupId(group), topics=None),
            self.timeout,
        )
        if resp.error_code.value != 0:
            raise SourceError(f"offsets of group {group!r}: {resp.error_code.name}")
        return {
            (str(t.name), int(p.partition_index)): (int(p.committed_offset), p.metadata or "")
            for t in resp.topics
            for p in t.partitions
            if p.error_code.value == 0 and p.committed_offset >= 0
        }

    async def check(self) -> SourceMetadata:
        """Connect, authenticate and read metadata: what `link create` proves first."""
        await self._any(_API_VERSIONS, ApiVersionsRequest())
        return await self.metadata()
