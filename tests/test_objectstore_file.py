"""PUTs to a file store are written by ObjectStore itself (a staging file
hard-linked into place), not by obstore: what obstore reads back, lists and
refuses must not change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.storage.errors import ObjectExists, ObjectNotFound, ObjectStoreUnavailable
from shoal.storage.objectstore import ObjectStore


async def test_a_put_file_reads_back_through_obstore(tmp_path: Path) -> None:
    store = ObjectStore((tmp_path / "objects").as_uri())
    data = bytearray(os.urandom(5000))
    await store.put("wal/3/0001-42-0000000001.wal", data)
    assert await store.get("wal/3/0001-42-0000000001.wal") == bytes(data)
    assert bytes(await store.get_range("wal/3/0001-42-0000000001.wal", 10, 20)) == data[10:20]
    [info] = await store.list("wal/")
    assert (info.key, info.size) == ("wal/3/0001-42-0000000001.wal", 5000)
    # Nothing staged is left behind (the staging file is `KEY#N`).
    assert sorted(p.name for p in (tmp_path / "objects" / "wal" / "3").iterdir()) == [
        "0001-42-0000000001.wal"
    ]
    await store.delete("wal/3/0001-42-0000000001.wal")
    assert await store.list("wal/") == []


async def test_a_conditional_put_never_overwrites(tmp_path: Path) -> None:
    store = ObjectStore((tmp_path / "objects").as_uri())
    await store.put("compacted/0/a.obj", b"first")
    with pytest.raises(ObjectExists):
        await store.put("compacted/0/a.obj", b"second")
    assert await store.get("compacted/0/a.obj") == b"first"
    await store.put("compacted/0/a.obj", memoryview(b"third"), create=False)
    assert await store.get("compacted/0/a.obj") == b"third"
    assert [p.name for p in (tmp_path / "objects" / "compacted" / "0").iterdir()] == ["a.obj"]


async def test_keys_obstore_encodes_still_go_through_obstore(tmp_path: Path) -> None:
    """A key whose characters obstore's Path percent-encodes is written by
    obstore, so the file is where obstore's reads look for it."""
    store = ObjectStore((tmp_path / "objects").as_uri())
    for key in ("odd/a b.obj", "odd/.hidden", "odd/é%.obj"):
        await store.put(key, key.encode())
        assert await store.get(key) == key.encode()


async def test_a_put_that_cannot_write_is_a_storage_error(tmp_path: Path) -> None:
    """A directory where the object's parent should be: the PUT fails with
    the store's error naming the key, and leaves no staging file."""
    root = tmp_path / "objects"
    store = ObjectStore(root.as_uri())
    (root / "wal").write_bytes(b"a file, not a directory")
    with pytest.raises(ObjectStoreUnavailable, match=r"wal/0/x\.wal"):
        await store.put("wal/0/x.wal", b"data")
    assert sorted(p.name for p in root.iterdir()) == ["wal"]


async def test_an_object_in_parts_is_written_whole_by_writev(tmp_path: Path) -> None:
    """The WAL hands its object over as the appends' buffers plus a tail:
    more buffers than one writev takes (IOV_MAX) still land in order, on a
    file store and, joined, on any other."""
    from shoal.storage import objectstore

    parts: list[bytes | memoryview] = [
        memoryview(os.urandom(1 + i % 7)) if i % 2 else os.urandom(1 + i % 5)
        for i in range(2 * objectstore._IOV_MAX + 3)
    ]
    whole = b"".join(parts)
    for url in ((tmp_path / "objects").as_uri(), "memory:///"):
        store = ObjectStore(url)
        await store.put("wal/0/parts.wal", parts)
        assert await store.get("wal/0/parts.wal") == whole
    # the WAL's own path: the PUT in its commit's thread
    ObjectStore((tmp_path / "objects").as_uri()).local_put("wal/0/parts2.wal", parts)()
    assert (tmp_path / "objects" / "wal" / "0" / "parts2.wal").read_bytes() == whole


