"""Protocol fuzzing against a broker subprocess (issue 18): mutated frames of every
API and version the broker offers, over many connections, for a bounded time.
Afterwards the broker must be alive, answer ApiVersions and Metadata, have logged
no traceback, and a real confluent-kafka consumer must read every topic written
before the fuzzing to its end with exactly the records produced.

Seeded (SHOAL_FUZZ_SEED, default 18) and time-bounded (SHOAL_FUZZ_SECONDS,
default 25 in the suite; the campaign in BENCHMARKS ran ten seeds for longer).
Each frame gets its own connection followed by an ApiVersions probe, so every
mutation reaches the broker as the first request of a fresh connection
and the outcome is known: answered (the probe came back), closed, or timed out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import os
import random
import struct
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from kio.schema.create_partitions.v3 import request as cp
from kio.schema.create_partitions.v3.response import CreatePartitionsResponse
from kio.schema.delete_topics.v5.request import DeleteTopicsRequest
from kio.serial import entity_reader

from harness import BrokerProcess
from request_samples import ABORTS, VERSIONS, sample_frame
from shoal.protocol.apis import SUPPORTED
from wire import RawClient, create_topic, request_frame

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's own logs"
)

FUZZ_SECONDS = float(os.environ.get("SHOAL_FUZZ_SECONDS", "25"))
SEED = int(os.environ.get("SHOAL_FUZZ_SEED", "18"))
CONCURRENCY = 6  # connections in flight: moderate on a shared 2-core machine
ANSWER_WAIT = 2.0  # seconds to wait for the probe's answer
PROBE_ID = 0x5EED
PROBE = struct.pack(">ihhih", 10, 18, 0, PROBE_ID, -1)  # ApiVersions v0, null client id
TOPICS = {"a": 1, "b": 3, "c": 2}  # suffix -> partitions, written before fuzzing
RECORDS_PER_PARTITION = 40
FIVE_S = datetime.timedelta(seconds=5)
COUNTS = [
    b"\xff\xff\xff\xff\x0f",  # compact count 2^32 - 2
    b"\x7f\xff\xff\xff",  # int32 2^31 - 1
    b"\xff\xff\xff\xff",  # int32 -1: null
    b"\x00",  # compact null
    b"\xff\xff",  # int16 -1: null string
    b"\x80\x80\x80\x80\x80\x01",  # a 6-byte varint
    b"\x00\x00\x27\x10",  # int32 10,000
]


@pytest.fixture(scope="module")
def topics(broker: BrokerProcess) -> Iterator[dict[str, list[list[bytes]]]]:
    """Topics with known records: name -> per partition, the values in order."""
    run = uuid.uuid4().hex[:8]
    written: dict[str, list[list[bytes]]] = {}
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for suffix, partitions in TOPICS.items():
        name = f"fuzz-{run}-{suffix}"
        assert create_topic(broker.bootstrap, name, partitions).name == "none"
        written[name] = []
        for p in range(partitions):
            values = [f"{name}/{p}/{i}".encode() for i in range(RECORDS_PER_PARTITION)]
            for v in values:
                producer.produce(name, value=v, partition=p)
            written[name].append(values)
    assert producer.flush(30) == 0
    yield written


def read_all(bootstrap: str, name: str, partitions: int) -> list[list[bytes]]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fuzz-check-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    got: list[list[bytes]] = [[] for _ in range(partitions)]
    try:
        consumer.assign([TopicPartition(name, p, 0) for p in range(partitions)])
        at_end: set[int] = set()
        deadline = time.monotonic() + 30
        while len(at_end) < partitions and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                assert err.code() == KafkaError._PARTITION_EOF, err
                at_end.add(msg.partition())
                continue
            got[msg.partition()].append(msg.value())
        assert len(at_end) == partitions, f"{name}: end reached on {sorted(at_end)} only"
    finally:
        consumer.close()
    return got


def broker_answers(broker: BrokerProcess, names: list[str]) -> None:
    from kio.schema.api_versions.v3.request import ApiVersionsRequest
    from kio.schema.metadata.v12.request import MetadataRequest, MetadataRequestTopic

    with RawClient(broker.bootstrap) as c:
        versions = c.call(
            18, 3, ApiVersionsRequest(client_software_name="t", client_software_version="1")
        )
        assert {k.api_key for k in versions.api_keys} == set(SUPPORTED)
        meta = c.call(
            3,
            12,
            MetadataRequest(
                topics=tuple(MetadataRequestTopic(topic_id=None, name=n) for n in names),
                allow_auto_topic_creation=False,
                include_topic_authorized_operations=False,
            ),
        )
        assert sorted(t.name for t in meta.topics if t.error_code == 0) == sorted(names)


# --------------------------------------------------------------------------- mutations


class Mutator:
    """Seeded mutations of valid frames; returns bytes to send (size prefix included)
    and whether that prefix tells the truth (a lying one stalls the frame)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.samples = {kv: sample_frame(*kv, correlation_id=7)[4:] for kv in VERSIONS}
        self.pool = list(self.samples.values())

    def frame(self, index: int) -> tuple[str, bytes, bool]:
        rng = self.rng
        api_key, version = VERSIONS[index % len(VERSIONS)]
        data = bytearray(self.samples[(api_key, version)])
        kinds = [rng.choice(self.KINDS) for _ in range(rng.choice((1, 1, 1, 2)))]
        for kind in kinds:
            getattr(self, kind)(data)
        if rng.random() < 0.02:  # announce more than is sent: the frame never completes
            return "stall", struct.pack(">i", len(data) + rng.randint(1, 1000)) + data, False
        return "+".join(kinds), struct.pack(">i", len(data)) + bytes(data), True

    KINDS = ("flip", "byte", "count", "count", "truncate", "extend", "splice", "version")

    def _pos(self, data: bytearray) -> int:
        # Mostly the body: past the 8 bytes of api key, version and correlation id.
        low = 8 if len(data) > 8 and self.rng.random() < 0.95 else 0
        return self.rng.randrange(low, max(low + 1, len(data)))

    def flip(self, data: bytearray) -> None:
        for _ in range(self.rng.randint(1, 4)):
            i = self._pos(data)
            if i < len(data):
                data[i] ^= 1 << self.rng.randrange(8)

    def byte(self, data: bytearray) -> None:
        for _ in range(self.rng.randint(1, 3)):
            i = self._pos(data)
            if i < len(data):
                data[i] = self.rng.randrange(256)

    def count(self, data: bytearray) -> None:
        i = self._pos(data)
        patch = self.rng.choice(COUNTS)
        if self.rng.random() < 0.5:
            data[i : i + len(patch)] = patch
        else:
            data[i:i] = patch

    def truncate(self, data: bytearray) -> None:
        del data[self.rng.randrange(10, max(11, len(data))) :]

    def extend(self, data: bytearray) -> None:
        data += self.rng.randbytes(self.rng.randint(1, 64))

    def splice(self, data: bytearray) -> None:
        other = self.rng.choice(self.pool)
        a = self.rng.randrange(len(other))
        b = min(len(other), a + self.rng.randint(1, 32))
        i = self._pos(data)
        data[i : i + self.rng.randint(0, 8)] = other[a:b]

    def version(self, data: bytearray) -> None:
        """The body of one version read as another of the same API."""
        api_key = struct.unpack_from(">h", data)[0]
        if api_key in SUPPORTED:
            _name, low, high = SUPPORTED[api_key]
            struct.pack_into(">h", data, 2, self.rng.randint(low, high))


