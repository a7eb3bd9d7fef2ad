#!/usr/bin/env python3
"""Statements per batched stream open and per group commit (issue 13), on
SQLite and on an embedded PostgreSQL, for 4, 400 and 4,000 streams; counted
with SQLAlchemy's before_cursor_execute hook (an executemany counts once).

    PYTHONPATH=src:tests .venv/bin/python bench/statement_counts.py
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from typing import Any

from sqlalchemy import event

from cluster_harness import new_database
from shoal.meta.store import MetaStore, ObjectCommit, OpenedStream, ProducerRow, RangeCommit


async def count(url: str) -> None:
    meta = await MetaStore.open(url)
    seen = [0]

    def hook(*_args: Any) -> None:
        seen[0] += 1

    event.listen(meta.engine.sync_engine, "before_cursor_execute", hook)
    for n in (4, 400, 4000):
        topic = await meta.create_topic(f"t{uuid.uuid4().hex[:6]}", n, {})
        sids = [p.stream_id for p in topic.partitions]
        seen[0] = 0
        opened = await meta.open_streams(sids)
        opens = seen[0]
        epochs = {s: r.record.epoch for s, r in opened.items() if isinstance(r, OpenedStream)}
        ranges = [RangeCommit(s, epochs[s], 0, 1, 0, 1, 1) for s in sids]
        producers = [ProducerRow(s, 7, 0, "[]", 1) for s in sids]
        seen[0] = 0
        await meta.commit_objects([ObjectCommit(f"k-{uuid.uuid4().hex}", 1, ranges, producers)], 0)
        print(f"{meta.engine.dialect.name}: {n} streams: open {opens}, commit {seen[0]} statements")
    await meta.close()


async def main() -> None:
    await count(f"sqlite:///{tempfile.mkdtemp()}/meta.db")
    await count(new_database())


if __name__ == "__main__":
    asyncio.run(main())
