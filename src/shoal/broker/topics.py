"""The topic catalog: validated names, effective configs, auto-creation.

A write-through cache of the metadata store. On one node this broker is the
only writer, so the cache is the truth between restarts. In cluster mode other
brokers create topics and move owners too: the cluster member calls `refresh`
on a short interval, and a miss is looked up in the store before auto-creating.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shoal.config import TOPIC_KEYS, BrokerConfig, ConfigError, validate_topic_configs
from shoal.config_catalog import combination_problem
from shoal.meta.store import (
    MetaError,
    MetaStore,
    PartitionRecord,
    TopicExists,
    TopicNotFound,
    TopicRecord,
)
from shoal.protocol.errors import ErrorCode, KafkaError

log = logging.getLogger("shoal.topics")
_T = TypeVar("_T")
_R = TypeVar("_R")

_LEGAL = re.compile(r"^[a-zA-Z0-9._-]+$")
MAX_NAME = 249
MAX_PARTITIONS = 10_000


def check_topic_name(name: str | None) -> str:
    """Kafka's rules for topic names, as INVALID_TOPIC_EXCEPTION."""
    if not name:
        raise KafkaError(ErrorCode.invalid_topic_exception, "topic name is empty")
    if name in (".", ".."):
        raise KafkaError(ErrorCode.invalid_topic_exception, f"topic name {name!r} is reserved")
    if len(name) > MAX_NAME:
        raise KafkaError(
            ErrorCode.invalid_topic_exception, f"topic name longer than {MAX_NAME} characters"
        )
    if not _LEGAL.match(name):
        raise KafkaError(
            ErrorCode.invalid_topic_exception,
            f"topic name {name!r} may only contain ASCII letters, digits, '.', '_' and '-'",
        )
    return name


@dataclass(slots=True)
class Topic:
    id: int
    name: str
    topic_uuid: uuid.UUID
    overrides: dict[str, str]
    partitions: list[PartitionRecord] = field(default_factory=list)
    #: the produce handler's typed configs of this topic (handlers/produce.py
    #: `_policy`), kept with the topic so they go when it goes
    produce_policy: Any = field(default=None, compare=False, repr=False)


class GroupTopics:
    """The catalog as the consumer group protocol sees it: id and partition
    count by name (`shoal.group.consumer.Catalog`)."""

    def __init__(self, catalog: TopicCatalog) -> None:
        self._catalog = catalog

    def topic(self, name: str) -> tuple[uuid.UUID, int] | None:
        t = self._catalog.get(name)
        return None if t is None else (t.topic_uuid, len(t.partitions))

    def names(self) -> list[str]:
        return [t.name for t in self._catalog.all()]


