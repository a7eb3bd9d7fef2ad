"""Mistakes that must not hurt the data (issue 15, items 1-3): brokers of a
new cluster starting together, two brokers on one data directory, and
directories the broker cannot write."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from cluster_harness import Cluster
from harness import BrokerProcess, free_port

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's own start-up"
)


def test_brokers_of_a_new_cluster_start_together(tmp_path: Path) -> None:
    """Three brokers started at once on a fresh PostgreSQL database all come
    up: the schema is created once, under an advisory lock. Without the lock
    two of three fresh databases saw a broker die on a duplicate pg_type row
    (and every one on the counters' first insert); three fresh databases make
    a miss unlikely."""
    for run in range(3):
        cluster = Cluster(tmp_path / f"run{run}")
        try:
            with ThreadPoolExecutor(len(cluster.brokers)) as pool:
                started = list(pool.map(lambda b: b.start(timeout=60), cluster.brokers.values()))
            assert all(b.proc is not None and b.proc.poll() is None for b in started)
        finally:
            cluster.stop()


def serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`shoal serve` that is expected to refuse to start: it must exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "shoal", "serve", "--listen", f"127.0.0.1:{free_port()}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_second_broker_on_one_data_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = BrokerProcess(data).start()
    try:
        assert first.proc is not None
        out = serve("--data-dir", str(data))
        assert out.returncode == 1, out.stderr
        assert f"in use by pid {first.proc.pid}" in out.stderr, out.stderr
        assert str(data) in out.stderr
        assert "Traceback" not in out.stderr
        assert first.proc.poll() is None  # the holder goes on
        # An explicit SQLite database in the same place is the same state.
        out = serve(
            "--data-dir", str(tmp_path / "other"), "--metadata", f"sqlite:///{data}/meta.db"
        )
        assert out.returncode == 1 and f"pid {first.proc.pid}" in out.stderr, out.stderr
    finally:
        assert first.stop() == 0
    # Once the holder is gone the directory is free again, even after a kill -9.
    again = BrokerProcess(data, port=free_port()).start()
    again.kill()
    BrokerProcess(data, port=free_port()).start().stop()


@contextmanager
def unwritable(path: Path) -> Iterator[Path]:
    """A directory nobody may create files in: chmod for a normal user; as
    root (which ignores permission bits) the immutable attribute."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a directory unwritable")
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"running as root and chattr +i failed: {made.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def refused(out: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shoal: cannot start: "), out.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


def test_unwritable_objects_directory_is_named_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with unwritable(data / "objects") as objects:
        out = serve("--data-dir", str(data))
    refused(out, f"objects directory {objects}", "cannot create a file in it", "mode ")


def test_unwritable_data_directory_is_named_at_start(tmp_path: Path) -> None:
    with unwritable(tmp_path / "data") as data:
        out = serve("--data-dir", str(data))
    refused(out, f"data directory {data}", "cannot create a file in it")


def test_data_directory_under_a_file_is_named_at_start(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a directory")
    data = tmp_path / "plain" / "data"
    out = serve("--data-dir", str(data))
    refused(out, f"data directory {data}", "cannot create it", "Not a directory")


def test_unwritable_sqlite_directory_is_named_at_start(tmp_path: Path) -> None:
    with unwritable(tmp_path / "meta") as meta_dir:
        out = serve(
            "--data-dir", str(tmp_path / "data"), "--metadata", f"sqlite:///{meta_dir}/m.db"
        )
    refused(out, f"directory {meta_dir}", "cannot create a file in it")


def test_objects_directory_under_a_file_is_named_at_start(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a directory")
    objects = tmp_path / "plain" / "objects"
    out = serve("--data-dir", str(tmp_path / "data"), "--objects", objects.as_uri())
    refused(out, f"objects directory {objects}", "Not a directory")
