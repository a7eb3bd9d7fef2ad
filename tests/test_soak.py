"""A short soak (bench/soak.py --single): a compressed week on one broker with
kill -9 and graceful restarts, a producer outage and burst, replay reads, and
retention, compaction and object deletion running throughout. Every
acknowledged record of the kept topic reads back once, in order; retention
keeps trimming the rolling topic across the restarts. The hour-long cluster
version, with memory, descriptor and object-count series, is the bench."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's storage engine"
)


def test_short_soak_accounts_for_every_acknowledged_record() -> None:
    import soak

    report = soak.main(["--minutes", "0.25", "--single", "--retention-s", "3", "--sample-s", "2"])
    assert report["acknowledged"] > 0
    assert (report["lost"], report["duplicated"], report["phantom"]) == (0, 0, 0)
    assert report["in_order"]
    assert report["producer_errors"] == 0
    assert len(report["events"]) >= 3, report["events"]
    # Retention trimmed every partition of the rolling topic.
    assert all(start > 0 for start in report["rolling_log_start"]), report["rolling_log_start"]
