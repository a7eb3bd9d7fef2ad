"""Client quotas without a broker: Kafka's precedence order, the sampled rate,
throttle times, entity and value checks, DescribeClientQuotas filters."""

from __future__ import annotations

import pytest

from shoal.security.quotas import (
    CONSUMER_BYTE_RATE,
    PRODUCER_BYTE_RATE,
    REQUEST_PERCENTAGE,
    Entity,
    QuotaError,
    Quotas,
    Rate,
    check_value,
    delays_response,
    describe,
    request_throttle,
    user_of,
)

U = "user"
C = "client-id"

# Kafka's order, most specific first, as (user, client-id) components; None
# is <default>, absent means the entity has no such component.
ORDER: list[list[tuple[str, str | None]]] = [
    [(U, "alice"), (C, "app")],
    [(U, "alice"), (C, None)],
    [(U, "alice")],
    [(U, None), (C, "app")],
    [(U, None), (C, None)],
    [(U, None)],
    [(C, "app")],
    [(C, None)],
]


@pytest.mark.parametrize("winner", range(len(ORDER)))
def test_precedence_first_defined_entity_wins(winner: int) -> None:
    """With every entity from `winner` down defined, `winner` gives the quota."""
    q = Quotas()
    q.replace(
        {Entity.of(ORDER[i]): {PRODUCER_BYTE_RATE: 1000.0 + i} for i in range(winner, len(ORDER))},
        1,
    )
    assert q.bound(PRODUCER_BYTE_RATE, "alice", "app") == 1000.0 + winner


def test_precedence_is_per_key() -> None:
    """A more specific entity without the key does not hide a less specific one's."""
    q = Quotas()
    q.replace(
        {
            Entity.of([(U, "alice"), (C, "app")]): {CONSUMER_BYTE_RATE: 10.0},
            Entity.of([(C, None)]): {PRODUCER_BYTE_RATE: 20.0},
        },
        1,
    )
    assert q.bound(CONSUMER_BYTE_RATE, "alice", "app") == 10.0
    assert q.bound(PRODUCER_BYTE_RATE, "alice", "app") == 20.0
    assert q.bound(CONSUMER_BYTE_RATE, "bob", "app") is None
    assert q.bound(REQUEST_PERCENTAGE, "alice", "app") is None


def test_other_names_do_not_match() -> None:
    q = Quotas()
    q.replace({Entity.of([(U, "alice")]): {PRODUCER_BYTE_RATE: 5.0}}, 1)
    assert q.bound(PRODUCER_BYTE_RATE, "bob", "app") is None
    q.replace({Entity.of([(C, "app")]): {PRODUCER_BYTE_RATE: 5.0}}, 2)
    assert q.bound(PRODUCER_BYTE_RATE, "bob", "other") is None
    assert q.bound(PRODUCER_BYTE_RATE, "bob", "app") == 5.0


def test_default_user_gives_each_user_a_rate_of_their_own() -> None:
    q = Quotas(samples=2, window_s=1.0)
    q.replace({Entity.of([(U, None)]): {PRODUCER_BYTE_RATE: 1000.0}}, 1)
    assert q.record(PRODUCER_BYTE_RATE, "alice", "a", 1000, now=0.0) == 0
    # bob is not slowed by alice's bytes
    assert q.record(PRODUCER_BYTE_RATE, "bob", "b", 1000, now=0.0) == 0
    # alice's second client shares alice's rate (the entity is the user)
    assert q.record(PRODUCER_BYTE_RATE, "alice", "other", 1000, now=0.0) > 0


def test_named_client_id_is_shared_by_every_user() -> None:
    q = Quotas(samples=2, window_s=1.0)
    q.replace({Entity.of([(C, "app")]): {PRODUCER_BYTE_RATE: 1000.0}}, 1)
    assert q.record(PRODUCER_BYTE_RATE, "alice", "app", 1000, now=0.0) == 0
    assert q.record(PRODUCER_BYTE_RATE, "bob", "app", 1000, now=0.0) > 0


