"""The request guard (shoal.protocol.guard): hostile counts, nulls, truncations and
tagged fields are refused before kio's native decoder sees them, and every valid
request still passes. Frames that would abort the process without the guard are
decoded in a subprocess, so a regression fails the test instead of killing pytest."""

from __future__ import annotations

import datetime
import json
import os
import struct
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kio.index import load_request_schema
from kio.serial import entity_reader
from kio.static.primitive import Records, i64Timedelta

from request_samples import (
    ABORTS,
    FETCH_FIXED,
    HUGE_COMPACT,
    HUGE_INT32,
    PRODUCE_FIXED,
    VERSIONS,
    compact_str,
    header,
    legacy_str,
    sample_body,
    sample_frame,
)
from shoal.protocol.apis import decode_request, request_type
from shoal.protocol.errors import RequestDecodeError
from shoal.protocol.guard import check_body, guard_body
from shoal.protocol.headers import body_offset, peek_header
from wire import request_frame

TESTS = Path(__file__).resolve().parent
st.register_type_strategy(Records, st.binary(max_size=64).map(Records))
st.register_type_strategy(
    i64Timedelta,
    st.integers(-1, 10 * 365 * 86_400_000).map(
        lambda ms: i64Timedelta(datetime.timedelta(milliseconds=ms))
    ),
)


