"""Raw CreateAcls/DescribeAcls/DeleteAcls (v3) and a few checks shared by the
ACL tests: raw frames reach what admin clients refuse to send (unknown codes)."""

from __future__ import annotations

import datetime
import time
from typing import Any

from kio.schema.create_acls.v3 import request as ca
from kio.schema.delete_acls.v3 import request as da
from kio.schema.describe_acls.v3 import request as dsa
from kio.schema.errors import ErrorCode
from kio.schema.list_offsets.v7 import request as lo
from kio.schema.metadata.v12 import request as md

from wire import RawClient

# Kafka's codes: resource TOPIC 2, GROUP 3, CLUSTER 4; pattern ANY 1, MATCH 2,
# LITERAL 3, PREFIXED 4; operation ANY 1, ALL 2, READ 3, WRITE 4, CREATE 5,
# DELETE 6, ALTER 7, DESCRIBE 8; permission ANY 1, DENY 2, ALLOW 3.
TOPIC, GROUP, CLUSTER = 2, 3, 4
ANY, MATCH, LITERAL, PREFIXED = 1, 2, 3, 4
ALL, READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE = 2, 3, 4, 5, 6, 7, 8
DENY, ALLOW = 2, 3
ANON = "User:ANONYMOUS"


def create_acls(bootstrap: str, *acls: tuple[Any, ...]) -> list[tuple[ErrorCode, str | None]]:
    """Each acl: (resource_type, name, pattern, principal, host, operation, permission)."""
    body = ca.CreateAclsRequest(
        creations=tuple(
            ca.AclCreation(
                resource_type=a[0],
                resource_name=a[1],
                resource_pattern_type=a[2],
                principal=a[3],
                host=a[4],
                operation=a[5],
                permission_type=a[6],
            )
            for a in acls
        )
    )
    with RawClient(bootstrap) as c:
        resp = c.call(30, 3, body)
    return [(ErrorCode(r.error_code), r.error_message) for r in resp.results]


def allow(bootstrap: str, *acls: tuple[Any, ...]) -> None:
    results = create_acls(bootstrap, *acls)
    assert all(code == ErrorCode.none for code, _ in results), results


def describe_acls(
    bootstrap: str,
    resource_type: int = ANY,
    name: str | None = None,
    pattern: int = ANY,
    principal: str | None = None,
) -> Any:
    body = dsa.DescribeAclsRequest(
        resource_type_filter=resource_type,
        resource_name_filter=name,
        pattern_type_filter=pattern,
        principal_filter=principal,
        host_filter=None,
        operation=ANY,
        permission_type=ANY,
    )
    with RawClient(bootstrap) as c:
        return c.call(29, 3, body)


def delete_acls(bootstrap: str, *filters: tuple[Any, ...]) -> Any:
    """Each filter: (resource_type, name, pattern, principal, host, operation, permission)."""
    body = da.DeleteAclsRequest(
        filters=tuple(
            da.DeleteAclsFilter(
                resource_type_filter=f[0],
                resource_name_filter=f[1],
                pattern_type_filter=f[2],
                principal_filter=f[3],
                host_filter=f[4],
                operation=f[5],
                permission_type=f[6],
            )
            for f in filters
        )
    )
    with RawClient(bootstrap) as c:
        return c.call(31, 3, body)


def metadata(bootstrap: str, topics: list[str] | None, auto_create: bool = False) -> Any:
    body = md.MetadataRequest(
        topics=None
        if topics is None
        else tuple(md.MetadataRequestTopic(name=t, topic_id=None) for t in topics),
        allow_auto_topic_creation=auto_create,
        include_topic_authorized_operations=False,
    )
    with RawClient(bootstrap) as c:
        return c.call(3, 12, body)


def topic_errors(bootstrap: str, topics: list[str] | None) -> dict[str, ErrorCode]:
    return {t.name: ErrorCode(t.error_code) for t in metadata(bootstrap, topics).topics}


def end_offset(bootstrap: str, topic: str, partition: int = 0) -> int:
    """The partition's end (ListOffsets latest)."""
    body = lo.ListOffsetsRequest(
        replica_id=-1,
        isolation_level=0,
        topics=(
            lo.ListOffsetsTopic(
                name=topic,
                partitions=(
                    lo.ListOffsetsPartition(
                        partition_index=partition, current_leader_epoch=-1, timestamp=-1
                    ),
                ),
            ),
        ),
    )
    with RawClient(bootstrap) as c:
        part = c.call(2, 7, body).topics[0].partitions[0]
    assert ErrorCode(part.error_code) == ErrorCode.none, part
    return int(part.offset)


def wait_until(pred: Any, timeout: float, what: str) -> float:
    """Poll `pred` until true; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout}s")


TIMEOUT = datetime.timedelta(seconds=10)