def test_rate_spans_at_least_samples_minus_one_windows() -> None:
    r = Rate(samples=11, window_s=1.0)
    r.record(1000, now=0.0)
    assert r.measure(0.0) == pytest.approx(100.0)  # 1000 bytes over 10 s
    r.record(1000, now=15.0)  # the first sample expired (11 s old)
    assert r.measure(15.0) == pytest.approx(100.0)
    for t in range(20, 31):
        r.record(1000, now=float(t))
    # 11 samples of 1000 bytes starting at 20: 11000 bytes over 10.5 s
    assert r.measure(30.5) == pytest.approx(11000 / 10.5)


def test_throttle_brings_the_rate_back_to_the_bound() -> None:
    """Kafka's formula: (rate - bound) / bound * window; after waiting that
    long (recording nothing) the rate is the bound again."""
    q = Quotas(samples=11, window_s=1.0)
    q.replace({Entity.of([(U, "a")]): {PRODUCER_BYTE_RATE: 100.0}}, 1)
    throttle = q.record(PRODUCER_BYTE_RATE, "a", "", 3000, now=0.0)
    # 3000 bytes over 10 s = 300 B/s, twice over 100: 20 s
    assert throttle == 20_000
    rate = q._rates[(PRODUCER_BYTE_RATE, Entity(True, "a"))]
    assert 3000 / (rate.window(0.0) + throttle / 1000) == pytest.approx(100.0)


def test_within_quota_no_throttle() -> None:
    q = Quotas(samples=11, window_s=1.0)
    q.replace({Entity.of([(U, "a")]): {CONSUMER_BYTE_RATE: 100.0}}, 1)
    assert q.record(CONSUMER_BYTE_RATE, "a", "", 1000, now=0.0) == 0  # exactly the bound
    assert q.record(CONSUMER_BYTE_RATE, "a", "", 1, now=0.0) > 0


def test_request_percentage_is_bounded_by_one_window() -> None:
    q = Quotas(samples=11, window_s=1.0)
    q.replace({Entity.of([(U, "a")]): {REQUEST_PERCENTAGE: 1.0}}, 1)  # 10 ms/s
    assert q.record(REQUEST_PERCENTAGE, "a", "", 10_000.0, now=0.0) == 1000


def test_request_throttle_exempts_handshake_and_counts_produce_bytes() -> None:
    q = Quotas(samples=2, window_s=1.0)
    q.replace({Entity.of([(U, "a")]): {REQUEST_PERCENTAGE: 1.0, PRODUCER_BYTE_RATE: 10.0}}, 1)
    assert request_throttle(q, "User:a", None, 18, 10, 500.0, 0.0) == 0  # ApiVersions
    assert request_throttle(q, "User:a", None, 3, 10, 500.0, 0.0) == 1000  # Metadata: time
    q.replace({Entity.of([(U, "a")]): {PRODUCER_BYTE_RATE: 10.0}}, 2)
    assert request_throttle(q, "User:a", "c", 0, 30, 0.0, 0.0) == 2000  # 30 B/s vs 10


def test_no_quotas_no_throttle_no_rates() -> None:
    q = Quotas()
    assert not q.enabled
    assert request_throttle(q, "User:a", None, 0, 1 << 30, 1e6, 0.0) == 0
    assert q._rates == {}


def test_changing_quotas_drops_cached_resolutions() -> None:
    q = Quotas()
    q.replace({Entity.of([(U, "a")]): {PRODUCER_BYTE_RATE: 5.0}}, 1)
    assert q.bound(PRODUCER_BYTE_RATE, "a", "") == 5.0
    q.replace({}, 2)
    assert q.bound(PRODUCER_BYTE_RATE, "a", "") is None


def test_a_reload_keeps_the_rates() -> None:
    """Another quota changing does not give a client over its own a clean slate."""
    q = Quotas(samples=2, window_s=1.0)
    mine = {Entity.of([(U, "a")]): {PRODUCER_BYTE_RATE: 100.0}}
    q.replace(mine, 1)
    assert q.record(PRODUCER_BYTE_RATE, "a", "", 300, now=0.0) == 2000
    q.replace({**mine, Entity.of([(U, "b")]): {PRODUCER_BYTE_RATE: 5.0}}, 2)
    assert q.record(PRODUCER_BYTE_RATE, "a", "", 0, now=0.0) == 2000


