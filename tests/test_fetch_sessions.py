"""Fetch sessions (KIP-227) end to end: the error codes at the wire, an
incremental fetch answering only partitions with news, kafka-python consuming
many partitions through a session, eviction and a restart (the client gets
FETCH_SESSION_ID_NOT_FOUND and starts over)."""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kio.schema.errors import ErrorCode

from harness import BrokerProcess
from wire import RawClient, create_topic, fetch_request, make_batch, produce, produce_many, topic_id


def fetch(
    c: RawClient,
    topic: str,
    partitions: dict[int, int],
    session: tuple[int, int],
    forget: tuple[int, ...] = (),
) -> Any:
    return c.call(1, 12, fetch_request(topic, partitions, session=session, forget=forget))


def answered(resp: Any) -> dict[int, Any]:
    return {p.partition_index: p for t in resp.responses for p in t.partitions}


def test_incremental_fetch_answers_only_news(broker: BrokerProcess, topic_name: str) -> None:
    n = 20
    assert create_topic(broker.bootstrap, topic_name, n) == ErrorCode.none
    with RawClient(broker.bootstrap) as c:
        first = fetch(c, topic_name, dict.fromkeys(range(n), 0), (0, 0))
        sid = first.session_id
        assert first.error_code == ErrorCode.none and sid > 0
        assert sorted(answered(first)) == list(range(n))  # a full fetch answers all
        # Nothing new: an incremental fetch answers nothing.
        assert answered(fetch(c, topic_name, {}, (sid, 1))) == {}
        assert produce(broker.bootstrap, topic_name, make_batch([b"news"]), 7).error_code == 0
        news = answered(fetch(c, topic_name, {}, (sid, 2)))
        assert list(news) == [7] and b"news" in news[7].records and news[7].high_watermark == 1
        # The client moves past it: nothing more to say about partition 7.
        assert answered(fetch(c, topic_name, {7: 1}, (sid, 3))) == {}
        # A forgotten partition is not answered even with news.
        resp = fetch(c, topic_name, {}, (sid, 4), forget=(3,))
        assert resp.error_code == ErrorCode.none
        assert produce(broker.bootstrap, topic_name, make_batch([b"x"]), 3).error_code == 0
        assert produce(broker.bootstrap, topic_name, make_batch([b"y"]), 4).error_code == 0
        assert list(answered(fetch(c, topic_name, {}, (sid, 5)))) == [4]

        # The same epoch twice, a wrong one, an unknown session.
        again = fetch(c, topic_name, {}, (sid, 5))
        assert (again.error_code, again.responses) == (ErrorCode.invalid_fetch_session_epoch, ())
        assert (
            fetch(c, topic_name, {}, (sid, 99)).error_code == ErrorCode.invalid_fetch_session_epoch
        )
        unknown = sid + 1 if sid < 0x7FFFFFFF else 1
        assert fetch(c, topic_name, {}, (unknown, 1)).error_code == (
            ErrorCode.fetch_session_id_not_found
        )
        # Closing (epoch -1): sessionless full fetch, then the session is gone.
        closed = fetch(c, topic_name, {0: 0}, (sid, -1))
        assert (closed.error_code, closed.session_id) == (ErrorCode.none, 0)
        assert fetch(c, topic_name, {}, (sid, 6)).error_code == ErrorCode.fetch_session_id_not_found


def test_incremental_fetch_waits_for_news(broker: BrokerProcess, topic_name: str) -> None:
    """A long poll on a session is woken by a commit to any of its partitions."""
    assert create_topic(broker.bootstrap, topic_name, 3) == ErrorCode.none
    with RawClient(broker.bootstrap) as c:
        sid = fetch(c, topic_name, dict.fromkeys(range(3), 0), (0, 0)).session_id
        # a long poll: 20 s max wait, news only
        body = dataclasses.replace(
            fetch_request(topic_name, {}, session=(sid, 1)),
            max_wait=datetime.timedelta(seconds=20),
        )
        from wire import request_frame

        c.send_raw(request_frame(1, 12, body, correlation_id=9))
        assert produce(broker.bootstrap, topic_name, make_batch([b"wake"]), 2).error_code == 0
        c.sock.settimeout(15)
        frame = c.read_frame()
    assert b"wake" in frame


def consume(consumer: KafkaConsumer, want: int, timeout: float = 60) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=500).values():
            got.extend(recs)
    return got


def session_id(consumer: KafkaConsumer) -> int:
    handlers = consumer._fetcher._session_handlers  # the client's own session state
    return max((h.next_metadata.session_id for h in handlers.values()), default=0)


def kafka_python_consumer(bootstrap: str, topic: str, n: int) -> KafkaConsumer:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=200,
        reconnect_backoff_max_ms=500,  # back soon after the restart
    )
    consumer.assign([TopicPartition(topic, p) for p in range(n)])
    consumer.seek_to_beginning()
    return consumer


def produce_each(bootstrap: str, topic: str, n: int, tag: bytes) -> None:
    """One record to each of partitions 0..n-1, in one request."""
    answers = produce_many(bootstrap, topic, {p: make_batch([tag + b"-%d" % p]) for p in range(n)})
    assert [a.error_code for a in answers] == [0] * n


