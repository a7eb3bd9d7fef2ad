"""Compaction's rewrite: plan a round, copy its ranges' batches into new
objects and prepare their range swaps, in a child process where the store
can be opened there.

A compaction round's work is per range and per batch, in Python: grouping
ranges into runs, walking batches, cutting blocks, the swap's parameters. A
fleet's one-record ranges make that a unit of work per record, and on the
broker's event loop it took as much of the core as the produce path it
competes with (docs/BENCHMARKS.md, session 16). A child process does it on
the other core. The broker keeps what touches the metadata store or its
own state: it lists the candidates, reads their ranges as one text (meta's
`range_rows`, built inside the database), runs the prepared swaps
and updates what it serves from. Nothing per range is a Python object in
the broker.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import itertools
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from shoal.meta.range_rows import RangeRows, Row
from shoal.meta.range_swap import PreparedSwap, prepare
from shoal.protocol.records import batch_spans
from shoal.storage.concurrency import gather_bounded
from shoal.storage.errors import StorageError
from shoal.storage.format import BlockBuilder, object_parts
from shoal.storage.objectstore import ObjectStore

log = logging.getLogger("shoal.compaction")

#: one stream's contiguous ranges
Run = tuple[int, list[Row]]


@dataclass(frozen=True, slots=True)
class Job:
    """A round's input: the metadata's rows of its candidate objects (meta's
    `range_rows`) and how to cut them into objects."""

    rows: RangeRows
    candidates: list[str]  # the objects to take: oldest first
    #: a WAL round takes candidates in order while their ranges fit in this
    #: many bytes (at least one); None: a merge takes them all
    max_bytes: int | None
    #: merge: objects read whole; the others' live ranges are read alone
    whole: list[str] | None
    #: merge: small runs packed into shared objects of about this size;
    #: None: one shared object
    pack_bytes: int | None
    block_bytes: int
    stream_object_bytes: int
    #: SQLite: the swap's chunks are prepared here, of at most this many
    #: old ranges (MetaStore.swap_chunk_ranges); None: PostgreSQL
    chunk_ranges: int | None
    key_prefix: str  # the new objects are this plus "-N.obj"
    labels: dict[int, str]  # the streams' owners, written into the objects


@dataclass(frozen=True, slots=True)
class Written:
    key: str
    kind: str  # "stream" (one stream's) or "set" (shared)
    size: int
    swap: PreparedSwap


@dataclass(frozen=True, slots=True)
class Round:
    chosen: list[str]  # the candidates taken
    bytes_in: int  # their ranges' bytes
    written: list[Written]


async def rewrite(store: ObjectStore, job: Job) -> Round:
    """Plan a round from its rows, read its sources, then build and write
    its objects in order, each with its swap prepared. Raises the store's
    errors (ObjectNotFound: a source deleted since the round was listed);
    objects written before an error are left to the cleaner as
    uncommitted uploads."""
    rows = job.rows.rows()
    rows.sort(key=_stream_start)
    chosen, size = _choose(rows, job.candidates, job.max_bytes)
    taken = set(chosen)
    rows = [r for r in rows if r[3] in taken]
    outputs = _plan(rows, job)
    if job.whole is None:
        whole = _with_rows(chosen, rows)
        parts: list[tuple[str, int, int]] = []
    else:
        whole = job.whole
        wholes = set(whole)
        parts = [(r[3], r[4], r[5]) for r in rows if r[3] not in wholes and r[5]]
    blobs = await store.get_many(whole)
    views = await gather_bounded(
        [functools.partial(store.get_range, k, p, p + n) for k, p, n in parts]
    )
    data = dict(zip(whole, blobs, strict=True))
    pieces = {(k, p): v for (k, p, _n), v in zip(parts, views, strict=True)}

    def block_of(key: str, position: int, size: int) -> memoryview:
        if key in data:
            return memoryview(data[key])[position : position + size]
        return pieces.get((key, position), memoryview(b""))

    # What a stream's old ranges must still lie in for its swap to go ahead.
    sources = tuple(whole if job.whole is None else job.candidates)
    written = []
    for n, (kind, runs) in enumerate(outputs):
        key = f"{job.key_prefix}-{n}.obj"
        blocks, plan = await _blocks(runs, block_of, job.block_bytes)
        labels = {b.stream_id: job.labels[b.stream_id] for b in blocks if b.stream_id in job.labels}
        # Not assembled: a file store writes the batches' buffers with writev,
        # another store joins them off the event loop.
        payload, entries, object_size = object_parts(blocks, labels)
        await store.put(key, payload)
        swaps = [
            (
                sid,
                starts,
                [
                    (e.start_offset, e.end_offset, e.position, e.size, e.max_timestamp)
                    for e in entries[lo:hi]
                ],
            )
            for sid, starts, lo, hi in plan
        ]
        written.append(Written(key, kind, object_size, prepare(swaps, sources, job.chunk_ranges)))
    return Round(chosen, size, written)


def _stream_start(r: Row) -> tuple[int, int]:
    return r[0], r[1]


def _with_rows(keys: list[str], rows: list[Row]) -> list[str]:
    """Of `keys`, those some range lies in (the others hold nothing left)."""
    present = {r[3] for r in rows}
    return [k for k in keys if k in present]


def _choose(rows: list[Row], candidates: list[str], most: int | None) -> tuple[list[str], int]:
    """A round's objects, oldest first, while their ranges fit in `most`
    bytes (always at least one), and those ranges' bytes."""
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[r[3]] = sizes.get(r[3], 0) + r[5]
    chosen: list[str] = []
    size = 0
    for key in candidates:
        if most is not None and chosen and size + sizes.get(key, 0) > most:
            break
        chosen.append(key)
        size += sizes.get(key, 0)
    return chosen, size