def test_a_short_writev_is_finished_buffer_by_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk or a signal can cut a writev short: the rest of its run
    is written from where it stopped, nothing twice."""
    from shoal.storage import objectstore

    real = os.writev

    def short(fd: int, buffers: list[bytes | memoryview]) -> int:
        joined = b"".join(buffers)
        return real(fd, [joined[: len(joined) // 2 + 1]])  # stops inside a buffer

    monkeypatch.setattr(objectstore.os, "writev", short)
    parts: list[bytes | memoryview] = [os.urandom(10 + i) for i in range(40)]
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        objectstore._write_parts(fd, parts)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(parts)


@pytest.mark.parametrize("kind", ["file", "memory"])
async def test_get_many_and_delete_many(tmp_path: Path, kind: str) -> None:
    """Compaction's reads and the cleaner's deletes: a file store's in one
    hop to its threads, any other store's as many GETs and DELETEs. Same
    answers either way, in the keys' order; a key obstore encodes is read
    through obstore even on a file store."""
    store = ObjectStore((tmp_path / "objects").as_uri() if kind == "file" else "memory:///")
    keys = [f"wal/0/{i:04d}.wal" for i in range(20)] + ["odd/a b.obj"]
    for i, key in enumerate(keys):
        await store.put(key, b"%d:" % i + os.urandom(i))
    order = keys[::-1]
    got = await store.get_many(order)
    assert got == [await store.get(k) for k in order]
    assert [g.split(b":")[0] for g in got] == [b"%d" % keys.index(k) for k in order]
    assert await store.get_many([]) == []
    with pytest.raises(ObjectNotFound, match=r"wal/0/missing\.wal"):
        await store.get_many([keys[0], "wal/0/missing.wal"])
    await store.delete_many([*keys[:10], "wal/0/missing.wal", "odd/a b.obj"])  # missing: no error
    assert sorted(o.key for o in await store.list("")) == keys[10:20]


async def test_get_many_on_a_file_store_names_an_unreadable_key(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = ObjectStore(root.as_uri())
    await store.put("wal/0/a.wal", b"a")
    (root / "wal" / "0" / "dir.wal").mkdir()  # not a file: cannot be read
    with pytest.raises(ObjectStoreUnavailable, match=r"wal/0/dir\.wal"):
        await store.get_many(["wal/0/a.wal", "wal/0/dir.wal"])


# -- spare files (storage/spares.py) ----------------------------------------


def _spares(root: Path) -> list[Path]:
    return sorted((root / "_spare").iterdir()) if (root / "_spare").exists() else []


async def test_a_deleted_objects_file_takes_the_next_put(tmp_path: Path) -> None:
    """The cleaner's delete keeps the file, emptied and out of sight; the
    next PUT, into a directory that does not exist yet, is written into it."""
    root = tmp_path / "objects"
    store = ObjectStore(root.as_uri())
    await store.put("wal/0/a.wal", os.urandom(5000))
    inode = (root / "wal" / "0" / "a.wal").stat().st_ino
    await store.delete_many(["wal/0/a.wal"])
    [spare] = _spares(root)
    assert spare.name.endswith("#0") and spare.stat().st_size == 0  # its blocks freed
    assert await store.list("") == []
    with pytest.raises(ObjectNotFound):
        await store.get("wal/0/a.wal")
    data = os.urandom(3000)
    await store.put("compacted/0/b.obj", [data[:1000], memoryview(data)[1000:]])
    assert await store.get("compacted/0/b.obj") == data
    assert (root / "compacted" / "0" / "b.obj").stat().st_ino == inode
    assert _spares(root) == []
    assert sorted(p.name for p in (root / "compacted" / "0").iterdir()) == ["b.obj"]
    assert [o.key for o in await store.list("")] == ["compacted/0/b.obj"]


async def test_spares_are_bounded(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = ObjectStore(root.as_uri())
    assert store._spares is not None
    store._spares.most = 2
    keys = [f"wal/0/{i}.wal" for i in range(5)]
    for key in keys:
        await store.put(key, b"x" * 100)
    await store.delete_many(keys)
    assert len(_spares(root)) == 2
    assert list((root / "wal" / "0").iterdir()) == []


async def test_two_stores_on_one_root_never_share_a_spare(tmp_path: Path) -> None:
    """Each store writes only into the spares it kept, and no two spares of
    one process have the same name, so one file never holds two objects."""
    root = tmp_path / "objects"
    one, two = ObjectStore(root.as_uri()), ObjectStore(root.as_uri())
    for store, key in ((one, "wal/0/1.wal"), (two, "wal/0/2.wal")):
        await store.put(key, b"x" * 100)
        await store.delete_many([key])
    assert len(_spares(root)) == 2
    await one.put("wal/0/3.wal", b"three")
    await two.put("wal/0/4.wal", b"four")
    assert await one.get("wal/0/3.wal") == b"three"
    assert await one.get("wal/0/4.wal") == b"four"
    assert _spares(root) == []


async def test_a_spare_the_cleaner_removed_is_passed_over(tmp_path: Path) -> None:
    """Spares are `#0` files: the cleaner removes old ones as abandoned
    uploads (a killed process's spares go that way), and a PUT then
    creates a new file."""
    root = tmp_path / "objects"
    store = ObjectStore(root.as_uri())
    await store.put("wal/0/a.wal", b"a")
    await store.delete_many(["wal/0/a.wal"])
    [left] = await store.staged_leftovers(older_than_ms=2**62)
    assert left.key.startswith("_spare/")
    await store.delete_staged(left.key)
    await store.put("wal/0/b.wal", b"b")
    assert await store.get("wal/0/b.wal") == b"b"
    assert store._spares is not None and store._spares.reused == 0


async def test_a_refused_conditional_put_into_a_spare_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = ObjectStore(root.as_uri())
    await store.put("wal/0/a.wal", b"first")
    await store.put("wal/0/b.wal", b"b")
    await store.delete_many(["wal/0/b.wal"])
    with pytest.raises(ObjectExists):
        await store.put("wal/0/a.wal", b"second")
    assert await store.get("wal/0/a.wal") == b"first"
    assert sorted(p.name for p in (root / "wal" / "0").iterdir()) == ["a.wal"]
    assert _spares(root) == []  # written into and dropped, not left half-used
    await store.put("wal/0/a.wal", b"third", create=False)  # an overwrite takes one too
    assert await store.get("wal/0/a.wal") == b"third"


async def test_puts_and_deletes_at_once_never_mix_objects(tmp_path: Path) -> None:
    """The writer threads put and delete at the same time, through one pool
    of spares: every object reads back as written, and none is lost."""
    import asyncio

    root = tmp_path / "objects"
    store = ObjectStore(root.as_uri())
    written: dict[str, bytes] = {}

    async def put(i: int) -> None:
        key = f"wal/0/{i:05d}.wal"
        data = os.urandom(100 + i % 700)
        await store.put(key, data)
        written[key] = data

    await asyncio.gather(*(put(i) for i in range(300)))
    for round_ in range(4):
        doomed = sorted(written)[:150]
        fresh = range(300 * (round_ + 1), 300 * (round_ + 1) + 150)
        await asyncio.gather(store.delete_many(doomed), *(put(i) for i in fresh))
        for key in doomed:
            del written[key]
    assert store._spares is not None and store._spares.reused > 0
    assert sorted(o.key for o in await store.list("wal/")) == sorted(written)
    assert await store.get_many(sorted(written)) == [written[k] for k in sorted(written)]


async def test_files_made_ahead_never_bring_a_removed_store_back(tmp_path: Path) -> None:
    """The thread that makes nameless files ahead makes no directory: a
    store removed under it (a test's, a wiped gateway) stays removed, and
    the thread stops. A file made ahead and taken is written and linked
    into place, or refused like any conditional create."""
    import shutil

    from harness import eventually

    root = tmp_path / "objects"
    store = ObjectStore(root.as_uri())
    store.make_spares_ahead()
    spares = store._spares
    assert spares is not None
    await store.put("wal/0/a.wal", b"a")  # the first PUT starts the making
    await eventually(lambda: len(spares._made) == spares.ahead, "the files made")
    await store.put("wal/1/b.wal", b"b")  # into a directory not made yet
    with pytest.raises(ObjectExists):
        await store.put("wal/0/a.wal", b"again")
    assert [await store.get(k) for k in ("wal/0/a.wal", "wal/1/b.wal")] == [b"a", b"b"]
    assert len(spares._made) == spares.ahead - 2 and _spares(root) == []
    made = spares.made
    shutil.rmtree(root)
    while (taken := spares.take()) is not None:
        os.close(taken[1])
    await eventually(lambda: not spares._filling.locked(), "the thread to stop")
    assert not root.exists() and spares.made == made
