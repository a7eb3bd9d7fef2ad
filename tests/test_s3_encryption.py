"""S3 server-side encryption (issue 10 item 7): with s3.server.side.encryption
set, every object the broker writes is stored encrypted by S3 (moto's server
reports it on HEAD), for SSE-S3 and SSE-KMS with a key id; a KMS key without
aws:kms is refused at start naming both keys."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from harness import BrokerProcess, s3_endpoint
from wire import create_topic, make_batch, produce, record


def s3_client(s3: dict[str, str]) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.mark.parametrize(
    ("sse", "key_id"),
    [("AES256", ""), ("aws:kms", "arn:aws:kms:us-east-1:123456789012:key/shoal-test")],
)
def test_objects_are_written_encrypted(tmp_path: Path, sse: str, key_id: str) -> None:
    s3 = s3_endpoint()
    prefix = f"sse-{uuid.uuid4().hex[:8]}"
    env = {**s3, "SHOAL_S3_SERVER_SIDE_ENCRYPTION": sse}
    if key_id:
        env["SHOAL_S3_SSE_KMS_KEY_ID"] = key_id
    b = BrokerProcess(
        tmp_path / "data",
        env=env,
        args=["--objects", f"s3://{s3['SHOAL_TEST_BUCKET']}/{prefix}"],
    ).start()
    try:
        create_topic(b.bootstrap, "enc")
        resp = produce(b.bootstrap, "enc", make_batch([record(b"k", b"secret", 0)]))
        assert resp.error_code == 0
        client = s3_client(s3)
        keys = [
            o["Key"]
            for o in client.list_objects_v2(Bucket=s3["SHOAL_TEST_BUCKET"], Prefix=prefix)[
                "Contents"
            ]
        ]
        wal = [k for k in keys if k.endswith(".wal")]
        assert wal, keys
        for key in wal:
            head = client.head_object(Bucket=s3["SHOAL_TEST_BUCKET"], Key=key)
            assert head["ServerSideEncryption"] == sse
            if key_id:
                assert head["SSEKMSKeyId"] == key_id
    finally:
        b.stop()


def test_kms_key_without_kms_encryption_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "serve", "--data-dir", str(tmp_path / "d")],
        env={
            "PATH": "/usr/bin:/bin",
            "SHOAL_S3_SERVER_SIDE_ENCRYPTION": "AES256",
            "SHOAL_S3_SSE_KMS_KEY_ID": "k-1",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "s3.sse.kms.key.id" in out.stderr and "aws:kms" in out.stderr
    assert "Traceback" not in out.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "shoal", "serve", "--data-dir", str(tmp_path / "d")],
        env={"PATH": "/usr/bin:/bin", "SHOAL_S3_SERVER_SIDE_ENCRYPTION": "rot13"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "s3.server.side.encryption" in bad.stderr
