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

A WAL that acknowledges as soon as its object is written (`make_ahead`,
eager on a local store) also has files made ahead of need, by a thread of
their own, while no deleted object's file is there to reuse: a broker's
first minutes, and a restart into a directory whose files were removed
moments before, paid for the create on every acknowledgement (the create
alone was 440 µs of a 1.06 ms acknowledgement in session 24's probe).
These are nameless (`O_TMPFILE`): a descriptor on a new inode, named only
by the link that puts the object in place. Named ones in `_spare/` made the
commit's removal of the spare's name wait on that directory's lock while
the thread was creating the next files there (p99 of a lone append 1.8 ->
4.4-6.1 ms); nameless ones need no removal, and a killed process leaves
nothing behind. The pool is small (`AHEAD`): it only has to outlast a
refill.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque

log = logging.getLogger("shoal.objects")

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
#: spares made ahead by `make_ahead`'s default: about 0.2 s of WAL objects at
#: 700 a second, refilled once half are taken
AHEAD = 128


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
        self._root = root
        #: nameless files to keep made ahead (0: none, the default), and how
        #: many were made
        self.ahead = 0
        self.made = 0
        self._made: deque[int] = deque()
        self._filling = threading.Lock()

    def make_ahead(self, count: int = AHEAD) -> None:
        """Keep about `count` nameless files ready from now on, made by a
        thread of their own whenever half of them are taken (the first at
        the first `take`). Where the system has no `O_TMPFILE` (or no
        /proc to link one by), nothing is made."""
        if hasattr(os, "O_TMPFILE") and os.path.isdir(_FDS):
            self.ahead = count

    def stop_ahead(self) -> None:
        """Make no more files ahead, and close those made and not taken."""
        self.ahead = 0
        with self._filling:  # a refill under way stops at its next file
            while self._made:
                os.close(self._made.popleft())

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

    def take(self, create: bool = True) -> tuple[str | None, int] | None:
        """A descriptor open for writing on an empty file, and its name: a
        kept spare's, or None for a nameless file made ahead (only for a
        conditional create: `link_made` puts it in place). None when there
        is neither. A spare removed meanwhile (by the cleaner) is passed
        over."""
        while True:
            try:
                name = self._names.popleft()
            except IndexError:
                break
            try:
                fd = os.open(name, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            self.reused += 1
            return name, fd
        if not create or not self.ahead:
            return None
        if len(self._made) * 2 <= self.ahead:
            self._refill()
        try:
            return None, self._made.popleft()
        except IndexError:
            return None

    def _refill(self) -> None:
        """Start a thread that makes files up to `ahead`, unless one is at it."""
        if not self._filling.acquire(blocking=False):
            return
        try:
            threading.Thread(target=self._fill, name="shoal-spares", daemon=True).start()
        except BaseException:
            self._filling.release()
            raise

    def _fill(self) -> None:
        try:
            while len(self._made) < self.ahead:
                self._made.append(os.open(self._root, _MADE, 0o666))
                self.made += 1
        except OSError as exc:
            # No inode left, or the store's root is gone (never made again
            # here), or a file system without O_TMPFILE: a PUT creates its
            # own file, as without spares, and the next take tries again.
            log.debug("making files ahead in %s stopped: %s", self._root, exc)
        finally:
            self._filling.release()


def link_made(fd: int, path: str) -> None:
    """Give a nameless file made ahead the name `path`; FileExistsError if
    there is one (a conditional create), as os.link."""
    # linkat(AT_SYMLINK_FOLLOW), as open(2) shows for O_TMPFILE. Python calls
    # plain link() unless a directory descriptor is given, and link() does
    # not follow /proc's link to the file (EXDEV); an absolute path ignores
    # the descriptor, so the file's own does.
    os.link(f"{_FDS}/{fd}", path, src_dir_fd=fd)


_FDS = "/proc/self/fd"
#: a nameless file that a link can name later (no O_EXCL)
_MADE = getattr(os, "O_TMPFILE", 0) | os.O_WRONLY | os.O_CLOEXEC