def _plan(rows: list[Row], job: Job) -> list[tuple[str, list[Run]]]:
    """Each stream run of at least stream_object_bytes as objects of its
    own (pieces of about that size); the smaller runs shared: in one
    object, or packs of about pack_bytes."""
    outputs: list[tuple[str, list[Run]]] = []
    shared: list[Run] = []
    for sid, stream_rows in itertools.groupby(rows, key=_stream_of):
        for run in _contiguous(list(stream_rows)):
            if sum(r[5] for r in run) >= job.stream_object_bytes:
                for piece in _pieces(run, job.stream_object_bytes):
                    outputs.append(("stream", [(sid, piece)]))
            else:
                shared.append((sid, run))
    if shared and job.pack_bytes is None:
        outputs.append(("set", shared))
    elif shared and job.pack_bytes is not None:
        outputs += [("set", pack) for pack in _packs(shared, job.pack_bytes)]
    return outputs


def _stream_of(r: Row) -> int:
    return r[0]


def _contiguous(rows: list[Row]) -> list[list[Row]]:
    runs: list[list[Row]] = []
    for r in rows:
        if runs and runs[-1][-1][2] == r[1]:
            runs[-1].append(r)
        else:
            runs.append([r])
    return runs


def _packs(runs: list[Run], target: int) -> list[list[Run]]:
    """Small runs of many streams packed into shared objects of about
    `target` bytes (a tail under half of it joins the pack before), so
    merged objects leave the small tiers instead of growing without end."""
    packs: list[list[Run]] = []
    size = target
    for sid, run in runs:
        if size >= target:
            packs.append([])
            size = 0
        packs[-1].append((sid, run))
        size += sum(r[5] for r in run)
    if len(packs) > 1 and size < target // 2:
        packs[-2].extend(packs.pop())
    return packs


def _pieces(run: list[Row], target: int) -> list[list[Row]]:
    """A long run cut at range boundaries (a range is swapped whole) into
    pieces of about `target` bytes; a tail under half of it joins the piece
    before, rather than becoming a small object of its own."""
    pieces: list[list[Row]] = [[]]
    size = 0
    for r in run:
        if size >= target:
            pieces.append([])
            size = 0
        pieces[-1].append(r)
        size += r[5]
    if len(pieces) > 1 and size < target // 2:
        pieces[-2].extend(pieces.pop())
    return pieces


async def _blocks(
    runs: list[Run], block_of: Callable[[str, int, int], memoryview], block_bytes: int
) -> tuple[list[BlockBuilder], list[tuple[int, list[int], int, int]]]:
    """The runs' batches cut into blocks; per run: its stream, the start
    offsets of the ranges it replaces, and its blocks [first, last)."""
    blocks: list[BlockBuilder] = []
    plan: list[tuple[int, list[int], int, int]] = []
    for sid, run in runs:
        first_block = len(blocks)
        current: BlockBuilder | None = None
        await asyncio.sleep(0)  # one stream's run at a time, then let clients in
        for _sid, _start, _end, key, position, size, _ts in run:
            block = block_of(key, position, size)
            for start, end in batch_spans(block):
                batch = block[start:end]
                base = int.from_bytes(batch[0:8], "big", signed=True)
                last = base + int.from_bytes(batch[23:27], "big", signed=True)
                max_ts = int.from_bytes(batch[35:43], "big", signed=True)
                if current is None or current.size + len(batch) > block_bytes:
                    # Blocks tile the run exactly: a range key compaction
                    # left wider than its batches (offsets whose records
                    # went) keeps covering them, so reads find no gap.
                    begin = run[0][1] if current is None else current.end_offset
                    current = BlockBuilder(sid, begin, last + 1, max_ts, [], 0)
                    blocks.append(current)
                current.add(batch, last + 1, max_ts)
        if current is None:  # no batch left in the run (all its records compacted away)
            ts = max(r[6] for r in run)
            current = BlockBuilder(sid, run[0][1], run[-1][2], ts, [], 0)
            blocks.append(current)
        current.end_offset = run[-1][2]
        plan.append((sid, [r[1] for r in run], first_block, len(blocks)))
    return blocks, plan


