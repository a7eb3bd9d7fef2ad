"""Stream labels in objects (storage/format.py): written beside the index,
read back with it, and absent from older objects, which still read."""

from __future__ import annotations

import asyncio

from shoal.storage.format import BlockBuilder, decode_object, encode_object, object_parts
from shoal.storage.inventory import read_index
from shoal.storage.objectstore import ObjectStore
from shoal.storage.rebuild import plan


def blocks() -> list[BlockBuilder]:
    return [
        BlockBuilder(7, 0, 3, 100, [b"a" * 40], 40),
        BlockBuilder(9, 10, 12, 200, [b"b" * 30], 30),
    ]


def test_labels_round_trip_and_old_objects_read() -> None:
    async def go() -> None:
        store = ObjectStore("memory:///")
        labeled, entries = encode_object(blocks(), {7: '{"topic":"t","partition":1,"id":"ab"}'})
        old, old_entries = encode_object(blocks())
        assert decode_object(labeled) == entries  # a reader ignoring labels is unaffected
        assert [(e.start_offset, e.end_offset) for e in entries] == [
            (e.start_offset, e.end_offset) for e in old_entries
        ]
        await store.put("wal/0/new.wal", labeled)
        await store.put("wal/0/old.wal", old)
        got, labels = await read_index(store, "wal/0/new.wal", len(labeled))
        assert got == entries and labels == {7: '{"topic":"t","partition":1,"id":"ab"}'}
        got, labels = await read_index(store, "wal/0/old.wal", len(old))
        assert got == old_entries and labels == {}
        report = await plan(store)
        names = {sp.stream_id: (sp.topic, sp.partition) for sp in report.streams}
        assert names[7] == ("t", 1)
        assert names[9] == ("rebuilt-stream-9", 0) and report.unlabeled == [9]

    asyncio.run(go())


def test_object_parts_size_is_the_written_objects_size() -> None:
    """The size object_parts reports is what the metadata records for the
    object and what reads of its tail start from: it must be the bytes
    written, labels or not, blocks of one buffer or of many."""
    many = [BlockBuilder(3, 0, 5, 1, [b"x" * 7, memoryview(b"y" * 11), b"z"], 19)]
    for bs, labels in ((blocks(), {7: "seven"}), (blocks(), None), (many, {3: "three"})):
        parts, entries, size = object_parts(bs, labels)
        whole = b"".join(parts)
        assert size == len(whole)
        assert decode_object(whole) == entries
