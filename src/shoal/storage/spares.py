"""Spare files: a file store writes new objects into the files of deleted ones.

On ext4 without a journal (which some gateways run on flash to spare it
writes, and which the machines this project is measured on have), creating
a file skips every inode freed in the last 60 s, 360 s while its inode
table block is dirty, and reads that inode's table block to find out
(`recently_deleted` in the kernel's fs/ext4/ialloc.c). A broker on a local
store deletes WAL objects (compaction, after the grace period) about as
fast as it writes them, so every new WAL object paid for walking past
thousands of freshly freed inodes. At 10,000 records a second the object's
file took 257 µs at the median and 852 µs at p90 of the WAL commit's
thread (most of it kernel CPU), against about 20 µs for a create in a
quiet directory; with spares, 112 and 245 µs (docs/BENCHMARKS.md, session
24).

So a file store keeps the files of objects it deletes, emptied (their
blocks freed at once), in `_spare/`, up to `MOST` of them, and writes the
next objects into those: no inode is freed or allocated. Each process
keeps its own (named by its pid and a process-wide sequence, listed only
in its memory), so no two writers ever take the same file. A spare is
named `…#0`, which obstore's listing skips like any staging file; the
cleaner removes one unused for object.orphan.grace.ms (`is_spare`), which
is also how spares a killed process left behind go.

An object's file is only kept after its delete, which comes after the
object's grace period (object.delete.grace.ms): a read still holding the
file open by then would have to be a minute old.
"""

from __future__ import annotations

import itertools
import os
from collections import deque

#: the directory under a file store's root
DIRECTORY = "_spare"
#: files kept at most. A compaction round's WAL objects are deleted together,
#: up to an interval's worth (21,000 at 700 objects a second and 30 s); the
#: rest are unlinked. An empty file is an inode and a directory entry; one
#: unused for object.orphan.grace.ms is removed by the cleaner.
MOST = 16384
#: one sequence for every store of the process: two stores on one root must
#: never name a spare alike (a rename would put one file in both)
_SEQ = itertools.count(1)


def is_spare(key: str) -> bool:
    """Whether a key under a file store's root names a spare, not an object
    or an upload."""
    return key.startswith(DIRECTORY + "/")


class Spares:
    """A file store's spare files. Thread-safe: a deque's append and popleft
    are atomic, and the writer threads share one instance."""

    def __init__(self, root: str, most: int = MOST) -> None:
        self.directory = f"{root}/{DIRECTORY}"
        self.most = most
        self._names: deque[str] = deque()
        self._prefix = f"{self.directory}/{os.getpid()}-"
        #: files written into a spare instead of a new one (for tests, stats)
        self.reused = 0

    def keep(self, path: str) -> bool:
        """Delete the file at `path` by moving it here, emptied. False if
        there is no room (the caller unlinks it). Raises FileNotFoundError
        if there is no file at `path`, as os.unlink would."""
        if len(self._names) >= self.most:
            return False
        spare = f"{self._prefix}{next(_SEQ)}#0"
        try:
            os.rename(path, spare)
        except FileNotFoundError:
            if not os.path.exists(path):
                raise
            os.makedirs(self.directory, exist_ok=True)  # the first one kept
            os.rename(path, spare)
        os.truncate(spare, 0)
        self._names.append(spare)
        return True

    def take(self) -> tuple[str, int] | None:
        """A spare's name and a descriptor open on it for writing (emptied
        again), or None when there is none left. A spare removed meanwhile
        (by the cleaner) is passed over."""
        while True:
            try:
                name = self._names.popleft()
            except IndexError:
                return None
            try:
                fd = os.open(name, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            self.reused += 1
            return name, fd
