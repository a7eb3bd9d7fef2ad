"""Full disks under a broker: the file object store's directory and the SQLite
metadata store's directory on a small tmpfs that the test fills.

While full, produce requests get the retriable KAFKA_STORAGE_ERROR naming the
cause, reads go on, nothing half-written becomes visible; once space is back
the producers' retries go through by themselves, and every acknowledged
record is read back exactly once at its offset. The free-space floor
(storage.min.free.bytes) refuses writes before the disk is full."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from kio.schema.errors import ErrorCode

from diskfull import SmallFs, small_fs
from harness import BrokerProcess, free_port
from test_reliability import Load, check, create, read_everything
from wire import make_batch, produce

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's storage engine"
)


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def refused_code(broker: BrokerProcess, topic: str) -> tuple[int, str | None]:
    part = produce(broker.bootstrap, topic, make_batch([b"probe"]))
    return int(part.error_code), part.error_message


def full_disk_round(broker: BrokerProcess, fs: SmallFs, port: int, topic: str, cause: str) -> None:
    """Load before, during and after a full disk; the exactly-once check."""
    create(broker.bootstrap, topic, 2)
    load = Load(broker.bootstrap, topic, producers=2, partitions=2).start()
    try:
        fill_and_release(broker, fs, port, topic, cause, load)
    finally:
        fs.release()
        load.stop()
    assert not load.errors, load.errors[:3]
    check(load, read_everything(broker.bootstrap, topic, 2))  # lost = duplicated = 0
    print(f"\n{cause} disk full: {len(load.acked)} acknowledged, 0 lost, 0 duplicated")
    metrics = scrape(port)
    assert 'shoal_storage_writes_refused{cause="full"} 0.0' in metrics
    assert "shoal_storage_full_events_total 1.0" in metrics
    log = broker.log()
    # one line for the event and one for its end, however many writes failed
    assert log.count(f"{cause} disk full: writes refused") == 1, log[-3000:]
    assert log.count(f"{cause} disk has space again") == 1


def fill_and_release(
    broker: BrokerProcess, fs: SmallFs, port: int, topic: str, cause: str, load: Load
) -> None:
    wait_for(lambda: len(load.acked) >= 200, "acknowledged records before the fill")
    fs.fill()
    wait_for(
        lambda: 'shoal_storage_writes_refused{cause="full"} 1.0' in scrape(port),
        "the broker to notice the full disk",
    )
    code, message = refused_code(broker, topic)
    assert code == ErrorCode.kafka_storage_error, ErrorCode(code).name
    assert message is not None and f"{cause} disk full" in message
    # reads go on: everything acknowledged so far is there, at its offset
    acked_while_full = dict(load.acked)
    got = read_everything(broker.bootstrap, topic, 2)
    seen = {v: (p, o) for p, recs in got.items() for o, v in recs}
    assert all(seen.get(v) == where for v, where in acked_while_full.items())
    stalled = len(load.acked)
    fs.release()
    wait_for(lambda: len(load.acked) > stalled + 200, "produce to resume after space came back")


def test_full_object_store_directory(tmp_path: Path, topic_name: str) -> None:
    port = free_port()
    with small_fs(tmp_path / "objfs") as fs:
        broker = BrokerProcess(
            tmp_path / "data",
            args=["--objects", (fs.root / "objects").as_uri()],
            env={"SHOAL_METRICS_LISTEN": f"127.0.0.1:{port}"},
        ).start()
        try:
            full_disk_round(broker, fs, port, topic_name, "objects")
        finally:
            broker.stop()
        # nothing half-written: every file in the store is a whole object
        from shoal.storage.format import decode_object

        for f in (fs.root / "objects").rglob("*"):
            if f.is_file() and f.parent.name != "_spare":  # spares are empty files
                decode_object(f.read_bytes())


def test_full_metadata_directory(tmp_path: Path, topic_name: str) -> None:
    port = free_port()
    with small_fs(tmp_path / "metafs") as fs:
        broker = BrokerProcess(
            tmp_path / "data",
            args=["--metadata", f"sqlite:///{fs.root / 'meta.db'}"],
            env={"SHOAL_METRICS_LISTEN": f"127.0.0.1:{port}"},
        ).start()
        try:
            full_disk_round(broker, fs, port, topic_name, "metadata")
        finally:
            broker.stop()


def test_free_space_floor_refuses_writes_early(tmp_path: Path, topic_name: str) -> None:
    """Below storage.min.free.bytes produce is refused with a message naming
    the directory and the setting, before any write fails; above it, writes
    resume."""
    port = free_port()
    with small_fs(tmp_path / "objfs") as fs:
        broker = BrokerProcess(
            tmp_path / "data",
            args=["--objects", (fs.root / "objects").as_uri()],
            env={
                "SHOAL_METRICS_LISTEN": f"127.0.0.1:{port}",
                "SHOAL_STORAGE_MIN_FREE_BYTES": str(4 * 1024 * 1024),
            },
        ).start()
        try:
            create(broker.bootstrap, topic_name, 1)
            assert refused_code(broker, topic_name)[0] == ErrorCode.none
            fs.fill(leave=2 * 1024 * 1024)  # still room, but below the floor
            wait_for(
                lambda: 'shoal_storage_writes_refused{cause="low"} 1.0' in scrape(port),
                "the broker to notice low space",
            )
            code, message = refused_code(broker, topic_name)
            assert code == ErrorCode.kafka_storage_error
            assert message is not None
            assert "storage.min.free.bytes=4194304" in message
            assert str(fs.root / "objects") in message
            fs.release()
            wait_for(
                lambda: refused_code(broker, topic_name)[0] == ErrorCode.none,
                "writes to resume above the floor",
            )
            assert broker.log().count("low disk space: writes refused") == 1
        finally:
            broker.stop()
