"""Units of the resource limits: the request budget, connection counting,
the per-IP overrides format, and the log rate limiter."""

from __future__ import annotations

import asyncio
import logging

import pytest

from shoal.broker.listener import (
    ConnectionLimiter,
    ListenerLimits,
    RequestBudget,
)
from shoal.config import ConfigError, load_config, parse_ip_overrides
from shoal.logs import RateLimitFilter


def limits(**kw: int | dict[str, int]) -> ListenerLimits:
    base: dict[str, int | dict[str, int]] = dict(
        max_connections=100,
        max_connections_per_ip=100,
        per_ip_overrides={},
        idle_ms=1000,
        max_frame=1 << 20,
        pre_auth_max_frame=1 << 16,
        max_inflight=8,
        queued_max_request_bytes=4 << 20,
    )
    base.update(kw)
    return ListenerLimits(**base)  # type: ignore[arg-type]


async def test_budget_waits_for_room_and_serves_in_order() -> None:
    budget = RequestBudget(100)
    await budget.acquire(60)
    order: list[str] = []

    async def take(name: str, n: int) -> None:
        await budget.acquire(n)
        order.append(name)

    a = asyncio.create_task(take("a", 50))
    b = asyncio.create_task(take("b", 10))
    await asyncio.sleep(0)
    assert order == []  # b must not overtake a, though it would fit
    budget.release(60)
    await asyncio.gather(a, b)
    assert order == ["a", "b"]
    assert budget.in_use == 60
    assert budget.peak == 60


async def test_budget_keeps_a_reserve_for_small_requests() -> None:
    budget = RequestBudget(100, max_frame=50)
    assert budget.reserve == 25
    await budget.acquire(75, large=True)  # large frames fill at most limit - reserve
    blocked = asyncio.create_task(budget.acquire(1, large=True))
    await asyncio.sleep(0)
    assert not blocked.done()
    await asyncio.wait_for(budget.acquire(20), 1)  # a small request still gets through
    assert budget.in_use == 95
    budget.release(75, large=True)
    await asyncio.wait_for(blocked, 1)
    assert budget.large_in_use == 1


async def test_budget_cancelled_waiter_gives_nothing_away() -> None:
    budget = RequestBudget(10)
    await budget.acquire(10)
    waiter = asyncio.create_task(budget.acquire(5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    budget.release(10)
    assert budget.in_use == 0


async def test_unbounded_budget_never_waits() -> None:
    budget = RequestBudget(-1)
    await asyncio.wait_for(budget.acquire(1 << 40), 1)
    assert budget.in_use == 0


def test_connection_limiter_counts_per_ip_with_overrides() -> None:
    lim = ConnectionLimiter(
        limits(max_connections=5, max_connections_per_ip=2, per_ip_overrides={"10.0.0.9": 3})
    )
    assert lim.admit("10.0.0.1") is None
    assert lim.admit("10.0.0.1") is None
    refused = lim.admit("10.0.0.1")
    assert refused is not None and "max.connections.per.ip=2" in refused
    for _ in range(3):
        assert lim.admit("10.0.0.9") is None
    refused = lim.admit("10.0.0.2")
    assert refused is not None and "max.connections=5" in refused
    lim.release("10.0.0.1")
    assert lim.admit("10.0.0.2") is None
    assert lim.refused == 2


def test_ip_overrides_format() -> None:
    assert parse_ip_overrides("10.0.0.1:5, [::1]:7") == {"10.0.0.1": 5, "::1": 7}
    assert parse_ip_overrides("") == {}
    with pytest.raises(ValueError, match="HOST:COUNT"):
        parse_ip_overrides("10.0.0.1")


def test_limit_keys_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"max.connections.per.ip.overrides.*'nohost'"):
        load_config(None, {"SHOAL_MAX_CONNECTIONS_PER_IP_OVERRIDES": "nohost"})
    with pytest.raises(ConfigError, match=r"queued.max.request.bytes.*socket.request.max.bytes"):
        load_config(None, {"SHOAL_QUEUED_MAX_REQUEST_BYTES": "2048"})
    cfg = load_config(None, {"SHOAL_QUEUED_MAX_REQUEST_BYTES": "-1"})
    assert cfg["queued.max.request.bytes"] == -1


class _Client:
    def __init__(self, peer: str) -> None:
        self.peer = peer


def _record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("shoal.test", level, __file__, 1, msg, args, None)


def test_rate_limiter_summarises_per_address(caplog: pytest.LogCaptureFixture) -> None:
    f = RateLimitFilter(burst=3, window=60)
    a, b = _Client("10.0.0.1:4000"), _Client("10.0.0.2:4000")
    passed_a = sum(f.filter(_record("closing connection from %s: %s", a, "bad")) for _ in range(50))
    passed_b = sum(f.filter(_record("closing connection from %s: %s", b, "bad")) for _ in range(2))
    assert (passed_a, passed_b) == (3, 2)
    # INFO lines are never limited
    assert all(f.filter(_record("x %s", a, level=logging.INFO)) for _ in range(10))
    with caplog.at_level(logging.WARNING, logger="shoal.test"):
        f.flush()
    summaries = [r.getMessage() for r in caplog.records]
    assert len(summaries) == 1, summaries
    assert "47 more like" in summaries[0] and "from 10.0.0.1" in summaries[0]
    # the window is over: the address may log again
    assert f.filter(_record("closing connection from %s: %s", a, "bad"))
