"""`shoal meta backup / check / rebuild` and the broker's start-up check of
objects against metadata, with a real broker subprocess and real clients:
a backup restored, every inconsistency `check` knows, and an older backup
restored under newer objects — never an offset handed out twice."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from harness import BrokerProcess
from shoal.cli import cli
from test_reliability import create, read_everything

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's own commands"
)


def shoal(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def produce(
    bootstrap: str, topic: str, values: list[bytes], partitions: int = 2
) -> dict[bytes, tuple[int, int]]:
    """Idempotent produce; value -> (partition, offset) as acknowledged."""
    acked: dict[bytes, tuple[int, int]] = {}

    def on_delivery(err: object, msg: object) -> None:
        assert err is None, err
        acked[msg.value()] = (msg.partition(), msg.offset())  # type: ignore[attr-defined]

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 2})
    for i, v in enumerate(values):
        p.produce(topic, v, partition=i % partitions, on_delivery=on_delivery)
    assert p.flush(30) == 0
    return acked


def stored(bootstrap: str, topic: str, partitions: int = 2) -> dict[bytes, tuple[int, int]]:
    """value -> (partition, offset) as read back; no value twice, offsets dense."""
    out: dict[bytes, tuple[int, int]] = {}
    for p, recs in read_everything(bootstrap, topic, partitions).items():
        assert [o for o, _ in recs] == list(range(len(recs))), f"partition {p} not dense"
        for o, v in recs:
            assert v not in out, f"{v!r} twice"
            out[v] = (p, o)
    return out


def restore(data: Path, backup_file: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (data / f"meta.db{suffix}").unlink(missing_ok=True)
    shutil.copy(backup_file, data / "meta.db")


def test_older_backup_under_newer_objects_hands_out_no_offset_twice(
    tmp_path: Path, topic_name: str
) -> None:
    """A backup taken while the broker runs, restored after more records:
    those are adopted at start from the objects that hold them, and new
    records continue after them. Restored again after a topic was created,
    the broker refuses to start rather than reuse that topic's stream."""
    data = tmp_path / "data"
    backup_file = tmp_path / "b.db"
    broker = BrokerProcess(data).start()
    try:
        create(broker.bootstrap, topic_name, 2)
        acked = produce(broker.bootstrap, topic_name, [b"a%04d" % i for i in range(100)])
        out = shoal("meta", "backup", "--data-dir", str(data), str(backup_file))
        assert out.exit_code == 0 and "2 streams" in out.output, out.output
        again = shoal("meta", "backup", "--data-dir", str(data), str(backup_file))
        assert again.exit_code == 1 and "exists: pass --force" in again.output
        acked |= produce(broker.bootstrap, topic_name, [b"b%04d" % i for i in range(100)])
    finally:
        broker.stop()
    restore(data, backup_file)
    check = shoal("meta", "check", "--data-dir", str(data))
    assert check.exit_code == 1 and "ahead-of-metadata" in check.output, check.output
    broker.start()
    try:
        assert "adopted" in broker.log()
        acked |= produce(broker.bootstrap, topic_name, [b"c%04d" % i for i in range(100)])
        assert stored(broker.bootstrap, topic_name) == acked  # 300, each once, where acked
        create(broker.bootstrap, topic_name + "-new", 1)
        produce(broker.bootstrap, topic_name + "-new", [b"n%04d" % i for i in range(20)], 1)
    finally:
        broker.stop()
    restore(data, backup_file)
    with pytest.raises(RuntimeError) as info:
        broker.start()
    message = str(info.value)
    assert "a stream the metadata does not know" in message
    assert "shoal meta rebuild" in message


