"""Compaction's rewrite in a child process (storage/rewrite.py): the objects
it writes read back as the broker's own would, a source gone mid-merge
skips the round, a child that dies is replaced on the next round with
nothing lost, and the child never outlives its broker (stopped, or killed
with SIGKILL)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from harness import BrokerProcess
from shoal.meta.range_rows import RangeRows
from shoal.meta.store import MetaStore
from shoal.protocol.records import validate_batches
from shoal.storage.compaction import CompactionConfig
from shoal.storage.objectstore import ObjectStore
from shoal.storage.rewrite import ChildProcess, InProcess, Job, RewriteFailed, Round
from shoal.storage.streams import EngineConfig, StreamEngine
from shoal.storage.wal import WalConfig
from test_compaction_merge import read_all, streams
from wire import make_batch


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[MetaStore]:
    m = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    yield m
    await m.close()


def engine(meta: MetaStore, root: Path, process: bool = True) -> StreamEngine:
    cfg = EngineConfig(
        wal=WalConfig(linger_ms=0),
        log_cache_bytes=0,  # every read comes from the objects
        block_cache_bytes=0,
        compaction=CompactionConfig(
            min_age_ms=0,
            block_bytes=1024,
            stream_object_bytes=4096,
            delete_grace_ms=0,
            merge_min_objects=2,
            process=process,
        ),
    )
    return StreamEngine(ObjectStore((root / "objects").as_uri()), meta, cfg)


def children(pid: int, marker: bytes = b"") -> set[int]:
    """Live (not zombie) child processes of `pid` whose command line holds
    `marker`, from /proc."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) != pid or fields[0] == "Z":
            continue
        try:
            if marker in Path(f"/proc/{entry}/cmdline").read_bytes():
                out.add(int(entry))
        except OSError:
            continue
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(cond: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


async def fill(eng: StreamEngine, sids: list[int], rounds: int, tag: bytes) -> None:
    """One WAL object per append; the first stream gets a long run (an
    object of its own), the others a record per round (a shared object)."""
    for i in range(rounds):
        for n, sid in enumerate(sids):
            value = tag + b"%03d" % i + (b"." * 600 if n == 0 else b"")
            await (await eng.append(sid, validate_batches(make_batch([value]), 1 << 20), 0))


async def test_the_child_writes_what_the_broker_would(tmp_path: Path) -> None:
    """The same appends compacted in the child and in the process: the same
    objects by kind and size, and every record reads back unchanged from
    the child's objects, through this engine and a fresh one."""
    results = {}
    for process in (True, False):
        root = tmp_path / str(process)
        root.mkdir()
        meta = await MetaStore.open(f"sqlite:///{root}/meta.db")
        sids = await streams(meta, 3)
        eng = engine(meta, root, process)
        assert isinstance(eng.compactor.rewriter, ChildProcess if process else InProcess)
        await fill(eng, sids, 12, b"v")
        before = {sid: await read_all(eng, sid) for sid in sids}
        first = await eng.compactor.run_once()
        await fill(eng, sids, 4, b"w")
        second = await eng.compactor.run_once()
        merged = await eng.compactor.merge_once()
        after = {sid: await read_all(eng, sid) for sid in sids}
        assert {sid: after[sid][: len(before[sid])] for sid in sids} == before
        await eng.cleaner.run_once(orphans=False)
        assert {o.key for o in await eng.store.list("")} == await meta.object_keys()
        cold = engine(meta, root, process=False)
        assert {sid: await read_all(cold, sid) for sid in sids} == after
        if process:
            child = eng.compactor.rewriter.pid
            assert child in children(os.getpid())
        await eng.close()
        await cold.close()
        await meta.close()
        if process:
            assert not alive(child), "the child outlived its engine"
        results[process] = [
            (r.objects_in, r.objects_out, r.streams, r.bytes_in) for r in (first, second, merged)
        ]
    assert results[True] == results[False]
    print(results)
    assert results[True][0][1] >= 2  # the long run's objects and a shared one
    assert results[True][2][0] >= 2  # the merge took small objects


async def test_a_source_gone_mid_merge_skips_the_round(meta: MetaStore, tmp_path: Path) -> None:
    """A compacted object deleted after the merge was planned: the child's
    read fails with ObjectNotFound, the round is skipped, nothing is swapped
    and the remaining objects stay where they are."""
    sids = await streams(meta, 2)
    eng = engine(meta, tmp_path)
    for _ in range(3):
        for sid in sids:
            await (await eng.append(sid, validate_batches(make_batch([b"x"]), 1 << 20), 0))
        await eng.compactor.run_once()
    compacted = sorted(k for k in await meta.object_keys() if k.startswith("compacted/"))
    assert len(compacted) == 3
    (tmp_path / "objects" / compacted[1]).unlink()
    result = await eng.compactor.merge_once()
    assert (result.objects_in, result.objects_out) == (0, 0), result
    assert sorted(k for k in await meta.object_keys() if k.startswith("compacted/")) == compacted
    await eng.close()


async def test_a_child_killed_between_rounds_is_replaced(meta: MetaStore, tmp_path: Path) -> None:
    """SIGKILL the child between rounds: the next round starts another and
    compacts everything, nothing lost."""
    sids = await streams(meta, 2)
    eng = engine(meta, tmp_path)
    await fill(eng, sids, 3, b"a")
    await eng.compactor.run_once()
    first = eng.compactor.rewriter.pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not alive(first), "the child to die")
    await fill(eng, sids, 3, b"b")
    expected = {sid: await read_all(eng, sid) for sid in sids}
    result = await eng.compactor.run_once()
    assert result.objects_in == 6 and result.objects_out >= 1, result
    assert eng.compactor.rewriter.pid not in (None, first)
    assert await meta.wal_objects(0, 1 << 62, 1000) == []
    assert {sid: await read_all(eng, sid) for sid in sids} == expected
    await eng.close()