def test_fetch_size_cap_is_one_window_of_the_quota() -> None:
    q = Quotas(samples=11, window_s=2.0)
    q.replace({Entity.of([(C, None)]): {CONSUMER_BYTE_RATE: 1000.0}}, 1)
    assert q.max_bytes_in_window(CONSUMER_BYTE_RATE, "x", "any") == 2000
    assert q.max_bytes_in_window(PRODUCER_BYTE_RATE, "x", "any") is None


@pytest.mark.parametrize(
    ("components", "message"),
    [
        ([], "empty quota entity"),
        ([(U, "a"), (U, "b")], "appears more than once"),
        ([("topic", "t")], "unknown entity type 'topic'"),
        ([("ip", "10.0.0.1")], "ip quotas"),
    ],
)
def test_bad_entities(components: list[tuple[str, str | None]], message: str) -> None:
    with pytest.raises(QuotaError, match=message):
        Entity.of(components)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("producer_byte_rate", 0.0, "must be a positive number"),
        ("consumer_byte_rate", -5.0, "must be a positive number"),
        ("request_percentage", float("nan"), "must be a positive number"),
        ("request_percentage", float("inf"), "must be a positive number"),
        ("producer_byte_rate", 1.5, "whole number"),
        ("bytes_per_fortnight", 1.0, "unknown quota key"),
    ],
)
def test_bad_values(key: str, value: float, message: str) -> None:
    with pytest.raises(QuotaError, match=message):
        check_value(key, value)


def test_good_values() -> None:
    assert check_value("request_percentage", 12.5) == 12.5
    assert check_value("producer_byte_rate", 1024.0) == 1024.0


def test_entity_key_round_trip() -> None:
    for comps in ORDER:
        e = Entity.of(comps)
        assert Entity.from_key(e.key()) == e
    assert str(Entity.of([(U, None), (C, "app")])) == "user=<default>,client-id=app"


def test_describe_filters() -> None:
    configs = {Entity.of(c): {PRODUCER_BYTE_RATE: float(i + 1)} for i, c in enumerate(ORDER)}

    def names(components: list[tuple[str, int, str | None]], strict: bool) -> list[str]:
        return sorted(str(e) for e, _v in describe(configs, components, strict))

    assert len(names([], False)) == len(ORDER)
    assert names([], True) == []  # strict: only entities with exactly the filter's types
    assert names([(U, 0, "alice")], True) == ["user=alice"]
    assert names([(U, 0, "alice")], False) == [
        "user=alice",
        "user=alice,client-id=<default>",
        "user=alice,client-id=app",
    ]
    assert names([(U, 1, None)], True) == ["user=<default>"]
    assert names([(U, 2, None), (C, 1, None)], True) == ["user=alice,client-id=<default>"]
    assert names([(C, 0, "app")], False) == [
        "client-id=app",
        "user=<default>,client-id=app",
        "user=alice,client-id=app",
    ]


@pytest.mark.parametrize(
    ("components", "message"),
    [
        ([(U, 0, None)], "exact match"),
        ([(U, 1, None), (U, 2, None)], "more than once"),
        ([("topic", 2, None)], "unknown entity type"),
        ([(U, 7, None)], "unknown match type"),
    ],
)
def test_bad_filters(components: list[tuple[str, int, str | None]], message: str) -> None:
    with pytest.raises(QuotaError, match=message):
        describe({}, components, False)


def test_user_of_principal_and_kip219_versions() -> None:
    assert user_of("User:plant-7") == "plant-7"
    assert user_of("User:CN=a,O=b") == "CN=a,O=b"
    assert delays_response(0, 5) and not delays_response(0, 6)
    assert delays_response(1, 7) and not delays_response(1, 8)
    assert not delays_response(3, 0)
