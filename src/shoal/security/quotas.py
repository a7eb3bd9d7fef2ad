"""Client quotas, Kafka's model: byte rates and request time per user and/or
client id, enforced by throttling.

Entities: a quota is set on `user`, `client-id`, or both, each either named or
`<default>` (None here, as on the wire). A client's quota for a key comes from
the first entity in Kafka's precedence order that sets that key:

    user+client-id, user+<default> client-id, user,
    <default> user+client-id, <default> user+<default> client-id, <default> user,
    client-id, <default> client-id

Clients that resolve to the same entity share one rate (a `<default>` stands
for each name separately: with only a `<default>` user quota, every user has a
rate of their own). Rates are Kafka's: `quota.window.num` samples of
`quota.window.size.seconds` each, the rate being their total over the time they
span (at least `num - 1` whole windows); a client over its bound is throttled
for the time that brings its rate back to the bound.

Sans-IO: the broker keeps `Quotas` in step with the metadata store through a
`VersionPoller` (security/sync.py), as it does for ACLs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger("shoal.quotas")

USER = "user"
CLIENT_ID = "client-id"
IP = "ip"
DEFAULT_NAME = "<default>"  # how tools print a default entity

PRODUCER_BYTE_RATE = "producer_byte_rate"
CONSUMER_BYTE_RATE = "consumer_byte_rate"
REQUEST_PERCENTAGE = "request_percentage"
CONTROLLER_MUTATION_RATE = "controller_mutation_rate"

#: quota keys Kafka accepts for user/client-id entities -> whole numbers only
QUOTA_KEYS: dict[str, bool] = {
    PRODUCER_BYTE_RATE: True,
    CONSUMER_BYTE_RATE: True,
    REQUEST_PERCENTAGE: False,
    CONTROLLER_MUTATION_RATE: False,
}
#: what Shoal enforces (controller_mutation_rate is stored and described only)
ENFORCED = (PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE)

_UNSET = object()


class QuotaError(ValueError):
    """A quota entity, key or value Kafka would refuse (INVALID_REQUEST)."""


@dataclass(frozen=True, slots=True)
class Entity:
    """A quota entity. For each component: absent (`has_user` False), a name,
    or the default (name None)."""

    has_user: bool = False
    user: str | None = None
    has_client: bool = False
    client_id: str | None = None

    @classmethod
    def of(cls, components: Iterable[tuple[str, str | None]]) -> Entity:
        """From wire components (entity_type, entity_name or None for the
        default), checked as Kafka checks them."""
        seen: dict[str, str | None] = {}
        for etype, name in components:
            if etype in seen:
                raise QuotaError(f"entity type {etype!r} appears more than once")
            if etype == IP:
                raise QuotaError(
                    "ip quotas (connection_creation_rate) are not supported by Shoal; "
                    "use user and/or client-id"
                )
            if etype not in (USER, CLIENT_ID):
                raise QuotaError(f"unknown entity type {etype!r} (expected user or client-id)")
            seen[etype] = name
        if not seen:
            raise QuotaError("empty quota entity")
        return cls(USER in seen, seen.get(USER), CLIENT_ID in seen, seen.get(CLIENT_ID))

    def components(self) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        if self.has_user:
            out.append((USER, self.user))
        if self.has_client:
            out.append((CLIENT_ID, self.client_id))
        return out

    def key(self) -> str:
        """A canonical string for storage: JSON, null for a default."""
        return json.dumps(dict(self.components()), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_key(cls, text: str) -> Entity:
        doc = json.loads(text)
        return cls.of((str(k), None if v is None else str(v)) for k, v in doc.items())

    def __str__(self) -> str:
        return ",".join(f"{t}={DEFAULT_NAME if n is None else n}" for t, n in self.components())


def check_value(key: str, value: float) -> float:
    """A quota value as Kafka would accept it."""
    whole = QUOTA_KEYS.get(key)
    if whole is None:
        raise QuotaError(f"unknown quota key {key!r} (expected one of {', '.join(QUOTA_KEYS)})")
    if not math.isfinite(value) or value <= 0:
        raise QuotaError(f"{key} must be a positive number, not {value}")
    if whole and value != int(value):
        raise QuotaError(f"{key} must be a whole number of bytes per second, not {value}")
    return float(value)


def user_of(principal: str) -> str:
    """The quota user of a principal: `User:alice` -> `alice`, as Kafka."""
    return principal.partition(":")[2] if ":" in principal else principal


def precedence(user: str, client_id: str) -> list[Entity]:
    """The entities that may give a (user, client id) its quota, first wins."""
    return [
        Entity(True, user, True, client_id),
        Entity(True, user, True, None),
        Entity(True, user),
        Entity(True, None, True, client_id),
        Entity(True, None, True, None),
        Entity(True, None),
        Entity(has_client=True, client_id=client_id),
        Entity(has_client=True, client_id=None),
    ]


def _matches(component: tuple[str, int, str | None], entity: Entity) -> bool:
    etype, match_type, match = component
    present, name = (
        (entity.has_user, entity.user) if etype == USER else (entity.has_client, entity.client_id)
    )
    if not present:
        return False
    if match_type == 0:
        return name == match
    if match_type == 1:
        return name is None
    return name is not None  # 2: any specified name


def check_filter(components: Iterable[tuple[str, int, str | None]]) -> None:
    """A DescribeClientQuotas filter as Kafka checks it."""
    seen: set[str] = set()
    for etype, match_type, match in components:
        if etype == IP:
            raise QuotaError("ip quotas are not supported by Shoal")
        if etype not in (USER, CLIENT_ID):
            raise QuotaError(f"unknown entity type {etype!r} in the filter")
        if etype in seen:
            raise QuotaError(f"entity type {etype!r} appears more than once in the filter")
        seen.add(etype)
        if match_type not in (0, 1, 2):
            raise QuotaError(f"unknown match type {match_type} for {etype!r}")
        if match_type == 0 and match is None:
            raise QuotaError(f"exact match on {etype!r} without a name")


class Rate:
    """Kafka's sampled rate: `samples` windows of `window_s` seconds."""

    __slots__ = ("_s", "samples", "window_s")

    def __init__(self, samples: int = 11, window_s: float = 1.0) -> None:
        self.samples = samples
        self.window_s = window_s
        self._s: list[list[float]] = []  # [start, total], oldest first

    def _purge(self, now: float) -> None:
        expire = self.samples * self.window_s
        while self._s and now - self._s[0][0] >= expire:
            self._s.pop(0)

    def record(self, amount: float, now: float) -> None:
        self._purge(now)
        if not self._s or now >= self._s[-1][0] + self.window_s:
            self._s.append([now, 0.0])
        self._s[-1][1] += amount

    def window(self, now: float) -> float:
        """The time the rate is taken over: since the oldest sample, and at
        least `samples - 1` whole windows (a fresh client is not measured
        over a few milliseconds)."""
        elapsed = now - self._s[0][0] if self._s else 0.0
        full = int(elapsed / self.window_s)
        if full < self.samples - 1:
            elapsed += (self.samples - 1 - full) * self.window_s
        return elapsed

    def measure(self, now: float) -> float:
        self._purge(now)
        return sum(s[1] for s in self._s) / self.window(now)

    def idle_since(self) -> float:
        return self._s[-1][0] if self._s else -math.inf


