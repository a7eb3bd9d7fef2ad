"""`shoal topics list|describe|create|alter|delete` against a real broker: what
the commands print is what the cluster holds, and bad input is one clear line."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from harness import BrokerProcess, free_port
from shoal.cli import cli

TIMEOUT = 30.0


@pytest.fixture(scope="module")
def bootstrap(broker: BrokerProcess) -> Iterator[str]:
    yield broker.bootstrap


def shoal(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input)


def ok(*args: str) -> str:
    result = shoal(*args)
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: str, input: str | None = None) -> str:
    result = shoal(*args, input=input)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return result.output


def test_create_describe_alter_delete(bootstrap: str) -> None:
    topic = f"tc-{uuid.uuid4().hex[:8]}"
    out = ok(
        "topics", "create", topic, "--partitions", "2", "--config", "retention.ms=3600000",
        "--bootstrap", bootstrap,
    )  # fmt: skip
    assert f"created topic {topic}" in out
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(7):
        p.produce(topic, value=f"v{i}".encode(), partition=i % 2)
    assert p.flush(TIMEOUT) == 0

    listed = json.loads(ok("topics", "list", "--bootstrap", bootstrap, "--format", "json"))
    assert {"topic": topic, "partitions": 2, "replication_factor": 1} in listed
    assert topic in ok("topics", "list", "--bootstrap", bootstrap)

    (info,) = json.loads(
        ok("topics", "describe", topic, "--bootstrap", bootstrap, "--format", "json")
    )
    rows = [
        (p["partition"], p["log_start"], p["log_end"], p["records"]) for p in info["partitions"]
    ]
    assert rows == [(0, 0, 4, 4), (1, 0, 3, 3)]
    assert all(p["leader"] == 0 for p in info["partitions"])
    # Sizes from DescribeLogDirs: each partition's stored bytes, summed per topic.
    sizes = [p["size_bytes"] for p in info["partitions"]]
    assert all(size > 0 for size in sizes)
    assert info["size_bytes"] == sum(sizes)
    configs = {c["name"]: c for c in info["configs"]}
    assert configs["retention.ms"]["value"] == "3600000"
    assert configs["retention.ms"]["source"] == "DYNAMIC_TOPIC_CONFIG"
    assert not configs["retention.ms"]["default"]
    table = ok("topics", "describe", topic, "--bootstrap", bootstrap)
    assert "records 7" in table and "size n/a" not in table
    assert "retention.ms" in table and "DYNAMIC_TOPIC_CONFIG" in table

    out = ok(
        "topics", "alter", topic, "--partitions", "3", "--config", "retention.ms=7200000",
        "--bootstrap", bootstrap,
    )  # fmt: skip
    assert "now has 3 partitions" in out
    (info,) = json.loads(
        ok("topics", "describe", topic, "--bootstrap", bootstrap, "--format", "json")
    )
    assert len(info["partitions"]) == 3
    assert {c["name"]: c["value"] for c in info["configs"]}["retention.ms"] == "7200000"
    ok("topics", "alter", topic, "--delete-config", "retention.ms", "--bootstrap", bootstrap)
    (info,) = json.loads(
        ok("topics", "describe", topic, "--bootstrap", bootstrap, "--format", "json")
    )
    assert {c["name"]: c for c in info["configs"]}["retention.ms"]["source"] != (
        "DYNAMIC_TOPIC_CONFIG"
    )

    # Deleting asks first; "no" (or no terminal) keeps the topic.
    fails("topics", "delete", topic, "--bootstrap", bootstrap, input="n\n")
    assert topic in ok("topics", "list", "--bootstrap", bootstrap)
    assert f"deleted topic {topic}" in ok(
        "topics", "delete", topic, "--yes", "--bootstrap", bootstrap
    )
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert topic not in admin.list_topics(timeout=TIMEOUT).topics


def test_create_existing_topic(bootstrap: str) -> None:
    topic = f"tc-{uuid.uuid4().hex[:8]}"
    ok("topics", "create", topic, "--bootstrap", bootstrap)
    assert "already exists" in fails("topics", "create", topic, "--bootstrap", bootstrap)
    assert "exists already" in ok(
        "topics", "create", topic, "--if-not-exists", "--bootstrap", bootstrap
    )


def test_unknown_topic(bootstrap: str) -> None:
    name = f"nope-{uuid.uuid4().hex[:6]}"
    for args in (
        ("describe", name),
        ("alter", name, "--partitions", "4"),
        ("delete", name, "--yes"),
    ):
        out = fails("topics", *args, "--bootstrap", bootstrap)
        assert f"unknown topic '{name}'" in out, out
    # describe must not have created it on the way
    admin = AdminClient({"bootstrap.servers": bootstrap})
    assert name not in admin.list_topics(timeout=TIMEOUT).topics


def test_bad_input(bootstrap: str) -> None:
    topic = f"tc-{uuid.uuid4().hex[:8]}"
    ok("topics", "create", topic, "--partitions", "2", "--bootstrap", bootstrap)
    assert "cannot shrink to 1" in fails(
        "topics", "alter", topic, "--partitions", "1", "--bootstrap", bootstrap
    )
    assert "nothing to change" in fails("topics", "alter", topic, "--bootstrap", bootstrap)
    assert "expected key=value" in fails(
        "topics", "create", "x", "--config", "retention.ms", "--bootstrap", bootstrap
    )
    assert "0 is not in the range" in fails(
        "topics", "create", "x", "--partitions", "0", "--bootstrap", bootstrap
    )
    out = fails("topics", "create", "bad/name", "--bootstrap", bootstrap)
    assert "cannot create topic 'bad/name'" in out
    out = fails("topics", "list", "--bootstrap", bootstrap, "-X", "foo.bar=1")
    assert "Invalid value for '-X'" in out and '"foo.bar"' in out


def test_closed_port() -> None:
    address = f"127.0.0.1:{free_port()}"
    for args in (("list",), ("describe", "t"), ("create", "t"), ("delete", "t", "--yes")):
        out = fails("topics", *args, "--bootstrap", address, "--timeout", "10")
        assert out.count("\n") == 1, out
        assert f"cannot reach {address}" in out and "Connection refused" in out


class LogDirsServer:
    """A stand-in for a Kafka broker that offers DescribeLogDirs, which neither
    Shoal nor tansu do: it answers ApiVersions and DescribeLogDirs v1 with
    fixed sizes, so the size path of `topics describe` runs against real bytes."""

    def __init__(self, sizes: dict[tuple[str, int], int], offer: bool = True) -> None:
        import socket
        import threading

        self.sizes, self.offer = sizes, offer
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import datetime
        import io
        import struct

        from kio.schema.api_versions.v0 import response as av
        from kio.schema.describe_log_dirs.v1 import response as ld
        from kio.schema.errors import ErrorCode
        from kio.schema.types import TopicName
        from kio.serial import entity_writer
        from kio.static.primitive import i16, i32, i32Timedelta, i64

        conn, _ = self.sock.accept()
        with conn:
            while head := conn.recv(4):
                (size,) = struct.unpack(">i", head)
                frame = b""
                while len(frame) < size:
                    frame += conn.recv(size - len(frame))
                key, _version, correlation = struct.unpack(">hhi", frame[:8])
                body: object
                if key == 18:
                    keys = [(i16(18), i16(0), i16(3))]
                    if self.offer:
                        keys.append((i16(35), i16(0), i16(4)))
                    body = av.ApiVersionsResponse(
                        error_code=ErrorCode.none,
                        api_keys=tuple(
                            av.ApiVersion(api_key=k, min_version=lo, max_version=hi)
                            for k, lo, hi in keys
                        ),
                    )
                    writer = entity_writer(av.ApiVersionsResponse)
                else:
                    topics: dict[str, list[ld.DescribeLogDirsPartition]] = {}
                    for (topic, p), n in self.sizes.items():
                        topics.setdefault(topic, []).append(
                            ld.DescribeLogDirsPartition(
                                partition_index=i32(p),
                                partition_size=i64(n),
                                offset_lag=i64(0),
                                is_future_key=False,
                            )
                        )
                    body = ld.DescribeLogDirsResponse(
                        throttle_time=i32Timedelta.parse(datetime.timedelta(0)),
                        results=(
                            ld.DescribeLogDirsResult(
                                error_code=ErrorCode.none,
                                log_dir="/var/lib/kafka",
                                topics=tuple(
                                    ld.DescribeLogDirsTopic(name=TopicName(t), partitions=tuple(ps))
                                    for t, ps in topics.items()
                                ),
                            ),
                        ),
                    )
                    writer = entity_writer(ld.DescribeLogDirsResponse)
                out = io.BytesIO()
                out.write(struct.pack(">i", correlation))
                writer(out, body)
                data = out.getvalue()
                conn.sendall(struct.pack(">i", len(data)) + data)


def test_sizes_come_from_describe_log_dirs() -> None:
    from shoal.tools import kafka_wire

    a = LogDirsServer({("t", 0): 100, ("t", 1): 7})
    b = LogDirsServer({("t", 0): 150})  # a second replica of t-0, further along
    assert kafka_wire.log_dir_sizes([a.address, b.address], 5) == {("t", 0): 150, ("t", 1): 7}
    assert kafka_wire.log_dir_sizes([LogDirsServer({}, offer=False).address], 5) is None


def test_malformed_answer_is_a_wire_error() -> None:
    """A broker's answer is walked as the broker walks requests: a null where
    the schema has none (or a count past the frame) is a WireError, not a
    TypeError from inside kio's reader."""
    import socket
    import struct
    import threading

    from shoal.tools import kafka_wire

    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            (size,) = struct.unpack(">i", conn.recv(4))
            frame = b""
            while len(frame) < size:
                frame += conn.recv(size - len(frame))
            (correlation,) = struct.unpack(">i", frame[4:8])
            # ApiVersions v0: error_code 0, then api_keys as a null array.
            conn.sendall(struct.pack(">iihi", 10, correlation, 0, -1))

    threading.Thread(target=answer, daemon=True).start()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    with pytest.raises(kafka_wire.WireError, match="malformed ApiVersionsResponse v0"):
        kafka_wire.log_dir_sizes([address], 5)
    server.close()
