"""Malformed and invalid input gets a Kafka error or a closed connection with
one log line, never a crash: every other client goes on being served."""

from __future__ import annotations

import datetime
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kio.schema.errors import ErrorCode

from harness import BrokerProcess
from wire import RawClient, create_topic, fetch_request, make_batch, produce

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's own error paths"
)


def api_versions_ok(bootstrap: str) -> bool:
    from kio.schema.api_versions.v3.request import ApiVersionsRequest

    with RawClient(bootstrap) as c:
        resp = c.call(
            18, 3, ApiVersionsRequest(client_software_name="t", client_software_version="1")
        )
    return resp.error_code == ErrorCode.none and len(resp.api_keys) > 5


@pytest.mark.parametrize(
    "payload, reason",
    [
        (struct.pack(">i", 200 * 1024 * 1024), "exceeds socket.request.max.bytes"),
        (struct.pack(">i", -5), "negative frame size"),
        (struct.pack(">i", 40) + os.urandom(40), ""),
        (struct.pack(">i", 12) + struct.pack(">hhih", 999, 0, 7, -1) + b"\x00\x00", "unsupported"),
        (struct.pack(">i", 12) + struct.pack(">hhih", 0, 99, 7, -1) + b"\x00\x00", "unsupported"),
    ],
    ids=["too-large", "negative", "garbage", "unknown-api", "unsupported-version"],
)
def test_bad_frames_close_only_their_connection(
    broker: BrokerProcess, payload: bytes, reason: str
) -> None:
    bystander = RawClient(broker.bootstrap)
    with RawClient(broker.bootstrap) as bad:
        bad.send_raw(payload)
        assert bad.is_closed()
    # The connection opened before the bad one still works, and so do new ones.
    bystander.close()
    assert api_versions_ok(broker.bootstrap)
    if reason:
        assert reason in broker.log()


def test_frame_cut_off_is_logged(broker: BrokerProcess) -> None:
    with RawClient(broker.bootstrap) as c:
        c.send_raw(struct.pack(">i", 100) + b"\x00" * 10)
    assert api_versions_ok(broker.bootstrap)
    for _ in range(50):
        if "frame cut off after 10 bytes" in broker.log():
            break
        time.sleep(0.1)
    assert "frame cut off after 10 bytes" in broker.log()


def test_api_versions_fallback_for_unknown_version(broker: BrokerProcess) -> None:
    """A client asking ApiVersions v99 gets a v0 answer with UNSUPPORTED_VERSION
    and the supported ranges, as Kafka does, so it can retry lower."""
    from kio.schema.api_versions.v0.response import ApiVersionsResponse
    from kio.serial import entity_reader

    frame = struct.pack(">hhih", 18, 99, 42, 4) + b"test" + b"\x00"
    with RawClient(broker.bootstrap) as c:
        c.send_raw(struct.pack(">i", len(frame)) + frame)
        resp_frame = c.read_frame()
    assert struct.unpack_from(">i", resp_frame)[0] == 42
    resp, _ = entity_reader(ApiVersionsResponse)(resp_frame, 4)
    assert resp.error_code == ErrorCode.unsupported_version
    produce_range = [k for k in resp.api_keys if k.api_key == 0]
    assert produce_range and produce_range[0].min_version <= 9 <= produce_range[0].max_version


def test_wrong_crc_is_corrupt_message(broker: BrokerProcess, topic_name: str) -> None:
    assert create_topic(broker.bootstrap, topic_name) == ErrorCode.none
    resp = produce(broker.bootstrap, topic_name, make_batch([b"a", b"b"], corrupt_crc=True))
    assert resp.error_code == ErrorCode.corrupt_message
    ok = produce(broker.bootstrap, topic_name, make_batch([b"a", b"b"]))
    assert ok.error_code == ErrorCode.none and ok.base_offset == 0


def test_old_message_format_is_rejected(broker: BrokerProcess, topic_name: str) -> None:
    assert create_topic(broker.bootstrap, topic_name) == ErrorCode.none
    resp = produce(broker.bootstrap, topic_name, make_batch([b"x"], magic=1))
    assert resp.error_code == ErrorCode.unsupported_for_message_format


def test_batch_over_max_message_bytes(broker: BrokerProcess, topic_name: str) -> None:
    assert (
        create_topic(broker.bootstrap, topic_name, configs={"max.message.bytes": "1000"})
        == ErrorCode.none
    )
    resp = produce(broker.bootstrap, topic_name, make_batch([b"x" * 2000]))
    assert resp.error_code == ErrorCode.message_too_large
    assert produce(broker.bootstrap, topic_name, make_batch([b"x" * 500])).error_code == 0