@dataclass(slots=True)
class Quotas:
    """The quotas in force and every client's rates; answers how long to
    throttle."""

    samples: int = 11
    window_s: float = 1.0
    version: int = -1
    configs: dict[Entity, dict[str, float]] = field(default_factory=dict)
    _resolved: dict[tuple[str, str, str], tuple[Entity, float] | None] = field(default_factory=dict)
    _rates: dict[tuple[str, Entity], Rate] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.configs)

    def replace(self, configs: Mapping[Entity, Mapping[str, float]], version: int) -> None:
        """New quotas: resolutions start over; rates are kept (a client over
        its quota does not get a clean slate because any quota changed)."""
        self.configs = {e: dict(v) for e, v in configs.items() if v}
        self.version = version
        self._resolved.clear()

    def resolve(self, key: str, user: str, client_id: str) -> tuple[Entity, float] | None:
        """The bound for `key` and the entity whose rate it applies to (a
        default replaced by the client's own name), or None: no quota."""
        cache_key = (key, user, client_id)
        hit = self._resolved.get(cache_key, _UNSET)
        if hit is not _UNSET:
            return hit  # type: ignore[return-value]
        found: tuple[Entity, float] | None = None
        for entity in precedence(user, client_id):
            value = self.configs.get(entity, {}).get(key)
            if value is not None:
                # the rate is kept per name even when a default matched
                found = (
                    Entity(
                        entity.has_user,
                        user if entity.has_user else None,
                        entity.has_client,
                        client_id if entity.has_client else None,
                    ),
                    value,
                )
                break
        if len(self._resolved) > 100_000:
            self._resolved.clear()
        self._resolved[cache_key] = found
        return found

    def bound(self, key: str, user: str, client_id: str) -> float | None:
        hit = self.resolve(key, user, client_id)
        return None if hit is None else hit[1]

    def record(self, key: str, user: str, client_id: str, amount: float, now: float) -> int:
        """Record usage (bytes, or milliseconds of request time) and return
        the throttle time in milliseconds (0 within the quota)."""
        hit = self.resolve(key, user, client_id)
        if hit is None:
            return 0
        entity, bound = hit
        if key == REQUEST_PERCENTAGE:
            bound = bound * 10.0  # percent of one thread -> milliseconds per second
        rate = self._rates.get((key, entity))
        if rate is None:
            if len(self._rates) > 100_000:
                self._expire(now)
            rate = self._rates[(key, entity)] = Rate(self.samples, self.window_s)
        rate.record(amount, now)
        observed = rate.measure(now)
        if observed <= bound:
            return 0
        throttle = round((observed - bound) / bound * rate.window(now) * 1000)
        if key == REQUEST_PERCENTAGE:  # Kafka bounds this one by one window
            throttle = min(throttle, int(self.window_s * 1000))
        return throttle

    def max_bytes_in_window(self, key: str, user: str, client_id: str) -> int | None:
        """What a client may take in one quota sample: a fetch answer is sized
        down to it (Kafka sizes it to the quota too), so that one answer does
        not earn a throttle of many seconds."""
        bound = self.bound(key, user, client_id)
        if bound is None:
            return None
        return max(int(bound * self.window_s), 1)

    def _expire(self, now: float) -> None:
        horizon = now - self.samples * self.window_s
        for k in [k for k, r in self._rates.items() if r.idle_since() < horizon]:
            del self._rates[k]


