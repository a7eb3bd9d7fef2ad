"""A broker's lease is renewed while its first reconcile opens its
partitions: on PostgreSQL, 10,000 partitions took longer to open than the
lease has before it must be renewed, and the broker lost its lease, and
every partition, right after it started."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from cluster_harness import new_database
from harness import free_port
from shoal.broker.broker import Broker
from shoal.cluster.member import ClusterMember
from shoal.config import load_config


async def test_a_slow_first_reconcile_keeps_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first_watch = ClusterMember._watch_once
    heartbeat = ClusterMember._heartbeat_once
    seen: dict[str, Any] = {"incarnation": None, "beats": 0}
    beats_after_watch = asyncio.Event()

    async def slow_watch(self: ClusterMember) -> None:
        if seen["incarnation"] is None:
            seen["incarnation"] = self.incarnation
            # longer than the lease lasts without renewal (0.75 of the session)
            await asyncio.sleep(self.session_ms / 1000)
        await first_watch(self)

    async def counted_heartbeat(self: ClusterMember) -> None:
        await heartbeat(self)
        if seen["incarnation"] is not None:
            seen["beats"] += 1
            if seen["beats"] >= 3:
                beats_after_watch.set()

    monkeypatch.setattr(ClusterMember, "_watch_once", slow_watch)
    monkeypatch.setattr(ClusterMember, "_heartbeat_once", counted_heartbeat)
    config = load_config(
        env={},
        flags={
            "listen": f"127.0.0.1:{free_port()}",
            "data.dir": str(tmp_path),
            "metadata": new_database(),
            "broker.session.timeout.ms": 1000,
            "broker.heartbeat.interval.ms": 100,
        },
    )
    caplog.set_level(logging.WARNING, logger="shoal.cluster")
    broker = await Broker.open(config)
    try:
        assert broker.cluster is not None
        await asyncio.wait_for(beats_after_watch.wait(), 30)
        assert "lost its lease" not in caplog.text
        assert broker.cluster.incarnation == seen["incarnation"]
        assert broker.cluster.active
    finally:
        await broker.close()