def test_record_count_disagreeing_with_offsets(broker: BrokerProcess, topic_name: str) -> None:
    assert create_topic(broker.bootstrap, topic_name) == ErrorCode.none
    bad = make_batch([b"a", b"b", b"c"], records_count=5)
    assert produce(broker.bootstrap, topic_name, bad).error_code == ErrorCode.invalid_record


def test_truncated_batch_is_corrupt(broker: BrokerProcess, topic_name: str) -> None:
    assert create_topic(broker.bootstrap, topic_name) == ErrorCode.none
    batch = make_batch([b"abc" * 10])
    assert produce(broker.bootstrap, topic_name, batch[:-7]).error_code == ErrorCode.corrupt_message


def test_invalid_and_duplicate_topic_names(broker: BrokerProcess, topic_name: str) -> None:
    assert create_topic(broker.bootstrap, "bad/name") == ErrorCode.invalid_topic_exception
    assert create_topic(broker.bootstrap, "x" * 250) == ErrorCode.invalid_topic_exception
    assert create_topic(broker.bootstrap, "..") == ErrorCode.invalid_topic_exception
    assert create_topic(broker.bootstrap, topic_name) == ErrorCode.none
    assert create_topic(broker.bootstrap, topic_name) == ErrorCode.topic_already_exists
    assert create_topic(broker.bootstrap, topic_name + "-z", 0) == ErrorCode.invalid_partitions
    assert (
        create_topic(broker.bootstrap, topic_name + "-c", configs={"no.such.config": "1"})
        == ErrorCode.invalid_config
    )


def test_fetch_out_of_range(broker: BrokerProcess, topic_name: str) -> None:

    assert create_topic(broker.bootstrap, topic_name) == ErrorCode.none
    assert produce(broker.bootstrap, topic_name, make_batch([b"a"])).error_code == 0
    body = fetch_request(topic_name, {0: 5})
    with RawClient(broker.bootstrap) as c:
        part = c.call(1, 12, body).responses[0].partitions[0]
    assert part.error_code == ErrorCode.offset_out_of_range
    assert part.high_watermark == 1


@pytest.fixture
def no_autocreate(tmp_path: Path) -> Iterator[BrokerProcess]:
    b = BrokerProcess(tmp_path / "data", env={"SHOAL_AUTO_CREATE_TOPICS_ENABLE": "false"}).start()
    yield b
    b.stop()


def test_missing_topic_without_auto_create(no_autocreate: BrokerProcess) -> None:
    from kio.schema.metadata.v12 import request as mr

    with RawClient(no_autocreate.bootstrap) as c:
        meta = c.call(
            3,
            12,
            mr.MetadataRequest(
                topics=(mr.MetadataRequestTopic(topic_id=None, name="nope"),),
                allow_auto_topic_creation=True,
                include_topic_authorized_operations=False,
            ),
        )
    assert meta.topics[0].error_code == ErrorCode.unknown_topic_or_partition
    resp = produce(no_autocreate.bootstrap, "nope", make_batch([b"a"]))
    assert resp.error_code == ErrorCode.unknown_topic_or_partition


def test_reassignment_on_a_single_node(broker: BrokerProcess, topic_name: str) -> None:
    from kio.schema.alter_partition_reassignments.v0 import request as ar
    from kio.schema.list_partition_reassignments.v0 import request as lr

    assert create_topic(broker.bootstrap, topic_name) == ErrorCode.none
    body = ar.AlterPartitionReassignmentsRequest(
        timeout=datetime.timedelta(seconds=10),
        topics=(
            ar.ReassignableTopic(
                name=topic_name,
                partitions=(
                    ar.ReassignablePartition(partition_index=0, replicas=(1,)),
                    ar.ReassignablePartition(partition_index=7, replicas=(1,)),
                ),
            ),
        ),
    )
    with RawClient(broker.bootstrap) as c:
        parts = c.call(45, 0, body).responses[0].partitions
        listed = c.call(
            46,
            0,
            lr.ListPartitionReassignmentsRequest(
                timeout=datetime.timedelta(seconds=10), topics=None
            ),
        )
    assert parts[0].error_code == ErrorCode.invalid_replica_assignment
    assert parts[1].error_code == ErrorCode.unknown_topic_or_partition
    assert listed.error_code == ErrorCode.none and listed.topics == ()
