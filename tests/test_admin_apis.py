"""Admin APIs of Kafka 4 with real admin clients (kafka-python, confluent-kafka)
and raw requests for the error codes: DescribeTopicPartitions with pagination,
DescribeLogDirs sizes, AlterReplicaLogDirs refused, ElectLeaders, DescribeQuorum,
CreatePartitions assignments, reassignment onto the owner, authorized-operation
bit sets, and a request carrying a tagged field the broker does not know."""

from __future__ import annotations

import datetime
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from kafka import KafkaAdminClient
from kafka.admin import NewPartitions
from kafka.errors import InvalidReplicationAssignmentError
from kafka.structs import TopicPartition
from kio.schema.errors import ErrorCode

from harness import BrokerProcess
from shoal.protocol.batches import build_batch
from wire import RawClient, create_topic, fetch_request, produce, request_frame

NODE = 0  # the test broker's node.id
ALL_TOPIC_OPS = sum(1 << op for op in (3, 4, 5, 6, 7, 8, 10, 11))
ALL_CLUSTER_OPS = sum(1 << op for op in (5, 7, 8, 9, 10, 11, 12))
ALL_GROUP_OPS = sum(1 << op for op in (3, 6, 8))
NOT_REQUESTED = -(2**31)


@pytest.fixture(scope="module")
def kp_admin(broker: BrokerProcess) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    yield admin
    admin.close()


def new_topic(broker: BrokerProcess, partitions: int = 1, prefix: str = "adm") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    assert create_topic(broker.bootstrap, name, partitions) == ErrorCode.none
    return name


def fill(broker: BrokerProcess, topic: str, partition: int, n: int) -> int:
    """Produce n records; returns the bytes the broker serves back for them."""
    now = 1_800_000_000_000 // 2
    batch = build_batch([(now, b"k", b"v" * 100, []) for _ in range(n)])
    assert produce(broker.bootstrap, topic, batch, partition).error_code == ErrorCode.none
    with RawClient(broker.bootstrap) as c:
        resp = c.call(1, 12, fetch_request(topic, {partition: 0}))
    return len(resp.responses[0].partitions[0].records or b"")


# --------------------------------------------------------- DescribeTopicPartitions


