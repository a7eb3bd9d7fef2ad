"""Test-side helpers to speak raw Kafka: build frames and record batches by hand,
so tests can send exactly the malformed input a real client never would."""

from __future__ import annotations

import functools
import io
import socket
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import crc32c
from kio.index import load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _varint(n: int) -> bytes:
    return _uvarint((n << 1) ^ (n >> 63))


def record(key: bytes | None, value: bytes | None, offset_delta: int, ts_delta: int = 0) -> bytes:
    body = bytearray(b"\x00")  # attributes
    body += _varint(ts_delta) + _varint(offset_delta)
    body += _varint(-1) if key is None else _varint(len(key)) + key
    body += _varint(-1) if value is None else _varint(len(value)) + value
    body += _varint(0)  # headers
    return _varint(len(body)) + bytes(body)


def make_batch(
    values: list[bytes | None],
    *,
    base_timestamp: int | None = None,
    records_count: int | None = None,
    last_offset_delta: int | None = None,
    magic: int = 2,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    corrupt_crc: bool = False,
    keys: list[bytes | None] | None = None,
) -> bytes:
    """An uncompressed v2 batch with a correct CRC unless told otherwise."""
    ts = int(time.time() * 1000) if base_timestamp is None else base_timestamp
    keys = keys or [None] * len(values)
    recs = b"".join(record(k, v, i) for i, (k, v) in enumerate(zip(keys, values, strict=True)))
    count = len(values) if records_count is None else records_count
    lod = len(values) - 1 if last_offset_delta is None else last_offset_delta
    after_crc = (
        struct.pack(">hiqqqhii", 0, lod, ts, ts, producer_id, producer_epoch, base_sequence, count)
        + recs
    )
    crc = crc32c.crc32c(after_crc) ^ (1 if corrupt_crc else 0)
    length = 4 + 1 + 4 + len(after_crc)  # epoch, magic, crc, rest
    return struct.pack(">qiibI", 0, length, -1, magic, crc) + after_crc


@functools.cache
def _request_codec(api_key: int, version: int) -> tuple[Callable[[Any, Any], None], bool]:
    """kio's writer for a request (building one takes ~0.1 ms: cached, so
    load generators measure the broker, not schema loading)."""
    cls = load_request_schema(api_key, version)
    return entity_writer(cls), bool(cls.__flexible__)


@functools.cache
def _response_codec(api_key: int, version: int) -> tuple[Callable[[Any, int], Any], int]:
    """kio's reader for a response and where its body starts (after the
    correlation id, and the empty tagged fields of header v1; ApiVersions
    always answers with header v0)."""
    resp = load_response_schema(api_key, version)
    return entity_reader(resp), 5 if resp.__flexible__ and api_key != 18 else 4


def request_frame(
    api_key: int, version: int, body: Any, correlation_id: int = 1, client_id: str = "test"
) -> bytes:
    write, flexible = _request_codec(api_key, version)
    out = io.BytesIO()
    cid = client_id.encode()
    out.write(struct.pack(">hhih", api_key, version, correlation_id, len(cid)) + cid)
    if flexible:
        out.write(b"\x00")
    write(out, body)
    data = out.getvalue()
    return struct.pack(">i", len(data)) + data


def decode_response(api_key: int, version: int, frame: bytes) -> Any:
    """The body of a response frame (without its size prefix)."""
    read, pos = _response_codec(api_key, version)
    return read(frame, pos)[0]


async def call_async(
    reader: Any, writer: Any, api_key: int, version: int, body: Any, correlation_id: int
) -> Any:
    """One request and its response over asyncio streams."""
    writer.write(request_frame(api_key, version, body, correlation_id))
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return decode_response(api_key, version, await reader.readexactly(size))