async def test_a_child_killed_mid_job_fails_the_job_and_is_replaced(tmp_path: Path) -> None:
    """The child dies while it works (here: blocked reading a source that is
    a FIFO): the job fails with RewriteFailed, not a hang, and the next job
    runs in a new child."""
    objects = tmp_path / "objects"
    (objects / "wal").mkdir(parents=True)
    fifo = objects / "wal" / "stuck.wal"
    os.mkfifo(fifo)
    child = ChildProcess(objects.as_uri())
    row = [1, 0, 1, "wal/stuck.wal", 0, 100, 0]  # a range in the FIFO
    job = Job(
        RangeRows(json.dumps([row]), None, "[1]"),
        ["wal/stuck.wal"],
        1 << 20,
        None,
        None,
        1024,
        4096,
        None,
        "c/x",
        {},
    )
    task = asyncio.ensure_future(child.run(job))

    def writer() -> int | None:
        """The FIFO's write end once the child has it open for reading,
        held open so that the child's read blocks instead of ending."""
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody has it open for reading yet
            return None

    deadline = time.monotonic() + 30
    while (fd := writer()) is None:
        assert time.monotonic() < deadline, "the child never opened its source"
        await asyncio.sleep(0.02)
    try:
        first = child.pid
        assert first is not None and not task.done()
        os.kill(first, signal.SIGKILL)
        with pytest.raises(RewriteFailed, match="exited"):
            await asyncio.wait_for(task, 30)
    finally:
        os.close(fd)
    empty = Job(RangeRows.empty(), [], 1 << 20, None, None, 1024, 4096, None, "c/y", {})
    assert await child.run(empty) == Round([], 0, [])
    assert child.pid not in (None, first)
    await child.close()


def test_the_child_exits_when_its_broker_is_killed(tmp_path: Path) -> None:
    """A broker compacts in a child (the default); kill -9 the broker and
    the child is gone soon after instead of lingering."""
    b = BrokerProcess(
        tmp_path,
        env={
            "SHOAL_COMPACTION_INTERVAL_MS": "200",
            "SHOAL_COMPACTION_MIN_AGE_MS": "0",
        },
    ).start()
    try:
        p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 0})
        for i in range(20):
            p.produce("compact-me", b"%d" % i)
            p.flush(10)
        assert b.proc is not None
        pid = b.proc.pid
        marker = b"shoal.storage.rewrite"
        wait_for(lambda: children(pid, marker), "the broker's compaction child", 60)
        [child] = children(pid, marker)
        b.kill()
        wait_for(lambda: not alive(child), "the orphaned child to exit", 10)
    finally:
        b.kill()