class TopicCatalog:
    def __init__(self, meta: MetaStore, config: BrokerConfig) -> None:
        self.meta = meta
        self.config = config
        self._topics: dict[str, Topic] = {}
        self._by_id: dict[uuid.UUID, Topic] = {}  # topic ids (KIP-516): Fetch v13+, Produce v13
        self._by_stream: dict[int, tuple[Topic, int]] = {}  # see by_stream
        self._creating: dict[str, asyncio.Future[Topic]] = {}
        self._lock = asyncio.Lock()
        self._refreshing = asyncio.Lock()
        self._digest: str | None = None  # of the store's catalog at the last refresh
        # Each topic's digest at the last refresh, by id: a refresh reads only
        # the topics whose digest changed (MetaStore.topics_if_changed).
        self._sums: dict[int, str] = {}
        # Local changes, for refreshes that read the store before them: name ->
        # the generation of its last change here (see touch).
        self._generation = 0
        self._touched: dict[str, int] = {}
        #: moves on at every change to the topics or their partitions, here
        #: or reloaded (cluster mode: nothing to reconcile while it stands)
        self.version = 0
        self.cluster_mode = False
        # Cluster mode: gives a new topic's partitions owners.
        self.on_created: Callable[[list[Topic]], Awaitable[None]] | None = None

    async def load(self) -> None:
        self._set({t.name: _topic(t) for t in await self.meta.list_topics()})
        self._digest = None
        self._sums = {}

    def _set(self, topics: dict[str, Topic]) -> None:
        self.version += 1
        self._topics = topics
        self._by_id = {t.topic_uuid: t for t in topics.values()}

    async def refresh(self) -> list[Topic]:
        """Read the topics that changed in the store since the last refresh
        (every topic, on SQLite); returns topics that went away.

        A topic changed here after the store was read keeps its local view:
        a read made between a topic's creation and its owners' assignment
        (cluster mode) made the broker drop the partitions it had just
        opened ("moved away") and answer NOT_LEADER until the next refresh."""
        async with self._refreshing:  # one at a time: each prunes what it has seen
            return await self._refresh()

    async def _refresh(self) -> list[Topic]:
        generation = self._generation
        read = await self.meta.topics_if_changed(self._digest, self._sums)
        if read is None:
            return []
        async with self._lock:
            if read.partial:  # the rest are as they were: the same objects
                fresh = {n: t for n, t in self._topics.items() if t.id in read.sums}
                fresh.update((t.name, _topic(t)) for t in read.topics)
            else:
                fresh = {t.name: _topic(t) for t in read.topics}
            digest, sums = read.digest, read.sums
            if self._generation != generation:
                digest = None  # read again next time
                for name, changed in self._touched.items():
                    if changed <= generation:
                        continue
                    local = self._topics.get(name)
                    for kept in (fresh.get(name), local):
                        if kept is not None:
                            sums.pop(kept.id, None)  # and this topic with it
                    if local is None:
                        fresh.pop(name, None)
                    else:
                        fresh[name] = local
            self._touched = {n: g for n, g in self._touched.items() if g > generation}
            gone = [
                t for name, t in self._topics.items() if name not in fresh or fresh[name].id != t.id
            ]
            self._set(fresh)
            self._digest = digest
            self._sums = sums
        return gone

    def touch(self, name: str) -> None:
        """This topic was changed here (created, deleted, grown, its configs
        or owners set): a refresh that read the store before keeps it as it
        is here."""
        self._generation += 1
        self._touched[name] = self._generation

    async def _lookup(self, name: str) -> Topic | None:
        """Cluster mode: a topic another broker may have created just now."""
        if not self.cluster_mode:
            return None
        await self._adopt(await self.meta.find_topics([name]))
        return self._topics.get(name)

    def get(self, name: str) -> Topic | None:
        return self._topics.get(name)

    def by_id(self, topic_id: uuid.UUID | None) -> Topic | None:
        """The topic with this id, from the cache (as a Kafka broker answers from
        its metadata cache: an id created elsewhere a moment ago may be unknown
        until the next refresh)."""
        return self._by_id.get(topic_id) if topic_id is not None else None

    def all(self) -> list[Topic]:
        return list(self._topics.values())

    def by_stream(self, stream_id: int) -> tuple[Topic, PartitionRecord] | None:
        """The topic and partition a stream belongs to: the partition's
        current record (a topic's records are replaced when owners or
        epochs change)."""
        found = self._by_stream.get(stream_id)
        if found is None or self._topics.get(found[0].name) is not found[0]:
            # Indexed whole on a miss (or a topic deleted or reloaded since):
            # a broker's first write to 10,000 partitions asked for 10,000
            # labels, each a scan of every partition (5 s of CPU).
            self._by_stream = {
                p.stream_id: (t, p.partition) for t in self._topics.values() for p in t.partitions
            }
            found = self._by_stream.get(stream_id)
            if found is None:
                return None
        t, index = found
        return t, t.partitions[index]

    def stream_label(self, stream_id: int) -> str | None:
        """The label objects carry for a partition's stream (storage/format.py):
        enough for `shoal meta rebuild` to bring the topic back."""
        found = self.by_stream(stream_id)
        if found is None:
            return None
        t, p = found
        return json.dumps(
            {"topic": t.name, "partition": p.partition, "id": t.topic_uuid.hex},
            separators=(",", ":"),
        )

    def effective(self, topic: Topic, key: str) -> Any:
        """A topic config's value: its override, else the broker default, typed."""
        raw = topic.overrides.get(key)
        if raw is None:
            return self.config.topic_default(key)
        return TOPIC_KEYS[key].parse(raw, f"topic {topic.name}")

    def _check_combination(self, overrides: dict[str, str]) -> None:
        """INVALID_CONFIG when keys valid alone conflict (Kafka's cross-key rules)."""

        def value(key: str) -> Any:
            raw = overrides.get(key)
            if raw is None:
                return self.config.topic_default(key)
            return TOPIC_KEYS[key].parse(raw, "request")

        problem = combination_problem(value)
        if problem is not None:
            raise KafkaError(ErrorCode.invalid_config, problem)

    def max_message_bytes(self, topic: Topic) -> int:
        return int(self.effective(topic, "max.message.bytes"))

    async def create(
        self,
        name: str,
        partitions: int,
        configs: dict[str, str | None],
        *,
        validate_only: bool = False,
    ) -> Topic:
        (result,) = await self.create_many(
            [(name, partitions, configs)], validate_only=validate_only
        )
        if isinstance(result, KafkaError):
            raise result
        return result

    async def create_many(
        self,
        wanted: list[tuple[str, int, dict[str, str | None]]],
        *,
        validate_only: bool = False,
    ) -> list[Topic | KafkaError]:
        """Create the topics of one CreateTopics request (name, partitions
        (-1: the default), configs); each one's topic or error, in order.

        The valid ones are created in one metadata transaction and placed
        (cluster mode) together: one topic after another, 2,000 topics
        took 26 s on PostgreSQL, a few round trips per topic."""
        out: list[str | KafkaError] = []  # a name: to be created
        todo: dict[str, tuple[int, dict[str, str]]] = {}
        for name, partitions, configs in wanted:
            try:
                count, clean = self._checked(name, partitions, configs)
            except KafkaError as exc:
                out.append(exc)
                continue
            out.append(_exists(name) if name in todo else name)
            todo.setdefault(name, (count, clean))
        if validate_only:
            return [r if isinstance(r, KafkaError) else _placeholder(r, *todo[r]) for r in out]
        async with self._lock:
            todo = {n: v for n, v in todo.items() if n not in self._topics}
            created = await self._insert(todo)
            for topic in created.values():
                self._topics[topic.name] = topic
                self._by_id[topic.topic_uuid] = topic
                self.touch(topic.name)
        for topic in created.values():
            log.info(
                "created topic %s with %d partitions %s",
                topic.name,
                len(topic.partitions),
                topic.overrides or "",
            )
        if created and self.on_created is not None:
            await self.on_created(list(created.values()))
        return [r if isinstance(r, KafkaError) else created.get(r) or _exists(r) for r in out]

    async def _insert(self, todo: dict[str, tuple[int, dict[str, str]]]) -> dict[str, Topic]:
        """Create these in the store (see _all_or_each)."""
        specs = [(name, count, clean) for name, (count, clean) in todo.items()]
        done = await _all_or_each(specs, self.meta.create_topics, TopicExists)
        return {rec.name: _topic(rec) for _spec, rec in done}

    def _checked(
        self, name: str, partitions: int, configs: dict[str, str | None]
    ) -> tuple[int, dict[str, str]]:
        """The partition count and clean configs of a topic to create, or
        the Kafka error that says why it cannot be."""
        check_topic_name(name)
        if partitions == -1:
            partitions = int(self.config["num.partitions"])
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise KafkaError(
                ErrorCode.invalid_partitions,
                f"number of partitions must be between 1 and {MAX_PARTITIONS}, got {partitions}",
            )
        try:
            clean = validate_topic_configs(configs)
        except ConfigError as exc:
            raise KafkaError(ErrorCode.invalid_config, str(exc)) from None
        self._check_combination(clean)
        if name in self._topics:
            raise _exists(name)
        return partitions, clean

    async def get_or_create(self, name: str, allow_auto_create: bool = True) -> Topic | None:
        """The topic, auto-created on first use when the broker allows it."""
        (found,) = await self.get_or_create_many([name], allow_auto_create)
        if isinstance(found, KafkaError):
            raise found
        return found

    async def get_or_create_many(
        self, names: list[str], allow_auto_create: bool = True
    ) -> list[Topic | KafkaError | None]:
        """Each topic, auto-created on first use when the broker allows it
        (None: it does not exist and is not created), in order.

        A Metadata request naming a fleet's new topics (each site's, on its
        first connection) creates them together: one at a time, with a
        catalog reload before each in a cluster, 2,000 topics took 48 s on
        PostgreSQL."""
        missing = [n for n in dict.fromkeys(names) if n not in self._topics]
        if missing and self.cluster_mode:
            await self._adopt(await self.meta.find_topics(missing))
            missing = [n for n in missing if n not in self._topics]
        made: dict[str, Topic | KafkaError] = {}
        if missing and allow_auto_create and self.config["auto.create.topics.enable"]:
            results = await self.create_many([(n, -1, {}) for n in missing])
            for name, result in zip(missing, results, strict=True):
                if isinstance(result, KafkaError) and result.code == ErrorCode.topic_already_exists:
                    # Created meanwhile, here or by another broker.
                    made[name] = self._topics.get(name) or await self._lookup(name) or result
                else:
                    made[name] = result
        return [made[n] if n in made else self._topics.get(n) for n in names]

    async def _adopt(self, found: list[TopicRecord]) -> None:
        """Cluster mode: topics another broker created, looked up by name
        (a whole reload for each Metadata request naming new topics cost
        the event loop tens of milliseconds with 10,000 partitions). The
        version moves on, so the cluster member opens those assigned here."""
        if not found:
            return
        async with self._lock:
            for rec in found:
                if rec.name not in self._topics:
                    topic = self._topics[rec.name] = _topic(rec)
                    self._by_id[topic.topic_uuid] = topic
                    self.touch(rec.name)
            self.version += 1

    async def delete(self, name: str) -> Topic:
        (result,) = await self.delete_many([name])
        if isinstance(result, KafkaError):
            raise result
        return result

    async def delete_many(self, names: list[str]) -> list[Topic | KafkaError]:
        """Delete the topics of one DeleteTopics request together (one
        metadata transaction); each one's topic or error, in order (a name
        listed twice: the second finds no topic)."""
        if not self.config["delete.topic.enable"]:
            refused = KafkaError(ErrorCode.topic_deletion_disabled, "delete.topic.enable is false")
            return [refused for _ in names]
        async with self._lock:
            present = [n for n in dict.fromkeys(names) if n in self._topics]
            # One another broker deleted meanwhile is not in the store: it
            # answers UNKNOWN_TOPIC_OR_PARTITION, and the next refresh drops it.
            gone = {t.name for t in await self.meta.delete_topics(present)} if present else set()
            deleted: dict[str, Topic] = {}
            for name in present:
                if name in gone:
                    topic = deleted[name] = self._topics.pop(name)
                    self._by_id.pop(topic.topic_uuid, None)
                    self.touch(name)
        for name in deleted:
            log.info("deleted topic %s", name)
        out: list[Topic | KafkaError] = []
        for name in names:
            gone_topic = deleted.pop(name, None)
            out.append(
                gone_topic or KafkaError(ErrorCode.unknown_topic_or_partition, f"no topic {name!r}")
            )
        return out

    async def add_partitions(self, name: str, total: int, *, validate_only: bool = False) -> Topic:
        (result,) = await self.add_partitions_many([(name, total)], validate_only=validate_only)
        if isinstance(result, KafkaError):
            raise result
        return result

    async def add_partitions_many(
        self, wanted: list[tuple[str, int]], *, validate_only: bool = False
    ) -> list[Topic | KafkaError]:
        """Grow the topics of one CreatePartitions request (name, new total)
        together: one metadata transaction, one placement in a cluster;
        each one's topic or error, in order. One topic at a time, growing
        2,000 topics took 26 s on PostgreSQL."""
        out: list[str | KafkaError] = []  # a name: to be grown
        todo: dict[str, int] = {}
        for name, total in wanted:
            try:
                if name in todo:
                    raise KafkaError(ErrorCode.invalid_request, f"topic {name!r} listed twice")
                self._check_growth(name, total)
            except KafkaError as exc:
                out.append(exc)
                continue
            out.append(name)
            todo[name] = total
        grown: dict[str, Topic] = {}
        if not validate_only and todo:
            async with self._lock:
                # A DeleteTopics may have run while this request waited for
                # the lock, or another broker of the cluster may have deleted one.
                grown = await self._grow({n: t for n, t in todo.items() if n in self._topics})
                for name in grown:
                    self.touch(name)
            for name, topic in grown.items():
                log.info("topic %s now has %d partitions", name, len(topic.partitions))
            if grown and self.on_created is not None:
                await self.on_created(list(grown.values()))
        elif validate_only:
            grown = {n: self._topics[n] for n in todo}
        return [
            r
            if isinstance(r, KafkaError)
            else grown.get(r) or KafkaError(ErrorCode.unknown_topic_or_partition, f"no topic {r!r}")
            for r in out
        ]

    def _check_growth(self, name: str, total: int) -> None:
        topic = self._topics.get(name)
        if topic is None:
            raise KafkaError(ErrorCode.unknown_topic_or_partition, f"no topic {name!r}")
        have = len(topic.partitions)
        if total <= have:
            raise KafkaError(
                ErrorCode.invalid_partitions,
                f"topic {name!r} has {have} partitions; the new count must be larger, got {total}",
            )
        if total > MAX_PARTITIONS:
            raise KafkaError(ErrorCode.invalid_partitions, f"at most {MAX_PARTITIONS} partitions")

    async def _grow(self, todo: dict[str, int]) -> dict[str, Topic]:
        """Add the partitions in the store (see _all_or_each) and to the
        cached topics."""
        done = await _all_or_each(list(todo.items()), self.meta.add_partitions_many, TopicNotFound)
        grown: dict[str, Topic] = {}
        for _wanted, rec in done:
            topic = self._topics[rec.name]
            topic.partitions = list(rec.partitions)
            grown[rec.name] = topic
        return grown

    async def alter_configs(
        self,
        name: str,
        set_: dict[str, str | None],
        remove: list[str],
        *,
        replace: bool,
        validate_only: bool = False,
    ) -> None:
        (result,) = await self.alter_configs_many(
            [(name, set_, remove, replace)], validate_only=validate_only
        )
        if result is not None:
            raise result

    async def alter_configs_many(
        self,
        wanted: list[tuple[str, dict[str, str | None], list[str], bool]],
        *,
        validate_only: bool = False,
    ) -> list[KafkaError | None]:
        """Change the configs of one AlterConfigs request's topics (name,
        set, remove, replace all) together, in one metadata transaction;
        each one's error or None, in order. A topic listed twice: the
        second is INVALID_REQUEST."""
        out: list[KafkaError | None] = []
        todo: dict[str, tuple[dict[str, str], list[str], bool]] = {}
        for name, set_, remove, replace in wanted:
            try:
                if name in todo:
                    raise KafkaError(ErrorCode.invalid_request, f"topic {name!r} listed twice")
                todo[name] = (self._checked_configs(name, set_, remove, replace), remove, replace)
            except KafkaError as exc:
                out.append(exc)
                continue
            out.append(None)
        if validate_only or not todo:
            return out
        async with self._lock:
            # Deleted while this request waited, here or by another broker.
            changed = await self._set_configs({n: c for n, c in todo.items() if n in self._topics})
            for name, overrides in changed.items():
                self._topics[name].overrides = overrides
                self.touch(name)
        for name, overrides in changed.items():
            log.info("topic %s configs now %s", name, overrides)
        return [
            r
            if r is not None or name in changed
            else KafkaError(ErrorCode.unknown_topic_or_partition, f"no topic {name!r}")
            for r, (name, *_rest) in zip(out, wanted, strict=True)
        ]

    def _checked_configs(
        self, name: str, set_: dict[str, str | None], remove: list[str], replace: bool
    ) -> dict[str, str]:
        """The clean configs to set on a topic, or the Kafka error that says
        why they cannot be."""
        topic = self._topics.get(name)
        if topic is None:
            raise KafkaError(ErrorCode.unknown_topic_or_partition, f"no topic {name!r}")
        try:
            clean = validate_topic_configs(set_)
            for key in remove:
                if key not in TOPIC_KEYS:
                    raise ConfigError(f"unknown topic config {key!r}")
        except ConfigError as exc:
            raise KafkaError(ErrorCode.invalid_config, str(exc)) from None
        merged = {} if replace else {k: v for k, v in topic.overrides.items() if k not in remove}
        self._check_combination({**merged, **clean})
        return clean

    async def _set_configs(
        self, todo: dict[str, tuple[dict[str, str], list[str], bool]]
    ) -> dict[str, dict[str, str]]:
        """Set them in the store (see _all_or_each); each topic's overrides now."""
        changes = [(n, clean, remove, replace) for n, (clean, remove, replace) in todo.items()]
        done = await _all_or_each(changes, self.meta.set_topic_configs_many, TopicNotFound)
        return {change[0]: overrides for change, overrides in done}


