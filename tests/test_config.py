"""Configuration: precedence, typed parsing, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shoal.config import BROKER_KEYS, ConfigError, load_config, validate_topic_configs


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('"num.partitions" = 3\n[log]\nretention.ms = 1000\n')
    c = load_config(f, {}, {})
    assert (c["num.partitions"], c["log.retention.ms"]) == (3, 1000)
    c = load_config(f, {"SHOAL_NUM_PARTITIONS": "4"}, {})
    assert c["num.partitions"] == 4 and c.sources["num.partitions"] == "SHOAL_NUM_PARTITIONS"
    c = load_config(f, {"SHOAL_NODE_ID": "2"}, {"node.id": 5})
    assert c["node.id"] == 5


@pytest.mark.parametrize(
    "env, named",
    [
        ({"SHOAL_NUM_PARTITIONS": "lots"}, "num.partitions"),
        ({"SHOAL_AUTO_CREATE_TOPICS_ENABLE": "maybe"}, "auto.create.topics.enable"),
        ({"SHOAL_LISTEN": "nohost"}, "listen"),
        ({"SHOAL_WAL_LINGER_MS": "-5"}, "wal.linger.ms"),
        ({"SHOAL_COMPACTION_MERGE_MIN_OBJECTS": "1"}, "compaction.merge.min.objects"),
        ({"SHOAL_COMPACTION_REWRITE_LIVE_RATIO": "1.5"}, "compaction.rewrite.live.ratio: '1.5'"),
        ({"SHOAL_COMPACTION_REWRITE_LIVE_RATIO": "half"}, "compaction.rewrite.live.ratio"),
        ({"SHOAL_GROUP_CONSUMER_ASSIGNORS": "uniform,sticky"}, "'sticky'"),
        ({"SHOAL_GROUP_CONSUMER_ASSIGNORS": " , "}, "group.consumer.assignors"),
        (
            {"SHOAL_GROUP_CONSUMER_SESSION_TIMEOUT_MS": "1000"},
            "group.consumer.session.timeout.ms: 1000 from SHOAL_GROUP_CONSUMER_SESSION_TIMEOUT_MS",
        ),
        (
            {"SHOAL_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS": "20000"},
            "group.consumer.max.heartbeat.interval.ms (15000)",
        ),
        (
            {
                "SHOAL_GROUP_CONSUMER_MIN_SESSION_TIMEOUT_MS": "100",
                "SHOAL_GROUP_CONSUMER_SESSION_TIMEOUT_MS": "1000",
                "SHOAL_GROUP_CONSUMER_MIN_HEARTBEAT_INTERVAL_MS": "100",
                "SHOAL_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS": "1000",
            },
            "below group.consumer.session.timeout.ms",
        ),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        load_config(None, env, {})


def test_unknown_key_in_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('"no.such.key" = 1\n')
    with pytest.raises(ConfigError, match=r"no\.such\.key"):
        load_config(f, {}, {})


def test_every_key_has_an_environment_name() -> None:
    names = {k.env for k in BROKER_KEYS.values()}
    assert len(names) == len(BROKER_KEYS)
    assert BROKER_KEYS["num.partitions"].env == "SHOAL_NUM_PARTITIONS"


def test_linger_default_follows_the_store(tmp_path: Path) -> None:
    assert load_config(None, {}, {"data.dir": str(tmp_path)}).wal_linger_ms == 5
    remote = load_config(None, {}, {"objects": "s3://bucket/prefix"})
    assert remote.wal_linger_ms == 50
    assert (
        load_config(None, {"SHOAL_WAL_LINGER_MS": "7"}, {"objects": "s3://b/p"}).wal_linger_ms == 7
    )


def test_s3_options_from_keys() -> None:
    c = load_config(
        None,
        {
            "SHOAL_S3_ENDPOINT": "http://minio:9000",
            "SHOAL_S3_PATH_STYLE": "true",
            "SHOAL_S3_ALLOW_HTTP": "true",
        },
        {"objects": "s3://b/p"},
    )
    assert c.object_store_options == {
        "endpoint": "http://minio:9000",
        "virtual_hosted_style_request": False,
        "client_options": {"allow_http": True},
    }
    assert load_config(None, {}, {}).object_store_options == {}


def test_topic_configs() -> None:
    assert validate_topic_configs({"min.cleanable.dirty.ratio": "0.2"}) == {
        "min.cleanable.dirty.ratio": "0.2"
    }
    for bad in (
        {"cleanup.policy": "shred"},
        {"retention.ms": "soon"},
        {"x.y": "1"},
        {"min.cleanable.dirty.ratio": "2"},
    ):
        with pytest.raises(ConfigError):
            validate_topic_configs(bad)