def describe(
    configs: Mapping[Entity, Mapping[str, float]],
    components: Iterable[tuple[str, int, str | None]],
    strict: bool,
) -> list[tuple[Entity, dict[str, float]]]:
    """DescribeClientQuotas: the entities the filter selects, with their
    values. Non-strict matches entities with other components too."""
    comps = list(components)
    check_filter(comps)
    types = {c[0] for c in comps}
    out = []
    for entity, values in configs.items():
        if not values or not all(_matches(c, entity) for c in comps):
            continue
        if strict and {t for t, _n in entity.components()} != types:
            continue
        out.append((entity, dict(values)))
    out.sort(key=lambda ev: ev[0].key())
    return out


#: requests a request_percentage quota never throttles (Kafka exempts them:
#: a client must always be able to negotiate and authenticate)
EXEMPT_APIS = frozenset({17, 18, 36})  # SaslHandshake, ApiVersions, SaslAuthenticate
#: first versions whose clients back off on throttle_time themselves (KIP-219);
#: older ones get their response delayed instead
CLIENT_BACKS_OFF = {0: 6, 1: 8}


def request_throttle(
    quotas: Quotas,
    principal: str,
    client_id: str | None,
    api_key: int,
    request_bytes: int,
    request_ms: float,
    now: float,
) -> int:
    """Throttle (ms) earned by a request as it is read: its bytes for a
    Produce, its handling time for the request percentage."""
    if not quotas.enabled:
        return 0
    user, cid = user_of(principal), client_id or ""
    throttle = 0
    if api_key == 0:
        throttle = quotas.record(PRODUCER_BYTE_RATE, user, cid, request_bytes, now)
    if api_key not in EXEMPT_APIS:
        throttle = max(throttle, quotas.record(REQUEST_PERCENTAGE, user, cid, request_ms, now))
    return throttle


def response_throttle(
    quotas: Quotas, principal: str, client_id: str | None, api_key: int, size: int, now: float
) -> int:
    """Throttle (ms) earned by a Fetch answer of `size` bytes."""
    if not quotas.enabled or api_key != 1:
        return 0
    return quotas.record(CONSUMER_BYTE_RATE, user_of(principal), client_id or "", size, now)


def delays_response(api_key: int, api_version: int) -> bool:
    """Does this client expect its throttled response to come late (pre-KIP-219)?"""
    first = CLIENT_BACKS_OFF.get(api_key)
    return first is not None and api_version < first
