"""A minimal blocking Kafka request client, for the few admin APIs that
confluent-kafka does not expose (OffsetDelete, DescribeLogDirs).

It speaks non-flexible request versions (header v1, response header v0),
which Kafka accepts from 2.4 (OffsetDelete's first release) through 4.x (KIP-896
dropped only versions older than Kafka 2.1's), and flexible ones (header v2,
response header v1) for the APIs born flexible (ListTransactions,
DescribeTransactions), and checks ApiVersions first so a cluster without the
API gets a clear "not supported" instead of a dropped connection.
"""

from __future__ import annotations

import io
import socket
import struct
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.schema.api_versions.v0.request import ApiVersionsRequest
from kio.schema.describe_log_dirs.v1.request import DescribeLogDirsRequest
from kio.schema.find_coordinator.v2.request import FindCoordinatorRequest
from kio.schema.offset_delete.v0.request import (
    OffsetDeleteRequest,
    OffsetDeleteRequestPartition,
    OffsetDeleteRequestTopic,
)
from kio.schema.types import GroupId, TopicName
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i8, i32

from shoal.protocol.errors import RequestDecodeError
from shoal.protocol.guard import check_body

_FIND_COORDINATOR = (10, 2)
_API_VERSIONS = (18, 0)
_DESCRIBE_LOG_DIRS = (35, 1)
_OFFSET_DELETE = (47, 0)
_MAX_FRAME = 100 * 1024 * 1024


class WireError(Exception):
    """A request could not be sent or answered; the message names the address."""


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise WireError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(buf) and shift < 35:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    raise WireError("a response header's tagged fields are cut off")


def _skip_tags(buf: bytes, pos: int) -> int:
    """Past a tagged-fields section (count, then tag, size, bytes each)."""
    count, pos = _uvarint(buf, pos)
    for _ in range(count):
        _tag, pos = _uvarint(buf, pos)
        size, pos = _uvarint(buf, pos)
        pos += size
    if pos > len(buf):
        raise WireError("a response header's tagged fields are cut off")
    return pos


class Connection:
    """One TCP connection to one broker; requests are answered in order."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        host, port = split_address(address)
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise WireError(f"cannot reach {address}: {exc.strerror or exc}") from None
        self._correlation = 0
        self._versions: dict[int, tuple[int, int]] | None = None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            try:
                chunk = self.sock.recv(n - len(chunks))
            except OSError as exc:
                raise WireError(f"{self.address}: {exc.strerror or exc}") from None
            if not chunk:
                raise WireError(f"{self.address} closed the connection")
            chunks += chunk
        return bytes(chunks)

    def request(self, api: tuple[int, int], body: Any) -> Any:
        key, version = api
        self._correlation += 1
        out = io.BytesIO()
        out.write(struct.pack(">hhih", key, version, self._correlation, 5) + b"shoal")
        flexible = bool(load_request_schema(key, version).__flexible__) and key != 18
        if flexible:
            out.write(b"\x00")  # header v2: no tagged fields
        entity_writer(load_request_schema(key, version))(out, body)
        data = out.getvalue()
        try:
            self.sock.sendall(struct.pack(">i", len(data)) + data)
        except OSError as exc:
            raise WireError(f"{self.address}: {exc.strerror or exc}") from None
        (size,) = struct.unpack(">i", self._recv(4))
        if not 4 <= size <= _MAX_FRAME:
            raise WireError(f"{self.address} sent a frame of {size} bytes")
        frame = self._recv(size)
        (correlation,) = struct.unpack(">i", frame[:4])
        if correlation != self._correlation:
            raise WireError(
                f"{self.address} answered request {correlation}, not {self._correlation}"
            )
        cls = load_response_schema(key, version)
        start = _skip_tags(frame, 4) if flexible else 4  # response header v1
        try:
            check_body(frame, start, cls)  # kio's reader trusts counts and nulls
        except RequestDecodeError as exc:
            raise WireError(f"{self.address} sent a {exc}") from None
        try:
            body, _size = entity_reader(cls)(frame, start)
        except Exception as exc:  # kio's decode errors (e.g. a -1 timestamp)
            raise WireError(f"{self.address}: cannot read its answer: {exc}") from None
        return body

    def supports(self, api: tuple[int, int]) -> bool:
        if self._versions is None:
            resp = self.request(_API_VERSIONS, ApiVersionsRequest())
            self._versions = {a.api_key: (a.min_version, a.max_version) for a in resp.api_keys}
        low, high = self._versions.get(api[0], (1, 0))
        return low <= api[1] <= high


def offset_delete(
    bootstrap: str, group: str, partitions: dict[str, list[int]], timeout: float
) -> tuple[str, dict[tuple[str, int], str]]:
    """Delete GROUP's committed offsets of `partitions` on its coordinator.

    Returns the group-level error name ("NONE" when fine) and each partition's
    error name."""
    with Connection(bootstrap, timeout) as conn:
        found = conn.request(_FIND_COORDINATOR, FindCoordinatorRequest(key=group, key_type=i8(0)))
        if found.error_code.name != "none":
            return found.error_code.name.upper(), {}
        coordinator = f"{found.host}:{found.port}"
    with Connection(coordinator, timeout) as conn:
        if not conn.supports(_OFFSET_DELETE):
            raise WireError(f"{coordinator} does not support OffsetDelete v0")
        topics = tuple(
            OffsetDeleteRequestTopic(
                name=TopicName(topic),
                partitions=tuple(
                    OffsetDeleteRequestPartition(partition_index=i32(p)) for p in parts
                ),
            )
            for topic, parts in partitions.items()
        )
        resp = conn.request(
            _OFFSET_DELETE, OffsetDeleteRequest(group_id=GroupId(group), topics=topics)
        )
    return resp.error_code.name.upper(), {
        (t.name, p.partition_index): p.error_code.name.upper()
        for t in resp.topics
        for p in t.partitions
    }


def log_dir_sizes(brokers: list[str], timeout: float) -> dict[tuple[str, int], int] | None:
    """Bytes per partition from DescribeLogDirs on every broker (the largest
    replica wins), or None when a broker does not offer DescribeLogDirs."""
    sizes: dict[tuple[str, int], int] = {}
    for address in brokers:
        with Connection(address, timeout) as conn:
            if not conn.supports(_DESCRIBE_LOG_DIRS):
                return None
            resp = conn.request(_DESCRIBE_LOG_DIRS, DescribeLogDirsRequest(topics=None))
        for result in resp.results:
            for topic in result.topics:
                for p in topic.partitions:
                    key = (topic.name, int(p.partition_index))
                    sizes[key] = max(sizes.get(key, 0), int(p.partition_size))
    return sizes
