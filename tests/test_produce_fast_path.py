"""The small-request produce path (issue 13): a topic's configs read once per
topic and kept until they change, and the answers to pipelined requests
gathered into one socket write. These check what must not change with it:
an altered config applies to the next request, and pipelined requests are
answered, each once, in request order."""

from __future__ import annotations

import json
import socket
import struct
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin import ResourceType as AdminResource

from harness import BrokerProcess
from shoal.broker.topics import TopicCatalog
from shoal.config import load_config
from shoal.meta.store import MetaStore
from wire import (
    create_topic,
    decode_response,
    make_batch,
    produce,
    produce_many,
    produce_request,
    request_frame,
)

MESSAGE_TOO_LARGE = 10


def _alter(bootstrap: str, topic: str, key: str, value: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(
        AdminResource.TOPIC,
        topic,
        incremental_configs=[ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)],
    )
    admin.incremental_alter_configs([res])[res].result(30)


def test_an_altered_topic_config_applies_to_the_next_produce(broker: BrokerProcess) -> None:
    topic = f"policy-{uuid.uuid4().hex[:8]}"
    assert int(create_topic(broker.bootstrap, topic)) == 0
    big = make_batch([b"x" * 3000])
    first = produce(broker.bootstrap, topic, big)
    assert first.error_code == 0 and first.log_append_time is None  # CreateTime, 1 MB

    _alter(broker.bootstrap, topic, "max.message.bytes", "2000")
    refused = produce(broker.bootstrap, topic, make_batch([b"x" * 3000]))
    assert refused.error_code == MESSAGE_TOO_LARGE, refused

    _alter(broker.bootstrap, topic, "message.timestamp.type", "LogAppendTime")
    stamped = produce(broker.bootstrap, topic, make_batch([b"small"]))
    assert stamped.error_code == 0, stamped
    assert stamped.log_append_time is not None  # the broker's time: the new config
    assert stamped.base_offset == first.base_offset + 1


def test_pipelined_produce_requests_are_answered_once_in_order(broker: BrokerProcess) -> None:
    """200 requests written at once over 4 partitions: the answers come back
    in request order, one each, with each partition's offsets in sequence."""
    topic = f"pipe-{uuid.uuid4().hex[:8]}"
    assert int(create_topic(broker.bootstrap, topic, partitions=4)) == 0
    count = 200
    frames = [
        request_frame(0, 9, produce_request(topic, make_batch([b"v%d" % i]), i % 4), i)
        for i in range(count)
    ]
    host, _, port = broker.bootstrap.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"".join(frames))
        stream = sock.makefile("rb")
        answers = []
        for _ in range(count):
            size = struct.unpack(">i", stream.read(4))[0]
            answers.append(stream.read(size))
    offsets: dict[int, list[int]] = {}
    for i, frame in enumerate(answers):
        assert struct.unpack(">i", frame[:4])[0] == i  # correlation id: request order
        part = decode_response(0, 9, frame).responses[0].partition_responses[0]
        assert part.error_code == 0, part
        assert part.index == i % 4
        offsets.setdefault(part.index, []).append(part.base_offset)
    for got in offsets.values():
        assert got == list(range(got[0], got[0] + count // 4))


async def test_stream_labels_follow_creates_deletes_and_new_partitions(tmp_path: Path) -> None:
    """Labels come from an index of stream ids (built on a miss): a deleted
    topic's streams have none, new topics and partitions are found."""
    meta = await MetaStore.open(f"sqlite:///{tmp_path}/meta.db")
    try:
        topics = TopicCatalog(meta, load_config())
        a = await topics.create("labels-a", 2, {})
        label = topics.stream_label(a.partitions[1].stream_id)
        assert label is not None
        assert json.loads(label) == {"topic": "labels-a", "partition": 1, "id": a.topic_uuid.hex}
        b = await topics.create("labels-b", 1, {})  # created after the index was built
        label = topics.stream_label(b.partitions[0].stream_id)
        assert label is not None and json.loads(label)["topic"] == "labels-b"
        await topics.delete("labels-a")
        assert topics.stream_label(a.partitions[0].stream_id) is None
        grown = await topics.add_partitions("labels-b", 2)
        label = topics.stream_label(grown.partitions[1].stream_id)
        assert label is not None and json.loads(label)["partition"] == 1
        assert topics.stream_label(10**9) is None
    finally:
        await meta.close()


def test_a_request_whose_first_partitions_wait_for_their_streams_is_answered_in_full(
    broker: BrokerProcess,
) -> None:
    """The answer waits on a request's last append and then on any still
    pending (produce._respond): here the first partitions' streams open with
    this request, so their appends go to the WAL after those of the open
    streams behind them, and commit after the last one."""
    topic = f"open-{uuid.uuid4().hex[:8]}"
    assert int(create_topic(broker.bootstrap, topic, partitions=8)) == 0
    warm = produce_many(broker.bootstrap, topic, {p: make_batch([b"first"]) for p in range(4, 8)})
    assert [(r.index, r.error_code, r.base_offset) for r in warm] == [
        (p, 0, 0) for p in range(4, 8)
    ]
    answers = produce_many(broker.bootstrap, topic, {p: make_batch([b"x", b"y"]) for p in range(8)})
    assert [(r.index, r.error_code, r.base_offset) for r in answers] == [
        (p, 0, 0 if p < 4 else 1) for p in range(8)
    ]