async def send_one(host: str, port: int, payload: bytes, honest: bool) -> str:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload + (PROBE if honest else b""))
        await writer.drain()
        if not honest:
            return "stalled"
        async with asyncio.timeout(ANSWER_WAIT):
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                answer = await reader.readexactly(size)
                if struct.unpack_from(">i", answer)[0] == PROBE_ID:
                    return "answered"
    except (asyncio.IncompleteReadError, ConnectionError):
        return "closed"
    except TimeoutError:
        return "timeout"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def fuzz(broker: BrokerProcess, seconds: float, seed: int, floor: int = 0) -> dict[str, int]:
    """Mutated frames for `seconds`, and on past that (up to 10x as long)
    until `floor` frames were both answered and refused: a busy machine gets
    through fewer frames per second, not a weaker test."""
    mutator = Mutator(random.Random(seed))
    host, _, port = broker.bootstrap.rpartition(":")
    totals: collections.Counter[str] = collections.Counter()
    start = time.monotonic()
    sent = 0

    def going() -> bool:
        elapsed = time.monotonic() - start
        if elapsed < seconds:
            return True
        short = totals["closed"] <= floor or totals["answered"] <= floor
        return short and elapsed < seconds * 10

    async def worker() -> None:
        nonlocal sent
        while going():
            index = sent
            sent += 1
            _kind, payload, honest = mutator.frame(index)
            totals[await send_one(host, int(port), payload, honest)] += 1
            if index % 500 == 0:
                assert broker.proc is not None and broker.proc.poll() is None, "broker died"

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    totals["frames"] = sent
    return dict(totals)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", ["metadata-v9-issue", "metadata-v1-issue", "fetch-v12-partitions"])