def test_kafka_python_sessions_eviction_and_restart(tmp_path: Any) -> None:
    """kafka-python consumes through incremental sessions. One slot: a bigger
    consumer takes it, the smaller one is told its session is gone and goes on
    with full fetches. After a restart every session is gone: the client is
    told so, starts over, and consumes on; topics keep their ids."""
    n = 60
    b = BrokerProcess(
        tmp_path / "data", env={"SHOAL_MAX_INCREMENTAL_FETCH_SESSION_CACHE_SLOTS": "1"}
    ).start()
    small = big = None
    try:
        assert create_topic(b.bootstrap, "many", n) == ErrorCode.none
        produce_each(b.bootstrap, "many", n, b"a")
        small = kafka_python_consumer(b.bootstrap, "many", 3)
        assert sorted(r.value for r in consume(small, 3)) == [b"a-0", b"a-1", b"a-2"]
        first = session_id(small)
        assert first > 0  # the broker gave it an incremental session
        big = kafka_python_consumer(b.bootstrap, "many", n)
        got = consume(big, n)
        assert sorted(r.value for r in got) == sorted(b"a-%d" % p for p in range(n))
        taken = session_id(big)
        assert taken > 0
        produce_each(b.bootstrap, "many", n, b"b")
        assert sorted(r.value for r in consume(small, 3)) == [b"b-0", b"b-1", b"b-2"]
        assert len(consume(big, n)) == n
        assert f"no session {first}" in b.log()  # evicted
        assert session_id(big) == taken

        tid = topic_id(b.bootstrap, "many")
        b.restart()
        assert topic_id(b.bootstrap, "many") == tid  # a topic keeps its id
        produce_each(b.bootstrap, "many", n, b"c")
        got = consume(big, n)
        assert sorted(r.value for r in got) == sorted(b"c-%d" % p for p in range(n))
        assert sorted(r.value for r in consume(small, 3)) == [b"c-0", b"c-1", b"c-2"]
        assert session_id(big) not in (0, taken)  # a new session after the restart
        assert f"no session {taken}" in b.log()
    finally:
        for consumer in (small, big):
            if consumer is not None:
                consumer.close()
        b.stop()


def test_sessionless_fetch_of_many_partitions_after_a_restart(tmp_path: Any) -> None:
    """librdkafka's fetches carry no session and name every assigned
    partition. After a restart such a fetch opens its streams in batches and
    answers each partition from memory: right records and high watermarks
    for all of them, and a long poll over all of them wakes at a commit to
    any one."""
    n, written = 300, 150
    b = BrokerProcess(tmp_path / "data").start()
    try:
        assert create_topic(b.bootstrap, "fleet", n) == ErrorCode.none
        produce_each(b.bootstrap, "fleet", written, b"r")
        b.restart()
        with RawClient(b.bootstrap) as c:
            first = answered(fetch(c, "fleet", dict.fromkeys(range(n), 0), (0, -1)))
            assert sorted(first) == list(range(n))
            for p, part in first.items():
                assert part.error_code == ErrorCode.none
                assert part.high_watermark == (1 if p < written else 0)
                assert (b"r-%d" % p in (part.records or b"")) == (p < written)
            ends = {p: (1 if p < written else 0) for p in range(n)}
            again = answered(fetch(c, "fleet", ends, (0, -1)))
            assert sorted(again) == list(range(n))
            assert all(not part.records for part in again.values())
            assert [again[p].high_watermark for p in range(n)] == [ends[p] for p in range(n)]
            # a long poll at the end of all 300 partitions, woken by one commit
            body = dataclasses.replace(
                fetch_request("fleet", ends), max_wait=datetime.timedelta(seconds=20)
            )
            from wire import request_frame

            c.send_raw(request_frame(1, 12, body, correlation_id=9))
            assert produce(b.bootstrap, "fleet", make_batch([b"wake"]), n - 1).error_code == 0
            c.sock.settimeout(15)
            assert b"wake" in c.read_frame()
    finally:
        b.stop()


def test_a_large_sessionless_fetch_is_held_after_the_previous_answer(tmp_path: Any) -> None:
    """fetch.sessionless.pace.ms: a fetch without a session naming many
    partitions, sent right after the previous answer, is held for the pace
    even though a record arrives at once; records written meanwhile come in
    the same answer, none is lost."""
    n = 6
    b = BrokerProcess(
        tmp_path / "data",
        env={
            "SHOAL_FETCH_SESSIONLESS_PACE_MS": "4000",
            "SHOAL_FETCH_SESSIONLESS_PACE_PARTITIONS": str(n),
        },
    ).start()
    try:
        assert create_topic(b.bootstrap, "paced", n) == ErrorCode.none
        assert produce(b.bootstrap, "paced", make_batch([b"first"]), 0).error_code == 0
        with RawClient(b.bootstrap) as c:
            first = answered(fetch(c, "paced", dict.fromkeys(range(n), 0), (0, -1)))
            assert b"first" in first[0].records  # the first fetch is not held
            body = dataclasses.replace(
                fetch_request("paced", {0: 1, **dict.fromkeys(range(1, n), 0)}),
                max_wait=datetime.timedelta(seconds=30),
            )
            from wire import request_frame

            c.send_raw(request_frame(1, 12, body, correlation_id=9))
            # Unheld, the fetch would answer as soon as alpha commits, before
            # bravo is even sent; held, it reads both.
            assert produce(b.bootstrap, "paced", make_batch([b"value-alpha"]), 1).error_code == 0
            assert produce(b.bootstrap, "paced", make_batch([b"value-bravo"]), 2).error_code == 0
            c.sock.settimeout(20)
            frame = c.read_frame()
        assert b"value-alpha" in frame and b"value-bravo" in frame
    finally:
        b.stop()
