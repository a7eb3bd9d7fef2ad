"""Resource limits against hostile clients, end to end: stalled connections
are closed after the idle timeout, large frames before authentication are
refused, connection caps hold, and clients that announce large frames cannot
grow the broker's memory past queued.max.request.bytes, while a normal
producer keeps working."""

from __future__ import annotations

import dataclasses
import datetime
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from kio.schema.api_versions.v3.request import ApiVersionsRequest

from harness import BrokerProcess
from wire import (
    RawClient,
    create_topic,
    fetch_request,
    make_batch,
    produce_request,
    record,
    request_frame,
)

MIB = 1024 * 1024


def api_versions(c: RawClient) -> None:
    c.call(18, 3, ApiVersionsRequest(client_software_name="t", client_software_version="1"))


def wait_until(cond: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def produce_ok(bootstrap: str, topic: str, n: int = 5, timeout: float = 30) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    errors: list[object] = []
    for i in range(n):
        p.produce(topic, value=b"v%d" % i, on_delivery=lambda e, m: e and errors.append(e))
    assert p.flush(timeout) == 0, "producer did not finish"
    assert not errors, errors


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    b = BrokerProcess(
        tmp_path_factory.mktemp("limits") / "data",
        env={
            "SHOAL_CONNECTIONS_MAX_IDLE_MS": "1500",
            "SHOAL_SOCKET_REQUEST_MAX_BYTES": str(8 * MIB),
            "SHOAL_QUEUED_MAX_REQUEST_BYTES": str(16 * MIB),
            "SHOAL_SASL_SERVER_MAX_RECEIVE_SIZE": str(64 * 1024),
            "SHOAL_MAX_CONNECTIONS_PER_IP": "400",
            "SHOAL_MAX_CONNECTIONS_PER_IP_OVERRIDES": "127.0.0.9:3",
        },
    ).start()
    yield b
    b.stop()


def test_stalled_connections_are_closed_after_the_idle_timeout(
    limited: BrokerProcess, topic_name: str
) -> None:
    host, port = "127.0.0.1", limited.port
    stalled = []
    for i in range(60):
        s = socket.create_connection((host, port))
        # two bytes of a size prefix, or a whole prefix and part of the frame
        s.sendall(b"\x00\x00" if i % 2 else struct.pack(">i", 100) + b"\x00\x12")
        stalled.append(s)
    quiet = RawClient(limited.bootstrap)
    api_versions(quiet)  # a valid request, then silence
    started = time.monotonic()
    produce_ok(limited.bootstrap, topic_name)  # normal clients work meanwhile
    wait_until(lambda: all(closed_by_peer(s) for s in stalled), 20, "stalled connections closed")
    assert quiet.is_closed(wait=10)
    assert time.monotonic() - started >= 1.0  # not before the timeout
    for s in stalled:
        s.close()
    quiet.close()
    assert "connections.max.idle.ms=1500" in limited.log()


def test_a_request_in_flight_is_not_idle(limited: BrokerProcess, topic_name: str) -> None:
    """A long-poll fetch longer than the idle timeout is answered, not cut."""
    create_topic(limited.bootstrap, topic_name)
    with RawClient(limited.bootstrap, timeout=15) as c:
        api_versions(c)
        req = dataclasses.replace(
            fetch_request(topic_name, {0: 0}), max_wait=datetime.timedelta(seconds=3)
        )
        t0 = time.monotonic()
        resp = c.call(1, 12, req)
        assert time.monotonic() - t0 >= 2.5
        assert resp.responses[0].partitions[0].error_code == 0


def test_large_frame_before_authentication_is_refused(
    limited: BrokerProcess, topic_name: str
) -> None:
    with RawClient(limited.bootstrap) as c:
        c.send_raw(struct.pack(">i", 1 * MIB) + b"\x00" * 1024)
        assert c.is_closed()
    assert "sasl.server.max.receive.size=65536" in limited.log()
    # After a valid request, the same size is a normal produce.
    create_topic(limited.bootstrap, topic_name)
    big = make_batch([record(None, b"x" * 900_000, 0)])
    with RawClient(limited.bootstrap) as c:
        api_versions(c)
        resp = c.call(0, 9, produce_request(topic_name, big))
    assert resp.responses[0].partition_responses[0].error_code == 0


def test_connections_per_ip_are_capped_with_overrides(limited: BrokerProcess) -> None:
    conns = []
    for _ in range(4):
        s = socket.socket()
        s.bind(("127.0.0.9", 0))  # any 127/8 address reaches the loopback listener
        s.connect(("127.0.0.1", limited.port))
        conns.append(s)
    # the override allows 3 from 127.0.0.9: the fourth is closed at once
    wait_until(lambda: closed_by_peer(conns[3]), 10, "fourth connection refused")
    assert not any(closed_by_peer(s) for s in conns[:3])
    for s in conns:
        s.close()
    assert "max.connections.per.ip=3 reached for 127.0.0.9" in limited.log()


def broker_rss(b: BrokerProcess) -> int:
    assert b.proc is not None
    for line in Path(f"/proc/{b.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_announced_frames_cannot_grow_memory_past_the_budget(
    limited: BrokerProcess, topic_name: str
) -> None:
    """200 clients announce 8 MiB frames and push 2 MiB each as fast as the
    broker reads, then stall: 400 MiB without a budget. The broker holds at
    most queued.max.request.bytes (16 MiB) of them, plus its read buffers
    (under 400 KiB per connection), and a normal producer keeps working."""
    create_topic(limited.bootstrap, topic_name)
    produce_ok(limited.bootstrap, topic_name)  # warm up the paths the producer uses
    base = broker_rss(limited)
    attackers: list[tuple[socket.socket, memoryview]] = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", limited.port))
        hello = ApiVersionsRequest(client_software_name="a", client_software_version="1")
        s.sendall(request_frame(18, 3, hello))
        s.setblocking(False)
        payload = struct.pack(">i", 8 * MIB) + b"\x00\x00\x00\x03" + b"\x00" * (2 * MIB)
        attackers.append((s, memoryview(payload)))
    peak = base
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        for i, (s, rest) in enumerate(attackers):
            if rest:
                try:
                    sent = s.send(rest)
                except (BlockingIOError, ConnectionError):
                    continue
                attackers[i] = (s, rest[sent:])
        peak = max(peak, broker_rss(limited))
        time.sleep(0.02)
    # while the attackers hold the large-frame budget, small requests still pass
    produce_ok(limited.bootstrap, topic_name, timeout=20)
    peak = max(peak, broker_rss(limited))
    growth = peak - base
    # the budget, each connection's read buffer (2 x 64 KiB, plus one socket
    # read of up to 256 KiB before reading pauses) and 32 MiB of overhead
    bound = 16 * MIB + 200 * 384 * 1024 + 32 * MIB
    assert growth < bound, f"RSS grew {growth / MIB:.0f} MiB (bound {bound / MIB:.0f} MiB)"
    for s, _ in attackers:
        s.close()
