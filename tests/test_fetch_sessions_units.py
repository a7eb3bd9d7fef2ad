"""The fetch session cache (KIP-227) without sockets: creation, incremental
updates, forgotten partitions, epochs, eviction and commit notifications."""

from __future__ import annotations

import random
import uuid

import pytest
from kio.schema.errors import ErrorCode

from shoal.broker.fetch_sessions import Requested, SessionCache, next_epoch
from shoal.protocol.errors import KafkaError


def req(topic: str | uuid.UUID, partition: int, offset: int = 0) -> Requested:
    return Requested((topic, partition), offset, 1 << 20, -1)


def full(cache: SessionCache, n: int, topic: str = "t", now: float = 0.0) -> int:
    ctx = cache.context(0, 0, False, [req(topic, i) for i in range(n)], [], now)
    assert ctx.full and ctx.session is not None
    return ctx.session.id


def test_initial_epoch_creates_a_session_with_every_partition_pending() -> None:
    cache = SessionCache(rng=random.Random(1))
    ctx = cache.context(0, 0, False, [req("t", 0), req("t", 1)], [], 0.0)
    assert ctx.full and ctx.session is not None and ctx.session_id > 0
    assert ctx.session.epoch == 1
    assert ctx.session.pending == {("t", 0), ("t", 1)}
    assert cache.get(ctx.session_id) is ctx.session


def test_final_epoch_is_sessionless_and_closes_the_named_session() -> None:
    cache = SessionCache()
    sid = full(cache, 2)
    ctx = cache.context(sid, -1, False, [req("t", 0)], [], 0.0)
    assert ctx.session is None and ctx.full and ctx.session_id == 0
    assert cache.get(sid) is None and len(cache) == 0


def test_incremental_carries_only_changes_and_forgets() -> None:
    cache = SessionCache()
    sid = full(cache, 3)
    session = cache.get(sid)
    assert session is not None
    session.take_pending()
    ctx = cache.context(sid, 1, False, [req("t", 1, offset=7), req("t", 9)], [("t", 2)], 5.0)
    assert not ctx.full and ctx.session is session
    assert session.pending == {("t", 1), ("t", 9)}
    assert session.partitions[("t", 1)].fetch_offset == 7
    assert set(session.partitions) == {("t", 0), ("t", 1), ("t", 9)}
    assert session.epoch == 2 and session.last_used_ms == 5.0


@pytest.mark.parametrize(
    ("session_id", "epoch", "uses_ids", "code"),
    [
        (12345, 1, False, ErrorCode.fetch_session_id_not_found),
        (None, 3, False, ErrorCode.invalid_fetch_session_epoch),
        (None, -2, False, ErrorCode.invalid_fetch_session_epoch),
        (None, 1, True, ErrorCode.fetch_session_topic_id_error),
    ],
)
def test_bad_session_requests(
    session_id: int | None, epoch: int, uses_ids: bool, code: ErrorCode
) -> None:
    cache = SessionCache()
    sid = full(cache, 1)
    with pytest.raises(KafkaError) as err:
        cache.context(session_id or sid, epoch, uses_ids, [], [], 0.0)
    assert err.value.code == code
    # A refused request leaves the session as it was.
    session = cache.get(sid)
    assert session is not None and session.epoch == 1


def test_commit_marks_only_bound_partitions_and_wakes() -> None:
    cache = SessionCache()
    sid = full(cache, 2)
    session = cache.get(sid)
    assert session is not None
    session.take_pending()
    cache.bind(session, ("t", 0), 100, polled=False)
    cache.bind(session, ("t", 1), 101, polled=False)
    woken: list[int] = []
    session.wake = lambda: woken.append(1)
    cache.advanced(100)
    cache.advanced(555)  # nobody's stream
    assert session.pending == {("t", 0)} and woken == [1]
    # A forgotten partition is no longer watched.
    session.take_pending()
    cache.context(sid, 1, False, [], [("t", 1)], 0.0)
    cache.advanced(101)
    assert session.pending == set()


def test_full_cache_evicts_the_smallest_for_a_bigger_session() -> None:
    cache = SessionCache(slots=2, eviction_ms=60_000)
    small = full(cache, 1, now=0.0)
    big = full(cache, 5, now=1.0)
    # Same size as the smallest: no room, the request goes sessionless.
    assert cache.context(0, 0, False, [req("u", 0)], [], 2.0).session is None
    bigger = full(cache, 3, now=3.0)
    assert cache.get(small) is None and cache.get(big) is not None
    assert cache.get(bigger) is not None and cache.evictions == 1


def test_full_cache_evicts_an_idle_session_whatever_its_size() -> None:
    cache = SessionCache(slots=1, eviction_ms=1000)
    old = full(cache, 50, now=0.0)
    assert cache.context(0, 0, False, [req("u", 0)], [], 500.0).session is None
    new = full(cache, 1, now=2000.0)
    assert cache.get(old) is None and cache.get(new) is not None


def test_no_slots_means_no_sessions() -> None:
    cache = SessionCache(slots=0)
    assert cache.context(0, 0, False, [req("t", 0)], [], 0.0).session is None


def test_removing_a_session_wakes_its_waiter_and_unwatches() -> None:
    cache = SessionCache()
    sid = full(cache, 1)
    session = cache.get(sid)
    assert session is not None
    session.take_pending()
    cache.bind(session, ("t", 0), 7, polled=False)
    woken: list[int] = []
    session.wake = lambda: woken.append(1)
    cache.context(sid, 0, False, [], [], 0.0)  # epoch 0 replaces the session
    assert cache.get(sid) is None and woken == [1]
    cache.advanced(7)
    assert session.pending == set()


def test_topic_ids_key_the_session() -> None:
    cache = SessionCache()
    tid = uuid.uuid4()
    ctx = cache.context(0, 0, True, [Requested((tid, 0), 0, 100, -1)], [], 0.0)
    assert ctx.session is not None and ctx.session.uses_ids
    ctx2 = cache.context(ctx.session_id, 1, True, [], [(tid, 0)], 0.0)
    assert ctx2.session is not None and ctx2.session.partitions == {}


def test_epochs_wrap_to_one() -> None:
    assert next_epoch(1) == 2
    assert next_epoch(0x7FFFFFFF) == 1


def test_an_evicted_session_watches_nothing() -> None:
    cache = SessionCache(slots=1)
    sid = full(cache, 1)
    session = cache.get(sid)
    assert session is not None
    full(cache, 2)  # takes the only slot
    assert cache.get(sid) is None
    session.take_pending()
    cache.bind(session, ("t", 0), 9, polled=False)  # a fetch still running for it
    cache.advanced(9)
    assert session.pending == set() and cache._watchers == {}