def test_check_finds_each_inconsistency_and_repair_deletes_only_garbage(
    tmp_path: Path, topic_name: str
) -> None:
    data = tmp_path / "data"
    broker = BrokerProcess(data, env={"SHOAL_COMPACTION_INTERVAL_MS": "3600000"}).start()
    try:
        create(broker.bootstrap, topic_name, 2)
        for i in range(4):  # several objects per stream
            produce(broker.bootstrap, topic_name, [b"r%d-%03d" % (i, j) for j in range(20)])
    finally:
        broker.stop()
    assert shoal("meta", "check", "--data-dir", str(data)).exit_code == 0
    objects = data / "objects"
    db = sqlite3.connect(data / "meta.db")
    rows = db.execute(
        "SELECT o.key, r.stream_id, r.start_offset FROM stream_ranges r "
        "JOIN objects o ON o.id = r.object_id ORDER BY r.stream_id, r.start_offset"
    ).fetchall()
    streams = sorted({sid for _k, sid, _s in rows})
    first_stream = [r for r in rows if r[1] == streams[0]]
    second_stream = [r for r in rows if r[1] == streams[1]]
    # a copy of committed data under a key no row names: garbage, old enough
    garbage = objects / "wal" / "0" / "0000000000001-1-0000000001.wal"
    shutil.copy(objects / first_stream[0][0], garbage)
    os.utime(garbage, (time.time() - 3600, time.time() - 3600))
    # a referenced object gone
    missing = second_stream[-1][0]
    (objects / missing).unlink()
    # a range row gone (a gap), and a stream end that disagrees
    db.execute(
        "DELETE FROM stream_ranges WHERE stream_id = ? AND start_offset = ?",
        (first_stream[1][1], first_stream[1][2]),
    )
    db.execute("UPDATE streams SET end_offset = end_offset + 5 WHERE id = ?", (streams[0],))
    # two ranges of one stream that overlap
    db.execute(
        "INSERT INTO stream_ranges SELECT stream_id, start_offset + 1, end_offset, object_id, "
        "position, size, max_timestamp FROM stream_ranges WHERE stream_id = ? "
        "AND start_offset = ?",
        (second_stream[1][1], second_stream[1][2]),
    )
    # a referenced object cut short, and a file in the store that is no object
    cut = next(k for k, _s, _o in second_stream if k not in (missing, first_stream[0][0]))
    with open(objects / cut, "r+b") as f:
        f.truncate(1)
    junk = objects / "wal" / "0" / "junk.wal"
    junk.write_bytes(b"not an object")
    os.utime(junk, (time.time() - 3600, time.time() - 3600))
    db.commit()
    db.close()
    out = shoal("meta", "check", "--data-dir", str(data), "--format", "json")
    assert out.exit_code == 1, out.output
    import json

    found = json.loads(out.output)
    kinds = found["counts"]
    for kind in (
        "unreferenced-object",
        "unreadable-object",
        "missing-object",
        "size-mismatch",
        "range-outside-object",
        "range-gap",
        "range-overlap",
        "end-mismatch",
    ):
        assert kinds.get(kind), (kind, found)
    assert any(f["subject"] == missing for f in found["findings"])
    # repair without --delete-unreferenced deletes nothing
    shoal("meta", "check", "--data-dir", str(data), "--repair")
    assert garbage.exists()
    out = shoal(
        "meta",
        "check",
        "--data-dir",
        str(data),
        "--repair",
        "--delete-unreferenced",
        env={"SHOAL_OBJECT_ORPHAN_GRACE_MS": "1000"},
    )
    assert "deleted 1 unreferenced object" in out.output, out.output
    assert not garbage.exists()
    assert junk.exists(), "not provably garbage: kept"
    assert all((objects / k).exists() for k, _s, _o in rows if k != missing)
    assert (objects / cut).stat().st_size == 1
    assert out.exit_code == 1  # a missing object cannot be repaired: still reported


def test_bad_input_names_the_value(tmp_path: Path) -> None:
    out = shoal("meta", "backup", "--data-dir", str(tmp_path / "nowhere"), str(tmp_path / "b.db"))
    assert out.exit_code == 1 and f"no metadata database at {tmp_path / 'nowhere'}" in out.output
    out = shoal(
        "meta", "check", "--objects", "bogus://x", "--metadata", f"sqlite:///{tmp_path}/m.db"
    )
    assert out.exit_code == 2 and "bogus://x" in out.output, out.output
    out = shoal("meta", "check", "--data-dir", str(tmp_path / "nowhere"))
    assert out.exit_code == 2 and str(tmp_path / "nowhere") in out.output, out.output
    out = shoal(
        "meta", "backup", "--metadata", "postgresql://u:secret@db/shoal", str(tmp_path / "b.db")
    )
    assert out.exit_code == 1 and "pg_dump" in out.output and "secret" not in out.output
    out = shoal("meta", "check", "--data-dir", str(tmp_path), "--delete-unreferenced")
    assert out.exit_code == 2 and "--delete-unreferenced goes with --repair" in out.output


