"""A broker's memory upkeep and its probe (issue 17, soak): `shoal serve`
caps glibc's malloc arenas and trims freed heap as the gateway does, and with
SHOAL_MEMDEBUG_DIR a SIGUSR1 writes a heap report and a SIGUSR2 trims and
reports what it gave back (bench/memprobe.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from harness import BrokerProcess
from shoal import native_memory as memory


def test_memory_report_on_sigusr1_and_native_memory_bounded(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    b = BrokerProcess(
        tmp_path / "data", env={"SHOAL_MEMDEBUG_DIR": str(reports), "SHOAL_MEMDEBUG_FRAMES": "1"}
    )
    if b.target != "shoal":
        pytest.skip("Shoal's own probe")
    b.start()
    try:
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGUSR1)
        path = reports / f"{b.proc.pid}-1.json"
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        report = json.loads(path.read_text())
        assert path.with_suffix(".tracemalloc").stat().st_size > 0
        assert report["rss_kib"] > 0 and report["traced_bytes"] > 0
        assert report["sizes"]["log_cache_entries"] == 0
        assert report["types"]["dict"] > 0
        if memory._glibc() is not None:
            assert report["malloc"]["in_use"] > 0
            assert "<heap nr=" in path.with_suffix(".malloc.xml").read_text()
            assert "trim_loop" in report["tasks"]
            if "MALLOC_ARENA_MAX" not in os.environ:  # the operator's choice wins
                assert "malloc arenas capped at 2" in b.log()
            # SIGUSR2: malloc_trim on request, with what it gave back
            os.kill(b.proc.pid, signal.SIGUSR2)
            trimmed = reports / f"{b.proc.pid}-trim-1.json"
            deadline = time.monotonic() + 30
            while not trimmed.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            got = json.loads(trimmed.read_text())
            assert got["trim_ms"] >= 0
            assert got["after"]["rss_kib"] > 0 and got["before"]["malloc"]["in_use"] > 0
            assert "<heap nr=" in trimmed.with_suffix(".before.malloc.xml").read_text()
            assert "malloc_trim on request" in b.log()
    finally:
        b.kill()
