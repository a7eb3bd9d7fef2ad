"""Consumer groups through aiokafka, the asyncio client: two members in one
group consume every record exactly once; a member that commits and stops is
followed by one that resumes at the commit."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError

from group_data import produce, setup_topic
from harness import BrokerProcess

TIMEOUT = 60.0
GROUP_ENV = {
    "SHOAL_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    "SHOAL_GROUP_MIN_SESSION_TIMEOUT_MS": "1000",
}


@pytest.fixture
async def gbroker(tmp_path: Path) -> AsyncIterator[BrokerProcess]:
    b = BrokerProcess(tmp_path / "data", env=GROUP_ENV)
    await asyncio.to_thread(b.start)
    yield b
    await asyncio.to_thread(b.stop)


class Member:
    """An aiokafka consumer consuming in its own task, committing each batch
    before counting it."""

    def __init__(self, bootstrap: str, group: str, topic: str, limit: int | None = None) -> None:
        self.c = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Client defaults (10 s session, 3 s heartbeats): no test here
            # relies on a session expiring, and short ones flap on a busy machine.
        )
        self.limit = limit
        self.values: list[str] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Member:
        await asyncio.wait_for(self.c.start(), TIMEOUT)
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while self.limit is None or len(self.values) < self.limit:
            batch = await self.c.getmany(timeout_ms=100, max_records=20)
            records = [r for rs in batch.values() for r in rs]
            if not records:
                continue
            try:
                await self.c.commit()
            except (CommitFailedError, KafkaError):
                for tp, rs in batch.items():
                    if tp in self.c.assignment():
                        self.c.seek(tp, rs[0].offset)
                continue
            self.values.extend(r.value.decode() for r in records if r.value is not None)

    def partitions(self) -> set[int]:
        return {tp.partition for tp in self.c.assignment()}

    async def stop(self) -> None:
        if self.task is not None:
            if self.limit is None:
                self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=self.limit is None)
        await asyncio.wait_for(self.c.stop(), TIMEOUT)


async def until(cond: Callable[[], bool], what: str, members: list[Member]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not cond():
        for m in members:
            if m.task is not None and m.task.done() and m.task.exception() is not None:
                raise AssertionError(f"member failed: {m.task.exception()!r}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_two_members_exactly_once(gbroker: BrokerProcess) -> None:
    topic, expected = await asyncio.to_thread(setup_topic, gbroker.bootstrap, 4, 40, "a")
    group = f"grp-{uuid.uuid4().hex[:8]}"
    members = [await Member(gbroker.bootstrap, group, topic).start() for _ in range(2)]
    try:
        await until(
            lambda: (
                all(m.partitions() for m in members)
                and sum(len(m.values) for m in members) >= len(expected)
            ),
            "both members assigned and every record consumed",
            members,
        )
        a, b = (m.partitions() for m in members)
        assert a.isdisjoint(b) and a | b == {0, 1, 2, 3}
        expected |= await asyncio.to_thread(produce, gbroker.bootstrap, topic, 4, 20, "b")
        await until(
            lambda: sum(len(m.values) for m in members) >= len(expected), "more records", members
        )
        got = [v for m in members for v in m.values]
        assert len(got) == len(set(got)) and set(got) == expected
        assert all(m.values for m in members), "both members did work"
    finally:
        for m in members:
            await m.stop()


async def test_commit_and_resume(gbroker: BrokerProcess) -> None:
    topic, expected = await asyncio.to_thread(setup_topic, gbroker.bootstrap, 1, 100, "r")
    group = f"grp-{uuid.uuid4().hex[:8]}"
    first = await Member(gbroker.bootstrap, group, topic, limit=30).start()
    await until(lambda: len(first.values) >= 30, "30 records", [first])
    await first.stop()
    assert len(first.values) < 100
    second = await Member(gbroker.bootstrap, group, topic).start()
    try:
        await until(lambda: len(first.values) + len(second.values) >= 100, "the rest", [second])
        assert second.values[0] == f"r-0-{len(first.values)}"
        got = first.values + second.values
        assert len(got) == len(set(got)) and set(got) == expected
    finally:
        await second.stop()