_DECODE_ALL = """
import json, sys
from shoal.protocol.apis import decode_request
from shoal.protocol.errors import RequestDecodeError
out = {}
for name, frame in json.loads(sys.stdin.read()).items():
    try:
        decode_request(bytes.fromhex(frame))
        out[name] = "accepted"
    except RequestDecodeError as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


def decode_in_subprocess(frames: dict[str, bytes]) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", _DECODE_ALL],
        input=json.dumps({k: v.hex() for k, v in frames.items()}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"decoder died ({proc.returncode}): {proc.stderr[-2000:]}"
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def test_frames_that_abort_kio_are_refused() -> None:
    results = decode_in_subprocess({name: frame for name, (frame, _) in ABORTS.items()})
    for name, (_frame, words) in ABORTS.items():
        assert words in results[name], (name, results[name])
        assert "cannot fit" in results[name], (name, results[name])


def body_start(frame: bytes) -> int:
    head = peek_header(frame)
    cls = request_type(head.api_key, head.api_version)
    return body_offset(frame, head, bool(cls.__flexible__))


def _decode(frame: bytes) -> Any:
    return decode_request(frame).body


@pytest.mark.parametrize(
    "frame, field",
    [
        (header(0, 9, True) + b"\x00" + PRODUCE_FIXED + b"\x00" + b"\x00", "topic_data"),
        (header(0, 3, False) + b"\xff\xff" + PRODUCE_FIXED + b"\xff\xff\xff\xff", "topic_data"),
        (
            header(0, 9, True) + b"\x00" + PRODUCE_FIXED + b"\x02\x00\x01\x00\x00",
            "topic_data.name",
        ),
        (
            header(0, 3, False) + b"\xff\xff" + PRODUCE_FIXED + struct.pack(">ihi", 1, -1, 0),
            "topic_data.name",
        ),
        (header(1, 12, True) + FETCH_FIXED + b"\x00\x01\x01\x00", "topics"),
        (header(1, 12, True) + FETCH_FIXED + b"\x01\x00\x01\x00", "forgotten_topics_data"),
        (header(1, 12, True) + FETCH_FIXED + b"\x01\x01\x00\x00", "rack_id"),
        (header(3, 0, False) + b"\xff\xff\xff\xff", "topics"),
        (header(19, 7, True) + b"\x00" + struct.pack(">ib", 1000, 0) + b"\x00", "topics"),
    ],
    ids=[
        "produce-v9-topics",
        "produce-v3-topics",
        "produce-v9-name",
        "produce-v3-name",
        "fetch-v12-topics",
        "fetch-v12-forgotten",
        "fetch-v12-rack",
        "metadata-v0-topics",
        "create-topics-v7",
    ],
)
def test_null_where_the_schema_forbids_it(frame: bytes, field: str) -> None:
    with pytest.raises(RequestDecodeError, match=f"{field}: null where the schema forbids it"):
        decode_request(frame)


def test_null_where_the_schema_allows_it() -> None:
    assert _decode(header(3, 1, False) + b"\xff\xff\xff\xff").topics is None
    assert _decode(header(3, 9, True) + b"\x00\x01\x00\x00\x00").topics is None
    produce = _decode(
        header(0, 9, True)
        + b"\x00"  # transactional_id: null
        + PRODUCE_FIXED
        + b"\x02"
        + compact_str(b"t")
        + b"\x02"
        + struct.pack(">i", 0)
        + b"\x00"  # records: null
        + b"\x00\x00\x00"
    )
    assert produce.transactional_id is None
    assert produce.topic_data[0].partition_data[0].records is None


@pytest.mark.parametrize(
    "frame, reason",
    [
        (header(0, 3, False) + b"\xff\xfe" + PRODUCE_FIXED, "transactional_id: negative length -2"),
        (header(0, 3, False) + b"\xff\xff" + PRODUCE_FIXED + b"\xff\xff\xff\xfb", "length -5"),
        (
            header(0, 3, False)
            + b"\xff\xff"
            + PRODUCE_FIXED
            + struct.pack(">i", 1)
            + legacy_str(b"t")
            + struct.pack(">iii", 1, 0, -7),
            "records: negative length -7",
        ),
        (header(3, 9, True) + b"\x02\x09ab\x00\x00\x00\x00", "topics.name: 8 bytes run past"),
        (header(0, 3, False) + b"\x00\x05abc", "transactional_id: 5 bytes run past"),
    ],
    ids=["string", "array", "bytes", "compact-string-long", "legacy-string-long"],
)
def test_bad_lengths(frame: bytes, reason: str) -> None:
    with pytest.raises(RequestDecodeError, match=reason):
        decode_request(frame)


def test_every_truncation_of_every_valid_request_is_refused() -> None:
    for api_key, version in VERSIONS:
        frame = sample_frame(api_key, version)[4:]
        start = body_start(frame) - 1  # the header kept whole
        for cut in range(start, len(frame)):
            try:
                decode_request(frame[:cut])
            except RequestDecodeError:
                continue
            raise AssertionError(f"{frame[:cut].hex()} accepted")


def fetch_v12(tags: bytes) -> bytes:
    """An empty Fetch v12 whose top-level tagged-field section is `tags`."""
    return header(1, 12, True) + FETCH_FIXED + b"\x01\x01\x01" + tags


@pytest.mark.parametrize(
    "frame, reason",
    [
        (fetch_v12(HUGE_COMPACT), "4294967295 fields cannot fit"),
        (fetch_v12(b"\x01\x05" + HUGE_COMPACT), "tag 5 of 4294967295 bytes runs past the end"),
        (fetch_v12(b"\x01\x00\x03\x02ab"), "tag 0 does not fill its 3 bytes"),
        (fetch_v12(b"\x01\x00\x02\x05ab"), "cluster_id: 4 bytes run past the end"),
        (fetch_v12(b"\x80\x80\x80\x80\x80\x01"), "varint longer than 5 bytes"),
        (fetch_v12(b"\xff\xff\xff\xff\x7f"), "varint exceeds 32 bits"),
        (fetch_v12(b"\x01\x80\x80"), "varint runs past the end"),
        (
            header(1, 12, True) + FETCH_FIXED + b"\x02\x02a\x02" + b"\x00" * 32 + HUGE_COMPACT,
            "topics.partitions tagged fields: 4294967295 fields",
        ),
    ],
    ids=[
        "count",
        "size",
        "short-value",
        "value-past-size",
        "long-varint",
        "wide-varint",
        "cut",
        "nested-count",
    ],
)
def test_bad_tagged_fields(frame: bytes, reason: str) -> None:
    with pytest.raises(RequestDecodeError, match=reason):
        decode_request(frame)


def test_tagged_fields_that_are_well_formed_pass() -> None:
    body = _decode(fetch_v12(b"\x01\x00\x03\x03ab"))
    assert body.cluster_id == "ab"
    # An unknown tag (a newer client's) is skipped, as Kafka skips it: the guard
    # drops it from the frame, since kio's decoder would refuse it.
    unknown = fetch_v12(b"\x01\x07\x02zz")
    assert check_body(unknown, body_start(unknown), request_type(1, 12)) == len(unknown)
    assert _decode(unknown).cluster_id is None
    # Unknown tags around a known one: the known one survives.
    mixed = fetch_v12(b"\x03\x05\x01z\x00\x03\x03ab\x09\x00")
    assert _decode(mixed).cluster_id == "ab"


@pytest.mark.parametrize(
    "frame, reason",
    [
        (struct.pack(">hhih", 3, 9, 1, -2) + b"\x00" * 8, "client_id length -2"),
        (struct.pack(">hhih", 3, 9, 1, 40) + b"abc", "client_id runs past the frame"),
        (struct.pack(">hhih", 3, 9, 1, -1) + HUGE_COMPACT + b"\x00", "tagged fields cannot fit"),
        (struct.pack(">hhih", 3, 9, 1, -1) + b"\x80" * 6, "varint longer than 5 bytes"),
        (struct.pack(">hhih", 3, 9, 1, -1) + b"\x01\x00\x09ab", "tagged field runs past"),
    ],
    ids=["client-id-negative", "client-id-long", "tag-count", "tag-varint", "tag-size"],
)
def test_bad_request_headers(frame: bytes, reason: str) -> None:
    with pytest.raises(RequestDecodeError, match=reason):
        decode_request(frame)


@pytest.mark.parametrize("api_key, version", VERSIONS)
def test_sample_requests_pass_and_match_kio(api_key: int, version: int) -> None:
    frame = sample_frame(api_key, version)[4:]
    cls = request_type(api_key, version)
    pos = body_offset(frame, peek_header(frame), bool(cls.__flexible__))
    _, size = entity_reader(cls)(frame, pos)
    assert check_body(frame, pos, cls) == pos + size == len(frame)
    assert decode_request(frame).body == sample_body(cls)


@pytest.mark.parametrize("api_key, version", VERSIONS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_valid_requests_pass(api_key: int, version: int, data: st.DataObject) -> None:
    cls = load_request_schema(api_key, version)
    body = data.draw(st.from_type(cls))
    frame = request_frame(api_key, version, body)[4:]
    pos = body_offset(frame, peek_header(frame), bool(cls.__flexible__))
    assert check_body(frame, pos, cls) == len(frame)
    assert decode_request(frame).body == body


def _nullable(hint: Any) -> bool:
    return get_origin(hint) in (UnionType, Union) and NoneType in get_args(hint)


def forbidden_nulls(entity: Any, path: str = "") -> list[str]:
    """Fields of a decoded request that hold None although the schema forbids it."""
    found = []
    for field in fields(entity):
        value = getattr(entity, field.name)
        name = path + field.name
        if value is None and not _nullable(field.type):
            found.append(name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(value, tuple) and item is None:
                found.append(name + "[]")
            elif is_dataclass(item):
                found += forbidden_nulls(item, name + ".")
    return found


_PATCHES = [HUGE_COMPACT, HUGE_INT32, b"\xff\xff\xff\xff", b"\x00", b"\x80" * 6]


def mutation_sweep(seed: int, flips: int) -> dict[str, int]:
    """Every sample frame with each patch written over and inserted at each body
    offset, plus random bit flips. Accepted frames must decode without a null the
    schema forbids, and the guard must end where kio ends."""
    import random

    rng = random.Random(seed)
    counts = {"accepted": 0, "refused": 0}
    for api_key, version in VERSIONS:
        frame = sample_frame(api_key, version)[4:]
        start = body_start(frame)
        mutants = [
            m
            for i in range(start, len(frame))
            for p in _PATCHES
            for m in (frame[:i] + p + frame[i + len(p) :], frame[:i] + p + frame[i:])
        ]
        for _ in range(flips):
            m = bytearray(frame)
            for _ in range(rng.randint(1, 3)):
                m[rng.randrange(min(start, len(m) - 1), len(m))] ^= 1 << rng.randrange(8)
            mutants.append(bytes(m))
        for m in mutants:
            try:
                request = decode_request(m)
            except RequestDecodeError:
                counts["refused"] += 1
                continue
            counts["accepted"] += 1
            assert not forbidden_nulls(request.body), (api_key, version, m.hex())
            cls = request_type(request.header.api_key, request.header.api_version)
            pos = body_offset(m, request.header, bool(cls.__flexible__))
            clean = guard_body(m, pos, cls)  # without tags unknown to the schema
            _, size = entity_reader(cls)(clean, pos)
            assert check_body(clean, pos, cls) == pos + size, (api_key, version, m.hex())
    return counts


def test_mutated_requests_in_a_subprocess() -> None:
    code = (
        "import json, test_request_guard as t; "
        "print(json.dumps(t.mutation_sweep(seed=18, flips=100)))"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, f"sweep died ({proc.returncode}): {proc.stderr[-3000:]}"
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["refused"] > 50_000 and counts["accepted"] > 10_000, counts


def test_unknown_tags_inside_a_known_tagged_struct_are_dropped() -> None:
    """Fetch v15's replica_state is a tagged struct with tags of its own: an
    unknown tag inside it changes the outer tag's size, which the guard fixes."""
    import io

    from kio.schema.fetch.v15 import request as f15
    from kio.serial import entity_reader, entity_writer

    from shoal.protocol.guard import guard_body

    cls = request_type(1, 15)
    body = f15.FetchRequest(
        cluster_id=None,
        replica_state=f15.ReplicaState(replica_id=3, replica_epoch=7),
        max_wait=datetime.timedelta(milliseconds=5),
        min_bytes=1,
        max_bytes=1000,
        isolation_level=0,
        session_id=0,
        session_epoch=-1,
        topics=(),
        forgotten_topics_data=(),
        rack_id="",
    )
    out = io.BytesIO()
    entity_writer(cls)(out, body)
    plain = out.getvalue()
    # top-level tags: count 1, tag 1, size 13, replica id (4), epoch (8), no inner tags
    assert plain[-16:-13] == b"\x01\x01\x0d" and plain[-1:] == b"\x00"
    value = plain[-13:-1]
    mutated = plain[:-16] + b"\x01\x01\x11" + value + b"\x01\x05\x02zz"
    with pytest.raises(KeyError, match="Unknown tagged field"):
        entity_reader(cls)(mutated, 0)  # kio alone refuses it
    assert guard_body(mutated, 0, cls) == plain
    decoded, _ = entity_reader(cls)(guard_body(mutated, 0, cls), 0)
    assert decoded.replica_state == f15.ReplicaState(replica_id=3, replica_epoch=7)
    # guard_body hands back the very frame when there is nothing to drop
    assert guard_body(plain, 0, cls) is plain


def test_unknown_tags_in_several_sections_are_all_dropped() -> None:
    """One in an array element's section, one in the body's: both go, in order."""
    import io

    from kio.schema.metadata.v12 import request as m12
    from kio.serial import entity_writer

    from shoal.protocol.guard import guard_body

    cls = request_type(3, 12)
    body = m12.MetadataRequest(
        topics=(m12.MetadataRequestTopic(topic_id=None, name="ab"),),
        allow_auto_topic_creation=False,
        include_topic_authorized_operations=True,
    )
    out = io.BytesIO()
    entity_writer(cls)(out, body)
    plain = out.getvalue()
    # topics: count 2 (one), topic id (16 bytes), name (3), the topic's tags (0);
    # then the two booleans and the body's tags (0)
    topic_tags = 1 + 16 + 3
    assert plain[topic_tags] == 0 and plain[-1] == 0
    mutated = (
        plain[:topic_tags]
        + b"\x01\x09\x01q"
        + plain[topic_tags + 1 : -1]
        + b"\x02\x04\x00\x06\x01z"
    )
    assert guard_body(mutated, 0, cls) == plain