async def _all_or_each(
    items: list[_T],
    run: Callable[[list[_T]], Awaitable[list[_R]]],
    conflict: type[MetaError],
) -> list[tuple[_T, _R]]:
    """`run` on all the items at once (one metadata transaction); if that
    fails with `conflict` (another broker of the cluster created or deleted
    one of these topics since the cache last saw the store), on each alone,
    leaving out those that fail so. Each item done, with its result."""
    try:
        return list(zip(items, await run(items), strict=True))
    except conflict:
        if len(items) == 1:
            return []
    done: list[tuple[_T, _R]] = []
    for item in items:
        try:
            (result,) = await run([item])
        except conflict:
            continue
        done.append((item, result))
    return done


def _exists(name: str) -> KafkaError:
    return KafkaError(ErrorCode.topic_already_exists, f"topic {name!r} already exists")


def _placeholder(name: str, partitions: int, configs: dict[str, str]) -> Topic:
    """What a topic would be (validate_only): no id, no streams."""
    return Topic(
        -1, name, uuid.uuid4(), configs, [PartitionRecord(i, -1, 0) for i in range(partitions)]
    )


def _topic(rec: TopicRecord) -> Topic:
    return Topic(rec.id, rec.name, rec.topic_uuid, dict(rec.configs), list(rec.partitions))
