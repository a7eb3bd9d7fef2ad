#!/usr/bin/env python3
"""Statements per batched stream open and per group commit (issue 13), on
SQLite and on an embedded PostgreSQL, for 4, 400 and 4,000 streams; counted
with SQLAlchemy's before_cursor_execute hook (an executemany counts once),
plus, on a SQLite file, the statements of the WAL commits' own connection
(shoal.meta.sqlite_commit). Then the CPU time of one group commit of one
stream with an idempotent producer's state (the shape an idempotent
librdkafka producer on one partition makes every few batches), averaged
over `--commits` commits.

    PYTHONPATH=src:tests .venv/bin/python bench/statement_counts.py [--commits 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from typing import Any

from sqlalchemy import event

from cluster_harness import new_database
from shoal.meta.store import MetaStore, ObjectCommit, OpenedStream, ProducerRow, RangeCommit


async def count(url: str, commits: int) -> None:
    meta = await MetaStore.open(url)
    seen = [0]

    def hook(*_args: Any) -> None:
        seen[0] += 1

    def statements() -> int:
        own = getattr(meta, "sqlite_commits", None)  # absent before the SQLite committer
        return seen[0] + (own.statements if own is not None else 0)

    event.listen(meta.engine.sync_engine, "before_cursor_execute", hook)
    name = meta.engine.dialect.name
    for n in (4, 400, 4000):
        topic = await meta.create_topic(f"t{uuid.uuid4().hex[:6]}", n, {})
        sids = [p.stream_id for p in topic.partitions]
        before = statements()
        opened = await meta.open_streams(sids)
        opens = statements() - before
        epochs = {s: r.record.epoch for s, r in opened.items() if isinstance(r, OpenedStream)}
        ranges = [RangeCommit(s, epochs[s], 0, 1, 0, 1, 1) for s in sids]
        producers = [ProducerRow(s, 7, 0, "[]", 1) for s in sids]
        before = statements()
        await meta.commit_objects([ObjectCommit(f"k-{uuid.uuid4().hex}", 1, ranges, producers)], 0)
        print(f"{name}: {n} streams: open {opens}, commit {statements() - before} statements")
    topic = await meta.create_topic(f"t{uuid.uuid4().hex[:6]}", 1, {})
    sid = topic.partitions[0].stream_id
    epoch = (await meta.open_streams([sid]))[sid].record.epoch  # type: ignore[union-attr]
    cpu = time.process_time()
    for i in range(commits):
        await meta.commit_objects(
            [
                ObjectCommit(
                    f"k-{uuid.uuid4().hex}",
                    1 << 20,
                    [RangeCommit(sid, epoch, i * 1000, (i + 1) * 1000, 0, 1 << 20, 1)],
                    [ProducerRow(sid, 7, 0, "[[0, 199, 0, 199]]", 1)],
                )
            ],
            0,
        )
    per = (time.process_time() - cpu) / commits
    print(f"{name}: one stream, one producer: {per * 1e6:.0f} us CPU per commit ({commits})")
    await meta.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=1000)
    a = ap.parse_args()
    await count(f"sqlite:///{tempfile.mkdtemp()}/meta.db", a.commits)
    await count(new_database(), a.commits)


if __name__ == "__main__":
    asyncio.run(main())
