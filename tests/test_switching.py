"""A broker process runs with a short GIL switch interval
(shoal.broker.switching): with CPython's 5 ms a busy event loop keeps the
broker's threads (SQLite commits, file writes) waiting for the GIL."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from shoal.broker import switching
from shoal.cli import run_async


@pytest.fixture
def restored_interval() -> Iterator[None]:
    before = sys.getswitchinterval()
    yield
    sys.setswitchinterval(before)


def test_the_server_runs_with_the_short_switch_interval(restored_interval: None) -> None:
    sys.setswitchinterval(0.005)
    seen: list[float] = []

    async def server() -> None:
        seen.append(sys.getswitchinterval())

    run_async(server())
    assert seen == [pytest.approx(switching.SWITCH_INTERVAL_S)]
    assert switching.SWITCH_INTERVAL_S < 0.005
