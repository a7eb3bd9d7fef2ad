from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import BrokerProcess
from shoal.meta.store import MetaStore


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """One broker per test module; tests use unique topic names."""
    b = BrokerProcess(tmp_path_factory.mktemp("broker") / "data").start()
    yield b
    b.stop()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker of the test's own, for restarts and crashes."""
    b = BrokerProcess(tmp_path / "data")
    yield b
    b.kill()


@pytest.fixture
def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers() -> Iterator[list[Any]]:
    """Group members in subprocesses (test_groups_confluent.Worker and its
    kinds) that a test starts: each is stopped when the test ends, pass or fail."""
    started: list[Any] = []
    yield started
    for w in started:
        w.stop()


@pytest.fixture
def gateways() -> Iterator[list[Any]]:
    """Edge gateways in subprocesses (edge_harness.GatewayProcess) that a test
    makes: each is killed when the test ends, pass or fail."""
    made: list[Any] = []
    yield made
    for g in made:
        g.kill()


@pytest.fixture(params=["sqlite", "postgresql"])
async def meta(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MetaStore]:
    """A metadata store on each engine: a SQLite file, the embedded PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/meta.db"
    else:
        from cluster_harness import new_database

        url = new_database()
    m = await MetaStore.open(url)
    yield m
    await m.close()


@pytest.fixture
async def two_stores() -> AsyncIterator[tuple[MetaStore, MetaStore]]:
    """Two brokers' stores on one PostgreSQL database: ours and another's."""
    from cluster_harness import new_database

    url = new_database()
    ours, theirs = await MetaStore.open(url), await MetaStore.open(url)
    try:
        yield ours, theirs
    finally:
        await ours.close()
        await theirs.close()