class RawClient:
    def __init__(self, bootstrap: str, timeout: float = 10.0) -> None:
        host, _, port = bootstrap.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> bytes:
        size = struct.unpack(">i", self._exact(4))[0]
        return self._exact(size)

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by broker")
            buf += chunk
        return bytes(buf)

    def call(self, api_key: int, version: int, body: Any, correlation_id: int = 1) -> Any:
        self.send_raw(request_frame(api_key, version, body, correlation_id))
        frame = self.read_frame()
        assert struct.unpack_from(">i", frame)[0] == correlation_id
        return decode_response(api_key, version, frame)

    def is_closed(self, wait: float = 5.0) -> bool:
        """True once the broker has closed this connection."""
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def fetch_request(
    topic: str | uuid.UUID,
    partitions: dict[int, int],
    max_bytes: int = 1 << 20,
    partition_max_bytes: int = 1 << 20,
    rack_id: str = "",
    version: int = 12,
    session: tuple[int, int] = (0, -1),
    forget: tuple[int, ...] = (),
) -> Any:
    """A Fetch body of `version` reading `partitions` ({partition: offset}) of
    one topic (its name, or its id from v13), answered at once (10 ms max
    wait) with whatever there is; `session` is (session id, epoch) and
    `forget` the partitions to drop from it. No partitions: no topic (an
    incremental fetch asking only for news)."""
    import datetime
    import importlib

    fr = importlib.import_module(f"kio.schema.fetch.v{version}.request")
    ref = {"topic_id": topic} if version >= 13 else {"topic": topic}
    return fr.FetchRequest(
        max_wait=datetime.timedelta(milliseconds=10),
        min_bytes=1,
        max_bytes=max_bytes,
        isolation_level=0,
        session_id=session[0],
        session_epoch=session[1],
        topics=(
            fr.FetchTopic(
                **ref,
                partitions=tuple(
                    fr.FetchPartition(
                        partition=p,
                        fetch_offset=offset,
                        partition_max_bytes=partition_max_bytes,
                        current_leader_epoch=-1,
                        last_fetched_epoch=-1,
                        log_start_offset=-1,
                    )
                    for p, offset in partitions.items()
                ),
            ),
        )
        if partitions
        else (),
        forgotten_topics_data=(fr.ForgottenTopic(**ref, partitions=forget),) if forget else (),
        rack_id=rack_id,
    )


def create_topic(
    bootstrap: str, name: str, partitions: int = 1, configs: dict[str, str] | None = None
) -> Any:
    """CreateTopics v7 for one topic; returns its ErrorCode."""
    import datetime

    from kio.schema.create_topics.v7 import request as ct
    from kio.schema.errors import ErrorCode

    body = ct.CreateTopicsRequest(
        topics=(
            ct.CreatableTopic(
                name=name,
                num_partitions=partitions,
                replication_factor=-1,
                assignments=(),
                configs=tuple(
                    ct.CreatableTopicConfig(name=k, value=v) for k, v in (configs or {}).items()
                ),
            ),
        ),
        timeout=datetime.timedelta(seconds=10),
        validate_only=False,
    )
    with RawClient(bootstrap) as c:
        return ErrorCode(c.call(19, 7, body).topics[0].error_code)


def produce(bootstrap: str, topic: str, records: bytes, partition: int = 0) -> Any:
    """Produce v9 (acks=all) of `records` to one partition; returns its response."""
    with RawClient(bootstrap) as c:
        return (
            c.call(0, 9, produce_request(topic, records, partition))
            .responses[0]
            .partition_responses[0]
        )


def produce_request(topic: str, records: bytes, partition: int = 0) -> Any:
    """A Produce v9 body (acks=all) of `records` to one partition."""
    import datetime

    from kio.schema.produce.v9 import request as pr

    return pr.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(seconds=10),
        topic_data=(
            pr.TopicProduceData(
                name=topic,
                partition_data=(pr.PartitionProduceData(index=partition, records=records),),
            ),
        ),
    )


def topic_id(bootstrap: str, name: str, version: int = 12) -> uuid.UUID:
    """The topic's id (KIP-516), asked by name with Metadata."""
    from kio.schema.errors import ErrorCode
    from kio.schema.metadata.v12 import request as mr

    body = mr.MetadataRequest(
        topics=(mr.MetadataRequestTopic(topic_id=None, name=name),),
        allow_auto_topic_creation=False,
        include_topic_authorized_operations=False,
    )
    with RawClient(bootstrap) as c:
        t = c.call(3, version, body).topics[0]
    assert t.error_code == ErrorCode.none, t
    assert isinstance(t.topic_id, uuid.UUID)
    return t.topic_id


def produce_many(bootstrap: str, topic: str, batches: dict[int, bytes]) -> list[Any]:
    """One Produce v9 (acks=all) carrying a batch for each partition
    ({partition: records}); returns the partition responses."""
    import datetime

    from kio.schema.produce.v9 import request as pr

    body = pr.ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(seconds=30),
        topic_data=(
            pr.TopicProduceData(
                name=topic,
                partition_data=tuple(
                    pr.PartitionProduceData(index=p, records=r) for p, r in batches.items()
                ),
            ),
        ),
    )
    with RawClient(bootstrap, timeout=60) as c:
        return list(c.call(0, 9, body).responses[0].partition_responses)