class Rewriter(Protocol):
    async def run(self, job: Job) -> Round: ...

    async def close(self) -> None: ...


class InProcess:
    """On the caller's event loop (tests, a memory:// store, a wrapped store)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    async def run(self, job: Job) -> Round:
        return await rewrite(self.store, job)

    async def close(self) -> None:
        pass


class RewriteFailed(StorageError):
    """The child process exited, or failed in a way that does not pickle."""


_LEN = struct.Struct(">I")
#: the child imports this package from where this process did
_IMPORTED_FROM = str(Path(__file__).resolve().parents[2])


class ChildProcess:
    """One child process (`python -c` running `serve`), started on first use
    (a broker that never compacts never starts one) and again after one
    exits. It opens its own handle on the store, from the URL and options
    sent as its first frame (not its command line: options hold
    credentials). Frames are pickles behind a 4-byte length, one job and
    one answer at a time. When the broker exits, however it exits, the
    child reads the end of its input and exits too."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def run(self, job: Job) -> Round:
        async with self._lock:
            proc = self._proc
            if proc is None or proc.returncode is not None:
                proc = self._proc = await self._start()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _send(proc.stdin, job)
                await proc.stdin.drain()
                head = await proc.stdout.readexactly(_LEN.size)
                ok, value = pickle.loads(await proc.stdout.readexactly(_LEN.unpack(head)[0]))
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                await self._stop(kill=True)
                raise RewriteFailed(
                    f"compaction's child process {proc.pid} exited ({proc.returncode}); "
                    "the next round starts another"
                ) from exc
            except BaseException:
                # Cancelled with a job in flight: its answer would be read as
                # the next job's.
                await self._stop(kill=True)
                raise
        if not ok:
            raise value
        return cast(Round, value)

    async def _start(self) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_IMPORTED_FROM, env.get("PYTHONPATH")]))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from shoal.storage.rewrite import serve; serve()",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None
        _send(proc.stdin, (self.url, self.options))
        log.info("compaction rewrites in child process %d", proc.pid)
        return proc

    async def close(self) -> None:
        async with self._lock:
            await self._stop(kill=False)

    async def _stop(self, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the child exits at the end of its input
        if kill and proc.returncode is None:
            proc.kill()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _send(stream: asyncio.StreamWriter, value: object) -> None:
    data = pickle.dumps(value, protocol=5)
    stream.writelines([_LEN.pack(len(data)), data])


def child_or_in_process(store: ObjectStore, use_child: bool) -> Rewriter:
    """A child process when asked for and the store can be opened there
    again (not memory://, whose objects live in this process; not a
    subclass, such as a test's fault injector)."""
    if use_child and type(store) is ObjectStore and not store.url.startswith("memory:"):
        return ChildProcess(store.url, store.options)
    return InProcess(store)


# -- in the child ----------------------------------------------------------


def serve() -> None:
    """The child's loop: jobs in on stdin, answers out on stdout, until the
    end of its input."""
    # Ctrl-C in a terminal reaches the whole process group: the broker
    # decides when its child stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries the answers only
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    first = _read(source)
    if first is None:
        return
    url, options = pickle.loads(first)
    store = ObjectStore(url, options)
    loop = asyncio.new_event_loop()
    # A job makes a list per range (its rows) and keeps them all to its
    # end: the collector would traverse and promote them again and again,
    # full collections included (2.4 s in 30 s of a fleet's compaction, on
    # the core the broker shares). Reference counts free a job's objects;
    # one collection after each job takes the rare cycle.
    gc.disable()
    gc.freeze()
    while (frame := _read(source)) is not None:
        answer: tuple[bool, object]
        try:
            answer = (True, loop.run_until_complete(rewrite(store, pickle.loads(frame))))
        except Exception as exc:
            answer = (False, exc)
        finally:
            gc.collect()
        try:
            data = pickle.dumps(answer, protocol=5)
        except Exception:
            data = pickle.dumps((False, RewriteFailed(repr(answer[1]))), protocol=5)
        sink.write(_LEN.pack(len(data)))
        sink.write(data)
        sink.flush()


def _read(source: BinaryIO) -> bytes | None:
    head = source.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    size = _LEN.unpack(head)[0]
    data = source.read(size)
    return data if len(data) == size else None
