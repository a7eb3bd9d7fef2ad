"""Incremental fetch sessions (KIP-227), sans-IO.

A consumer of thousands of partitions sends them all once (a full fetch that
creates the session), then only the partitions whose fetch position changed;
the broker answers only partitions with news. What makes an idle partition cost
nothing is the `pending` set: a partition enters it when a request changes it or
when its stream advances (`advanced`, called from the storage engine's commit
path), and an incremental fetch looks at nothing else.

The cache is per broker process and in memory, as in Kafka: a restart (or a
cluster broker that never saw the session) answers FETCH_SESSION_ID_NOT_FOUND,
and the client starts over with a full fetch.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shoal.protocol.errors import ErrorCode, KafkaError

#: A topic as the request names it: by name (Fetch < v13) or by id (v13+).
TopicRef = str | uuid.UUID
Key = tuple[TopicRef, int]

INVALID_SESSION_ID = 0
INITIAL_EPOCH = 0
FINAL_EPOCH = -1
DEFAULT_SLOTS = 1000  # Kafka's max.incremental.fetch.session.cache.slots
DEFAULT_EVICTION_MS = 120_000  # Kafka's min.incremental.fetch.session.eviction.ms


@dataclass(slots=True)
class CachedPartition:
    """What the session remembers of a partition: the client's last position and
    what the broker last told it (to answer only changes)."""

    fetch_offset: int
    max_bytes: int
    leader_epoch: int
    high_watermark: int = -1
    log_start: int = -1
    stream_id: int = -1  # -1: not resolved (unknown topic, error)
    polled: bool = False  # read without commit notifications (cluster read replica)


@dataclass(slots=True)
class FetchSession:
    id: int
    uses_ids: bool
    epoch: int  # the epoch the next request must carry
    last_used_ms: float
    partitions: dict[Key, CachedPartition] = field(default_factory=dict)
    pending: set[Key] = field(default_factory=set)
    # Called when a partition of the session may have news (wakes a long poll).
    wake: Callable[[], None] | None = None

    def take_pending(self) -> list[Key]:
        """The partitions to look at now; the handler puts back those that still
        have something to say (`keep`)."""
        keys, self.pending = list(self.pending), set()
        return keys

    def keep(self, key: Key) -> None:
        if key in self.partitions:
            self.pending.add(key)


@dataclass(frozen=True, slots=True)
class Requested:
    """One partition of a fetch request."""

    key: Key
    fetch_offset: int
    max_bytes: int
    leader_epoch: int


@dataclass(frozen=True, slots=True)
class Context:
    """How to answer one fetch request: `session` None is a sessionless full
    fetch (session id 0 in the answer); `full` says every requested partition
    is answered, otherwise only those with news."""

    session: FetchSession | None
    full: bool

    @property
    def session_id(self) -> int:
        return self.session.id if self.session is not None else INVALID_SESSION_ID


def next_epoch(epoch: int) -> int:
    return 1 if epoch >= 0x7FFFFFFF else epoch + 1


class SessionCache:
    """Sessions by id, at most `slots` of them. When full, a new session takes
    the place of one idle longer than `eviction_ms`, else of the smallest one
    if the new session is larger (Kafka's rule: big consumers gain the most)."""

    def __init__(
        self,
        slots: int = DEFAULT_SLOTS,
        eviction_ms: int = DEFAULT_EVICTION_MS,
        rng: random.Random | None = None,
    ) -> None:
        self.slots = slots
        self.eviction_ms = eviction_ms
        self._rng = rng or random.SystemRandom()
        self._sessions: dict[int, FetchSession] = {}
        # stream id -> {session id: key}: who to tell when a stream advances.
        self._watchers: dict[int, dict[int, Key]] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: int) -> FetchSession | None:
        return self._sessions.get(session_id)

    # requests -------------------------------------------------------------

    def context(
        self,
        session_id: int,
        epoch: int,
        uses_ids: bool,
        requested: Iterable[Requested],
        forgotten: Iterable[Key],
        now_ms: float,
    ) -> Context:
        """Apply a request to the cache (KIP-227's rules). Raises KafkaError with
        FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH or
        FETCH_SESSION_TOPIC_ID_ERROR for the whole request."""
        if epoch in (INITIAL_EPOCH, FINAL_EPOCH):
            if session_id != INVALID_SESSION_ID:
                self.remove(session_id)
            if epoch == FINAL_EPOCH:
                return Context(None, True)
            parts = {
                r.key: CachedPartition(r.fetch_offset, r.max_bytes, r.leader_epoch)
                for r in requested
            }
            session = self._create(uses_ids, parts, now_ms)
            return Context(session, True)
        if epoch < FINAL_EPOCH:
            raise KafkaError(ErrorCode.invalid_fetch_session_epoch, f"epoch {epoch}")
        session = self._sessions.get(session_id)
        if session is None:
            raise KafkaError(ErrorCode.fetch_session_id_not_found, f"no session {session_id}")
        if session.epoch != epoch:
            raise KafkaError(
                ErrorCode.invalid_fetch_session_epoch,
                f"session {session_id} expects epoch {session.epoch}, got {epoch}",
            )
        if session.uses_ids != uses_ids:
            raise KafkaError(
                ErrorCode.fetch_session_topic_id_error,
                f"session {session_id} was created {'with' if session.uses_ids else 'without'}"
                " topic ids",
            )
        for key in forgotten:
            self._forget(session, key)
        for r in requested:
            cached = session.partitions.get(r.key)
            if cached is None:
                session.partitions[r.key] = CachedPartition(
                    r.fetch_offset, r.max_bytes, r.leader_epoch
                )
            else:
                cached.fetch_offset = r.fetch_offset
                cached.max_bytes = r.max_bytes
                cached.leader_epoch = r.leader_epoch
            session.pending.add(r.key)
        session.epoch = next_epoch(session.epoch)
        session.last_used_ms = now_ms
        return Context(session, False)

    def _create(
        self, uses_ids: bool, parts: dict[Key, CachedPartition], now_ms: float
    ) -> FetchSession | None:
        if len(self._sessions) >= self.slots and not self._evict_for(len(parts), now_ms):
            return None
        session_id = self._new_id()
        session = FetchSession(session_id, uses_ids, 1, now_ms, parts, set(parts))
        self._sessions[session_id] = session
        return session

    def _new_id(self) -> int:
        # Random, so that a restarted broker does not reissue an id a client holds.
        while True:
            sid = self._rng.randint(1, 0x7FFFFFFF)
            if sid not in self._sessions:
                return sid

    def _evict_for(self, size: int, now_ms: float) -> bool:
        if self.slots <= 0 or not self._sessions:
            return False
        stale = min(self._sessions.values(), key=lambda s: s.last_used_ms)
        if now_ms - stale.last_used_ms > self.eviction_ms:
            victim = stale
        else:
            victim = min(self._sessions.values(), key=lambda s: (len(s.partitions), s.last_used_ms))
            if len(victim.partitions) >= size:
                return False
        self.remove(victim.id)
        self.evictions += 1
        return True

    def remove(self, session_id: int) -> FetchSession | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            for cached in session.partitions.values():
                self._unwatch(session.id, cached.stream_id)
            if session.wake is not None:
                session.wake()
        return session

    def _forget(self, session: FetchSession, key: Key) -> None:
        cached = session.partitions.pop(key, None)
        session.pending.discard(key)
        if cached is not None:
            self._unwatch(session.id, cached.stream_id)

    # streams ----------------------------------------------------------------

    def bind(self, session: FetchSession, key: Key, stream_id: int, polled: bool) -> None:
        """The handler resolved `key` to a stream: commits to it mark the key pending."""
        cached = session.partitions.get(key)
        if cached is None or self._sessions.get(session.id) is not session:
            return  # forgotten, or the session was evicted meanwhile: watch nothing
        cached.polled = polled
        if cached.stream_id == stream_id:
            return
        self._unwatch(session.id, cached.stream_id)
        cached.stream_id = stream_id
        if stream_id >= 0:
            self._watchers.setdefault(stream_id, {})[session.id] = key

    def _unwatch(self, session_id: int, stream_id: int) -> None:
        if stream_id < 0:
            return
        watchers = self._watchers.get(stream_id)
        if watchers is not None:
            watchers.pop(session_id, None)
            if not watchers:
                del self._watchers[stream_id]

    def advanced(self, stream_id: int) -> None:
        """A stream's high watermark moved (or the stream went away): its
        partition has news for every session that holds it."""
        watchers = self._watchers.get(stream_id)
        if not watchers:
            return
        for sid, key in watchers.items():
            session = self._sessions.get(sid)
            if session is None:
                continue
            session.pending.add(key)
            if session.wake is not None:
                session.wake()