def test_abort_frames_close_only_their_connection(broker: BrokerProcess, name: str) -> None:
    frame, reason = ABORTS[name]
    with RawClient(broker.bootstrap) as bystander:
        broker_answers_on(bystander)
        with RawClient(broker.bootstrap) as bad:
            bad.send_raw(struct.pack(">i", len(frame)) + frame)
            assert bad.is_closed()
        broker_answers_on(bystander)  # the connection opened before is still served
    assert broker.proc is not None and broker.proc.poll() is None
    deadline = time.monotonic() + 10
    while reason not in broker.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(x for x in broker.log().splitlines() if reason in x)
    assert "closing connection from" in line and "malformed" in line
    assert "Traceback" not in broker.log()


def broker_answers_on(client: RawClient) -> None:
    from kio.schema.api_versions.v0.request import ApiVersionsRequest

    assert client.call(18, 0, ApiVersionsRequest()).error_code == 0


def test_create_partitions_racing_delete_topics(broker: BrokerProcess) -> None:
    """Found by the fuzzing: a CreatePartitions (or AlterConfigs) that waits while a
    DeleteTopics of the same topic runs got the store's TopicNotFound, logged as an
    unexpected error with a traceback. It must answer UNKNOWN_TOPIC_OR_PARTITION."""
    codes: collections.Counter[int] = collections.Counter()
    for i in range(15):
        name = f"race-{uuid.uuid4().hex[:8]}-{i}"
        assert create_topic(broker.bootstrap, name, 1).name == "none"
        delete = request_frame(20, 5, DeleteTopicsRequest(topic_names=(name,), timeout=FIVE_S))
        grow = request_frame(
            37,
            3,
            cp.CreatePartitionsRequest(
                topics=(cp.CreatePartitionsTopic(name=name, count=3, assignments=None),),
                timeout=FIVE_S,
                validate_only=False,
            ),
        )
        with RawClient(broker.bootstrap) as a, RawClient(broker.bootstrap) as b:
            a.send_raw(delete)
            b.send_raw(grow)
            a.read_frame()
            answer = b.read_frame()
        # Response header v1: correlation id, empty tagged fields; then the body.
        body, _ = entity_reader(CreatePartitionsResponse)(answer, 5)
        codes[int(body.results[0].error_code)] += 1
    assert set(codes) <= {0, 3}, codes  # NONE, or UNKNOWN_TOPIC_OR_PARTITION
    assert "Traceback" not in broker.log()


def test_fuzzing_leaves_the_broker_serving(
    broker: BrokerProcess, topics: dict[str, list[list[bytes]]]
) -> None:
    totals = asyncio.run(fuzz(broker, FUZZ_SECONDS, SEED, floor=100))
    print(f"\nprotocol fuzz seed={SEED} seconds={FUZZ_SECONDS:g}: {totals}")
    assert broker.proc is not None and broker.proc.poll() is None, broker.log()[-3000:]
    log = broker.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    # Both paths were reached: frames refused, and mutated frames served.
    assert totals.get("closed", 0) > 100 and totals.get("answered", 0) > 100, totals
    broker_answers(broker, list(topics))
    for name, partitions in topics.items():
        assert read_all(broker.bootstrap, name, len(partitions)) == partitions, name