def test_describe_topic_partitions_pages_with_a_cursor(
    broker: BrokerProcess, kp_admin: KafkaAdminClient
) -> None:
    prefix = f"dtp{uuid.uuid4().hex[:6]}"
    a = new_topic(broker, 3, prefix)
    b = new_topic(broker, 2, prefix)
    first, second = sorted([a, b])
    sizes = {a: 3, b: 2}
    seen: list[tuple[str, int]] = []
    cursor = None
    pages = 0
    while True:
        page = kp_admin.describe_topic_partitions(
            [first, second], response_partition_limit=2, cursor=cursor
        )
        pages += 1
        for t in page["topics"]:
            assert t["error_code"] == 0
            seen += [(t["name"], p["partition_index"]) for p in t["partitions"]]
            assert all(p["leader_id"] == NODE for p in t["partitions"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert pages == 3
    assert seen == [(first, i) for i in range(sizes[first])] + [
        (second, i) for i in range(sizes[second])
    ]


def test_describe_topic_partitions_unknown_and_listing(
    broker: BrokerProcess, kp_admin: KafkaAdminClient
) -> None:
    known = new_topic(broker)
    missing = f"nope-{uuid.uuid4().hex[:8]}"
    page = kp_admin.describe_topic_partitions([known, missing])
    by_name = {t["name"]: t for t in page["topics"]}
    assert by_name[missing]["error_code"] == ErrorCode.unknown_topic_or_partition.value
    assert by_name[known]["error_code"] == 0
    assert by_name[known]["topic_authorized_operations"] == ALL_TOPIC_OPS
    # nothing was auto-created
    assert missing not in kp_admin.list_topics()
    # an empty list describes every topic
    from kio.schema.describe_topic_partitions.v0 import request as dtp

    with RawClient(broker.bootstrap) as c:
        resp = c.call(
            75,
            0,
            dtp.DescribeTopicPartitionsRequest(
                topics=(), response_partition_limit=2000, cursor=None
            ),
        )
    assert known in {t.name for t in resp.topics}


def test_kafka_python_describe_topics(broker: BrokerProcess, kp_admin: KafkaAdminClient) -> None:
    topic = new_topic(broker, 2)
    (info,) = kp_admin.describe_topics([topic])
    assert info["name"] == topic
    assert sorted(p["partition_index"] for p in info["partitions"]) == [0, 1]


# --------------------------------------------------------------- log directories


def test_describe_log_dirs_sizes(broker: BrokerProcess, kp_admin: KafkaAdminClient) -> None:
    topic = new_topic(broker, 2)
    served = fill(broker, topic, 0, 20)
    (result,) = kp_admin.describe_log_dirs(topic_partitions={topic: [0, 1]})
    assert result["broker"] == NODE
    (log_dir,) = result["log_dirs"]
    assert log_dir["error_code"] == 0
    assert log_dir["log_dir"].startswith("file://")
    (t,) = [t for t in log_dir["topics"] if t["name"] == topic]
    sizes = {p["partition_index"]: p["partition_size"] for p in t["partitions"]}
    assert sizes == {0: served, 1: 0}


def test_alter_replica_log_dirs_is_refused(broker: BrokerProcess) -> None:
    topic = new_topic(broker)
    from kio.schema.alter_replica_log_dirs.v2 import request as arl

    body = arl.AlterReplicaLogDirsRequest(
        dirs=(
            arl.AlterReplicaLogDir(
                path="/elsewhere",
                topics=(arl.AlterReplicaLogDirTopic(name=topic, partitions=(0,)),),
            ),
        )
    )
    with RawClient(broker.bootstrap) as c:
        resp = c.call(34, 2, body)
    (t,) = resp.results
    assert [(p.partition_index, p.error_code) for p in t.partitions] == [
        (0, ErrorCode.log_dir_not_found)
    ]


# ----------------------------------------------------------- leaders and quorum


def test_elect_leaders(broker: BrokerProcess, kp_admin: KafkaAdminClient) -> None:
    topic = new_topic(broker, 2)
    from kio.schema.elect_leaders.v2 import request as el

    body = el.ElectLeadersRequest(
        election_type=0,
        topic_partitions=(el.TopicPartitions(topic=topic, partitions=(0, 1, 7)),),
        timeout=datetime.timedelta(seconds=5),
    )
    with RawClient(broker.bootstrap) as c:
        resp = c.call(43, 2, body)
    assert resp.error_code == ErrorCode.none
    (r,) = resp.replica_election_results
    assert [(p.partition_id, p.error_code) for p in r.partition_result] == [
        (0, ErrorCode.none),
        (1, ErrorCode.none),
        (7, ErrorCode.unknown_topic_or_partition),
    ]
    # kafka-python: preferred election of both partitions succeeds
    kp_admin.elect_leaders(0, [TopicPartition(topic, 0), TopicPartition(topic, 1)])


def test_confluent_elect_leaders(broker: BrokerProcess) -> None:
    from confluent_kafka import ElectionType
    from confluent_kafka import TopicPartition as CTp

    topic = new_topic(broker)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    result = admin.elect_leaders(ElectionType.PREFERRED, [CTp(topic, 0)]).result(timeout=15)
    assert {(tp.topic, tp.partition): err for tp, err in result.items()} == {(topic, 0): None}


def test_describe_quorum(broker: BrokerProcess, kp_admin: KafkaAdminClient) -> None:
    quorum = kp_admin.describe_metadata_quorum()
    (t,) = quorum["topics"]
    assert t["topic_name"] == "__cluster_metadata"
    (p,) = t["partitions"]
    assert p["error"] is None
    assert p["leader_id"] == NODE
    assert [v["replica_id"] for v in p["current_voters"]] == [NODE]
    assert p["observers"] == []


# -------------------------------------------------- partitions and reassignments


def test_create_partitions_checks_assignments(
    broker: BrokerProcess, kp_admin: KafkaAdminClient
) -> None:
    topic = new_topic(broker)
    for bad in ([[5]], [[NODE], [NODE]], [[NODE, NODE]]):
        with pytest.raises(InvalidReplicationAssignmentError):
            kp_admin.create_partitions({topic: NewPartitions(2, bad)})
    kp_admin.create_partitions({topic: NewPartitions(2, [[NODE]])})
    (info,) = kp_admin.describe_topics([topic])
    assert len(info["partitions"]) == 2


def test_reassignment_onto_the_owner_is_a_no_op(broker: BrokerProcess) -> None:
    topic = new_topic(broker)
    from kio.schema.alter_partition_reassignments.v0 import request as apr

    def reassign(replicas: tuple[int, ...]) -> Any:
        body = apr.AlterPartitionReassignmentsRequest(
            timeout=datetime.timedelta(seconds=5),
            topics=(
                apr.ReassignableTopic(
                    name=topic,
                    partitions=(apr.ReassignablePartition(partition_index=0, replicas=replicas),),
                ),
            ),
        )
        with RawClient(broker.bootstrap) as c:
            return c.call(45, 0, body).responses[0].partitions[0]

    assert reassign((NODE,)).error_code == ErrorCode.none
    assert reassign((5,)).error_code == ErrorCode.invalid_replica_assignment

    # v1 (KIP-860): a client that forbids a replication factor change is told so.
    from kio.schema.alter_partition_reassignments.v1 import request as apr1

    body = apr1.AlterPartitionReassignmentsRequest(
        timeout=datetime.timedelta(seconds=5),
        allow_replication_factor_change=False,
        topics=(
            apr1.ReassignableTopic(
                name=topic,
                partitions=(apr1.ReassignablePartition(partition_index=0, replicas=(NODE, 2)),),
            ),
        ),
    )
    with RawClient(broker.bootstrap) as c:
        resp = c.call(45, 1, body)
    assert resp.allow_replication_factor_change is False
    assert resp.responses[0].partitions[0].error_code == ErrorCode.invalid_replication_factor


# ------------------------------------------------------- authorized operations


def test_authorized_operations_without_an_authorizer(broker: BrokerProcess) -> None:
    topic = new_topic(broker)
    from kio.schema.describe_cluster.v1 import request as dcl
    from kio.schema.describe_groups.v5 import request as dg
    from kio.schema.metadata.v10 import request as md

    with RawClient(broker.bootstrap) as c:
        meta = c.call(
            3,
            10,
            md.MetadataRequest(
                topics=(md.MetadataRequestTopic(topic_id=uuid.UUID(int=0), name=topic),),
                allow_auto_topic_creation=False,
                include_cluster_authorized_operations=True,
                include_topic_authorized_operations=True,
            ),
        )
        plain = c.call(
            3,
            10,
            md.MetadataRequest(
                topics=(md.MetadataRequestTopic(topic_id=uuid.UUID(int=0), name=topic),),
                allow_auto_topic_creation=False,
                include_cluster_authorized_operations=False,
                include_topic_authorized_operations=False,
            ),
        )
        cluster = c.call(
            60, 1, dcl.DescribeClusterRequest(include_cluster_authorized_operations=True)
        )
        groups = c.call(
            15, 5, dg.DescribeGroupsRequest(groups=("g-any",), include_authorized_operations=True)
        )
    assert meta.topics[0].topic_authorized_operations == ALL_TOPIC_OPS
    assert meta.cluster_authorized_operations == ALL_CLUSTER_OPS
    assert plain.topics[0].topic_authorized_operations == NOT_REQUESTED
    assert cluster.cluster_authorized_operations == ALL_CLUSTER_OPS
    assert groups.groups[0].authorized_operations == ALL_GROUP_OPS


def test_authorized_operations_follow_the_acls(tmp_path: Any) -> None:
    """With an authorizer, the bits are what the ACLs allow: READ on a topic
    implies DESCRIBE, as in Kafka; a group nobody is allowed gets no bits."""
    from kio.schema.describe_groups.v5 import request as dg
    from kio.schema.metadata.v12 import request as md

    from acl_helpers import ALLOW, ANON, DENY, DESCRIBE, GROUP, LITERAL, READ, TOPIC, allow

    env = {"SHOAL_AUTHORIZER_CLASS_NAME": "shoal", "SHOAL_ALLOW_EVERYONE_IF_NO_ACL_FOUND": "true"}
    b = BrokerProcess(tmp_path / "data", env=env).start()
    try:
        topic = new_topic(b)
        allow(b.bootstrap, (TOPIC, topic, LITERAL, ANON, "*", READ, ALLOW))
        allow(b.bootstrap, (GROUP, "closed", LITERAL, ANON, "*", READ, DENY))
        allow(b.bootstrap, (GROUP, "seen", LITERAL, ANON, "*", DESCRIBE, ALLOW))
        with RawClient(b.bootstrap) as c:
            meta = c.call(
                3,
                12,
                md.MetadataRequest(
                    topics=(md.MetadataRequestTopic(topic_id=None, name=topic),),
                    allow_auto_topic_creation=False,
                    include_topic_authorized_operations=True,
                ),
            )
            groups = c.call(
                15,
                5,
                dg.DescribeGroupsRequest(
                    groups=("closed", "seen"), include_authorized_operations=True
                ),
            )
        assert meta.topics[0].topic_authorized_operations == (1 << 3) | (1 << 8)
        assert groups.groups[0].error_code == ErrorCode.group_authorization_failed
        assert groups.groups[0].authorized_operations == NOT_REQUESTED
        assert groups.groups[1].error_code == ErrorCode.none
        assert groups.groups[1].authorized_operations == 1 << 8  # DESCRIBE only
    finally:
        b.stop()


# ------------------------------------------------------------ unknown tags


def test_a_request_with_an_unknown_tagged_field_is_answered(broker: BrokerProcess) -> None:
    """A newer client may add a tagged field to a version we offer: Kafka skips
    it, and so must we (kio's decoder alone would drop the connection)."""
    from kio.schema.metadata.v12 import request as md

    topic = new_topic(broker)
    frame = request_frame(
        3,
        12,
        md.MetadataRequest(
            topics=(md.MetadataRequestTopic(topic_id=None, name=topic),),
            allow_auto_topic_creation=False,
            include_topic_authorized_operations=False,
        ),
    )
    # the body's tagged-field section is its last byte (0 fields): give it one
    # unknown tag (42) of 3 bytes
    assert frame[-1] == 0
    body = frame[4:-1] + b"\x01\x2a\x03abc"
    with RawClient(broker.bootstrap) as c:
        c.send_raw(struct.pack(">i", len(body)) + body)
        reply = c.read_frame()
        assert struct.unpack_from(">i", reply)[0] == 1
        assert topic.encode() in reply
        assert not c.is_closed(0.2)


NEW_APIS = [34, 35, 43, 55, 74, 75]


@pytest.mark.parametrize("api_key", NEW_APIS)
def test_every_version_of_the_new_apis_is_answered(broker: BrokerProcess, api_key: int) -> None:
    """A sample request (every field filled) at each offered version gets an
    answer with its correlation id, and the connection stays open."""
    from request_samples import sample_frame
    from shoal.protocol.apis import SUPPORTED

    _name, low, high = SUPPORTED[api_key]
    with RawClient(broker.bootstrap) as c:
        for version in range(low, high + 1):
            c.send_raw(sample_frame(api_key, version, correlation_id=version + 100))
            reply = c.read_frame()
            assert struct.unpack_from(">i", reply)[0] == version + 100, version
        assert not c.is_closed(0.2)


def test_confluent_reads_authorized_operations(broker: BrokerProcess) -> None:
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AclOperation

    topic = new_topic(broker)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    cluster = admin.describe_cluster(include_authorized_operations=True).result(timeout=15)
    assert AclOperation.ALTER in cluster.authorized_operations
    assert AclOperation.DESCRIBE_CONFIGS in cluster.authorized_operations
    (desc,) = admin.describe_topics(
        TopicCollection([topic]), include_authorized_operations=True
    ).values()
    ops = desc.result(timeout=15).authorized_operations
    assert {AclOperation.READ, AclOperation.WRITE, AclOperation.ALTER_CONFIGS} <= set(ops)
