"""Small filesystems that fill up, for ENOSPC tests: a size-limited tmpfs
mounted by the test (root only; tests skip, saying why, where mounting is not
permitted) and a filler file that takes every free byte until it is removed."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_PROBE: list[str] = []  # the reason mounting fails here, once known ("" = it works)


def mount_refusal(base: Path) -> str:
    """Why a tmpfs cannot be mounted here ('' when it can): tried once."""
    if not _PROBE:
        probe = base / "mount-probe"
        probe.mkdir(parents=True, exist_ok=True)
        try:
            res = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                capture_output=True,
                text=True,
            )
        except OSError as exc:  # no mount command
            _PROBE.append(f"cannot mount a tmpfs: {exc}")
            return _PROBE[0]
        if res.returncode == 0:
            subprocess.run(["umount", str(probe)], check=True)
            _PROBE.append("")
        else:
            _PROBE.append(f"cannot mount a tmpfs: {(res.stderr or res.stdout).strip()}")
    return _PROBE[0]


@contextmanager
def small_fs(path: Path, size: str = "8m") -> Iterator[SmallFs]:
    """A tmpfs of `size` at `path` for the block; skips the test where
    mounting is not permitted; always unmounted after."""
    reason = mount_refusal(path.parent)
    if reason:
        pytest.skip(reason)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield SmallFs(path)
    finally:
        # lazy: a broker killed a moment ago may still hold a file open
        subprocess.run(["umount", "-l", str(path)], check=False)


class SmallFs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def free(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> int:
        """Take all free space but `leave` bytes; returns the filler's size."""
        chunk = b"\0" * 65536
        with open(self.filler, "ab", buffering=0) as f:
            while True:
                room = self.free() - leave
                if room <= 0:
                    break
                try:
                    f.write(chunk[: min(len(chunk), room)])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        return self.filler.stat().st_size

    def release(self) -> None:
        self.filler.unlink(missing_ok=True)
