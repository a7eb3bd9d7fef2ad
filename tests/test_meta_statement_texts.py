"""The metadata store runs a few SQL texts per statement, however long its
IN lists (shoal.meta.params): every distinct text is an entry in each pooled
connection's statement cache (asyncpg's prepared statements, sqlite3's
compiled ones), so texts that changed with every cleaner and compaction round
filled those caches and grew the brokers' RSS for as long as they ran
(docs/RELIABILITY.md, Soak). SQLite and the embedded PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import event

from shoal.meta.params import padded
from shoal.meta.store import MetaStore, RangeCommit
from shoal.meta.transactions import TxnRepository

#: Lengths the churn below uses: 1..40 keys, 1..6 streams of 1..8 ranges.
KEYS = 40
STREAMS = 6
RANGES = 8


def test_padded_keeps_the_values_at_a_power_of_two_length() -> None:
    assert padded([]) == []
    assert padded([7]) == [7]
    assert padded([1, 2, 3]) == [1, 2, 3, 3]
    for n in range(1, 70):
        out = padded(range(n))
        assert len(out) & (len(out) - 1) == 0 and n <= len(out) < 2 * n
        assert out[:n] == list(range(n)) and set(out) == set(range(n))


def texts_of(meta: MetaStore) -> set[str]:
    """Through the engine, and on a SQLite file also those of the WAL
    committer's own connection (where the range swap runs)."""
    texts: set[str] = set()

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        texts.add(statement)

    event.listen(meta.engine.sync_engine, "before_cursor_execute", seen)
    if meta.sqlite_commits is not None:
        meta.sqlite_commits.transaction_sync(lambda conn: conn.set_trace_callback(texts.add))
    return texts


async def test_churned_list_lengths_reuse_a_few_statement_texts(meta: MetaStore) -> None:
    """The cleaner's and compaction's statements with every list length in
    the ranges above: each statement keeps to its padded lengths (old code:
    one text per length, 200 and more here). The transaction poller's read
    takes no list any more (TxnRepository.pending_markers)."""
    topic = await meta.create_topic(f"t{uuid.uuid4().hex[:6]}", STREAMS, {})
    sids = [p.stream_id for p in topic.partitions]
    keys = [f"wal/k{i}.wal" for i in range(KEYS)]
    texts = texts_of(meta)
    for n in range(1, KEYS + 1):
        await meta.ranges_in_objects(keys[:n])
        await meta.forget_objects(keys[:n])
    for n in range(1, STREAMS + 1):
        for ranges in range(1, RANGES + 1):
            runs = [
                (sid, list(range(ranges)), [RangeCommit(sid, 0, 0, ranges, 0, 10, 0)])
                for sid in sids[:n]
            ]
            # Nothing matches (no such ranges): the look-up runs, no swap.
            assert await meta.replace_ranges(f"compacted/{n}-{ranges}", 1, 0, "set", runs, 0) == []
    per_statement = {
        "ranges_in_objects": [t for t in texts if "FROM stream_ranges JOIN objects" in t],
        "forget_objects": [t for t in texts if t.startswith("DELETE FROM objects")],
        "replace_ranges": [
            t for t in texts if "stream_ranges" in t and ("count(*)" in t or "LEFT JOIN" in t)
        ],
    }
    # 1..40 keys padded to 1, 2, 4, ..., 64: 7 texts (40 before); the
    # swap's look-up: one text, a join with a temporary table filled from
    # JSON on SQLite, two arrays on PostgreSQL (19 for the 48 cases with
    # padded IN lists, 48 with an OR term per stream).
    bounds = {"ranges_in_objects": 7, "forget_objects": 7, "replace_ranges": 1}
    for name, found in per_statement.items():
        assert 0 < len(found) <= bounds[name], (name, len(found))


async def test_pending_markers_are_every_marker_oldest_first(meta: MetaStore) -> None:
    """Every pending marker is read, whichever broker owns its stream (the
    poller looks each one's partition up), in the order they were asked."""
    topic = await meta.create_topic(f"t{uuid.uuid4().hex[:6]}", 3, {})
    a, b, c = (p.stream_id for p in topic.partitions)
    txns = TxnRepository(meta)
    assert await txns.pending_markers() == []
    await txns.ask_markers("tx1", 7, 0, True, [c, a])
    await txns.ask_markers("tx2", 8, 0, False, [b, a])
    got = await txns.pending_markers()
    assert [(m.transactional_id, m.stream_id, m.commit) for m in got] == [
        ("tx1", c, True),
        ("tx1", a, True),
        ("tx2", b, False),
        ("tx2", a, False),
    ]
    await txns.drop_marker(got[0].id)
    assert await txns.pending_markers() == got[1:]