def test_rebuild_after_losing_the_metadata_store(tmp_path: Path, topic_name: str) -> None:
    """Everything acknowledged is read back at the same offsets from metadata
    rebuilt from the objects; an idempotent producer's new records continue."""
    data = tmp_path / "data"
    broker = BrokerProcess(data).start()
    try:
        create(broker.bootstrap, topic_name, 2)
        create(broker.bootstrap, topic_name + "-one", 1)
        # deleted and created again: the old topic's objects are still in the
        # store (object.delete.grace.ms), and must not come back or block
        produce(broker.bootstrap, topic_name + "-one", [b"gone%03d" % i for i in range(30)], 1)
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.delete_topics([topic_name + "-one"])[topic_name + "-one"].result(30)
        create(broker.bootstrap, topic_name + "-one", 1)
        acked = produce(broker.bootstrap, topic_name, [b"v%04d" % i for i in range(300)])
        one = produce(broker.bootstrap, topic_name + "-one", [b"o%03d" % i for i in range(50)], 1)
    finally:
        broker.stop()
    for suffix in ("", "-wal", "-shm"):
        (data / f"meta.db{suffix}").unlink(missing_ok=True)
    out = shoal(
        "meta",
        "rebuild",
        "--objects",
        (data / "objects").as_uri(),
        "--metadata",
        f"sqlite:///{data / 'meta.db'}",
    )
    assert out.exit_code == 0, out.output
    assert f"{topic_name}-0: [0, 150)" in out.output
    assert "of an older topic" in out.output
    again = shoal("meta", "rebuild", "--data-dir", str(data))
    assert again.exit_code == 1 and "already has 2 topic(s)" in again.output
    assert shoal("meta", "check", "--data-dir", str(data)).exit_code == 0
    broker.start()
    try:
        assert stored(broker.bootstrap, topic_name) == acked
        assert stored(broker.bootstrap, topic_name + "-one", 1) == one
        acked |= produce(broker.bootstrap, topic_name, [b"w%04d" % i for i in range(100)])
        assert stored(broker.bootstrap, topic_name) == acked
    finally:
        broker.stop()


def test_rebuild_bad_input_names_the_value(tmp_path: Path) -> None:
    out = shoal("meta", "rebuild", "--metadata", f"sqlite:///{tmp_path}/m.db")
    assert out.exit_code == 2 and "--objects URL" in out.output
    out = shoal(
        "meta",
        "rebuild",
        "--objects",
        f"file://{tmp_path}/absent",
        "--metadata",
        f"sqlite:///{tmp_path}/m.db",
    )
    assert out.exit_code == 1 and f"{tmp_path}/absent" in out.output, out.output


async def test_rebuild_takes_back_an_object_scheduled_for_deletion(tmp_path: Path) -> None:
    """A store with no topic may still hold object rows awaiting deletion; a
    rebuild whose ranges name such an object clears its schedule: a cleaner
    deletes a due object from the store whatever refers to it."""
    from faults import FaultyStore
    from shoal.meta.store import MetaStore
    from shoal.protocol.records import validate_batches
    from shoal.storage.cleaner import Cleaner
    from shoal.storage.rebuild import rebuild
    from shoal.storage.streams import EngineConfig, StreamEngine
    from shoal.storage.wal import WalConfig
    from wire import make_batch

    store = FaultyStore()
    lost = await MetaStore.open(f"sqlite:///{tmp_path}/lost.db")
    [part] = (await lost.create_topic("t", 1, {})).partitions
    eng = StreamEngine(store, lost, EngineConfig(wal=WalConfig(linger_ms=2)))
    for i in range(3):
        batches = validate_batches(make_batch([b"r%d" % i]), 1 << 20)
        await (await eng.append(part.stream_id, batches, 0))
    await eng.close()
    await lost.close()
    listed = await store.list("wal/")
    assert len(listed) == 3
    meta = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    try:
        # Recorded and referenced by nothing: scheduled, due at once.
        for info in listed:
            await meta.replace_ranges(info.key, info.size, 0, "wal", [], 0)
        far = int(time.time() * 1000) + 3_600_000
        assert len(await meta.objects_due(far)) == 3
        report = await rebuild(store, meta)
        assert [(p.start, p.end) for p in report.streams] == [(0, 3)]
        assert await meta.objects_due(far) == []
        await Cleaner(store, meta, orphan_grace_ms=0).run_once()
        assert {i.key for i in await store.list("wal/")} == {i.key for i in listed}
        again = StreamEngine(store, meta, EngineConfig(log_cache_bytes=0))
        assert len((await again.read(part.stream_id, 0, 1 << 20)).chunks) == 3
        await again.close()
    finally:
        await meta.close()
