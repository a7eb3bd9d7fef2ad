"""A broker's lease renewal against the embedded PostgreSQL when its event loop
stalls (a loaded machine) or its pooled connections' sessions were ended by
the server: the faults behind the soak's "heartbeat failed: cannot switch to
state 11; another operation (2) is in progress" (docs/RELIABILITY.md). A
stall is the loop blocked by a callback, as a starved process is; the
server ends sessions itself (idle_in_transaction_session_timeout,
pg_terminate_backend)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, select, text

from cluster_harness import new_database, postgres
from shoal.meta import schema as s
from shoal.meta.cluster import ClusterStore
from shoal.meta.store import MetaStore

LEASE_MS = 3000
#: longer than the sessions' idle_in_transaction_session_timeout (2 s)
STALL_S = 2.5


@pytest.fixture
async def meta() -> AsyncIterator[MetaStore]:
    m = await MetaStore.open(new_database())
    yield m
    await m.close()


async def lease_expiry(meta: MetaStore, node_id: int) -> int:
    async with meta.engine.connect() as conn:
        value = (
            await conn.execute(
                select(s.brokers.c.lease_expiry_ms).where(s.brokers.c.node_id == node_id)
            )
        ).scalar_one()
    return int(value)


def stall_on(meta: MetaStore, prefix: str) -> list[str]:
    """Block the event loop for STALL_S as soon as the task running the
    next statement starting with `prefix` waits (after BEGIN, if it runs in
    a transaction): what a starved broker's loop does. Returns the list of
    statements stalled on."""
    loop = asyncio.get_running_loop()
    stalled: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if not stalled and statement.startswith(prefix):
            stalled.append(statement)
            loop.call_soon(time.sleep, STALL_S)

    event.listen(meta.engine.sync_engine, "before_cursor_execute", before)
    return stalled


async def test_a_renewal_outlives_a_loop_stall_longer_than_the_idle_in_transaction_timeout(
    meta: MetaStore,
) -> None:
    """The renewal held a transaction open across the stall, the server
    ended the session (FATAL, idle in transaction) and asyncpg, reading it
    while idle, failed the UPDATE with "cannot switch to state 11; another
    operation (2) is in progress". Now it holds none, nor do the
    heartbeat's other statements, running beside it through the stall."""
    cs = ClusterStore(meta)
    inc = await cs.register(1, "h", 1, None, LEASE_MS)
    before = await lease_expiry(meta, 1)
    stalled = stall_on(meta, "UPDATE brokers")
    renewed, controller, brokers = await asyncio.gather(
        cs.renew(1, inc, LEASE_MS), cs.take_controller(1, inc, LEASE_MS), cs.brokers()
    )
    assert stalled, "the stall was not injected"
    assert renewed and controller
    assert [b.node_id for b in brokers] == [1]
    assert await lease_expiry(meta, 1) > before


async def test_a_renewal_that_draws_a_connection_the_server_ended_retries_on_a_new_one(
    meta: MetaStore,
) -> None:
    """The pooled connection's session ends (an administrator, a restart, a
    timeout) while the loop is stalled: asyncpg reads the server's FATAL
    before the socket's end and the next statement on it fails with "cannot
    switch to state N; another operation (2) is in progress". The renewal
    counts that as a dead connection and retries at once on a fresh one."""
    cs = ClusterStore(meta)
    inc = await cs.register(1, "h", 1, None, LEASE_MS)
    assert await cs.renew(1, inc, LEASE_MS)  # its statement is prepared on the pooled connection
    async with meta.engine.connect() as conn:
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        db = (await conn.execute(text("SELECT current_database()"))).scalar_one()
    outcome: list[Any] = []

    async def beat() -> None:
        await asyncio.sleep(0.05)
        try:
            outcome.append(await cs.renew(1, inc, LEASE_MS))
        except Exception as exc:
            outcome.append(exc)

    task = asyncio.create_task(beat())
    await asyncio.sleep(0)  # its timer runs
    # The loop is blocked from here until the renewal is due: the server's
    # FATAL is read first when it resumes, the socket's end a round later.
    postgres().psql(f"\\c {db}\nSELECT pg_terminate_backend({pid});")
    time.sleep(0.3)  # noqa: ASYNC251 - the stall is the point
    await task
    assert outcome == [True]
    assert await cs.renew(1, inc, LEASE_MS)


async def test_a_cancelled_store_call_leaves_no_busy_connection_in_the_pool(
    meta: MetaStore,
) -> None:
    """The first suspect, ruled out (SQLAlchemy 2.1 closes a cancelled
    caller's connection to completion, asyncpg 0.32 waits out the cancelled
    query): tasks cancelled while awaiting a slow statement, in a write
    transaction, on a read connection and under wait_for, leave the pool's
    connections usable by the next renewal."""
    cs = ClusterStore(meta)
    inc = await cs.register(1, "h", 1, None, LEASE_MS)
    slow = text("SELECT pg_sleep(5)")

    async def in_transaction() -> None:
        async with meta.transaction() as conn:
            await conn.execute(slow)

    async def on_read_connection() -> None:
        async with meta.engine.connect() as conn:
            await conn.execute(slow)

    tasks = [asyncio.create_task(in_transaction()), asyncio.create_task(on_read_connection())]
    await asyncio.sleep(0.3)
    for t in tasks:
        t.cancel()
    assert all(
        isinstance(r, asyncio.CancelledError)
        for r in await asyncio.gather(*tasks, return_exceptions=True)
    )
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(in_transaction(), 0.3)
    for _ in range(4):  # every pooled connection, more than once
        assert await cs.renew(1, inc, LEASE_MS)
