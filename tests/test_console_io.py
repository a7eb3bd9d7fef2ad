"""`shoal produce` and `shoal consume` against a real broker: what one writes the
other reads back, from the offsets, times and groups asked for; bad input is one
line. Also `shoal bench` with a bad client setting (a one-line error)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from harness import BrokerProcess, free_port
from shoal.cli import cli

TIMEOUT = 30.0
BASE_MS = 1_700_000_000_000


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    b = BrokerProcess(
        tmp_path_factory.mktemp("console-io") / "data",
        env={"SHOAL_GROUP_INITIAL_REBALANCE_DELAY_MS": "0"},
    ).start()
    yield b.bootstrap
    b.stop()


def new_topic(bootstrap: str, partitions: int = 1) -> str:
    name = f"io-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions)])[name].result(TIMEOUT)
    return name


def shoal(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), input=input)


def ok(*args: str, input: str | None = None) -> str:
    result = shoal(*args, input=input)
    assert result.exit_code == 0, result.output
    return result.stdout


def fails(*args: str, input: str | None = None) -> str:
    result = shoal(*args, input=input)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return result.output


def consume(bootstrap: str, topic: str, *args: str) -> str:
    return ok("consume", topic, "--bootstrap", bootstrap, *args)


def test_produce_lines_with_keys_and_headers(bootstrap: str) -> None:
    topic = new_topic(bootstrap)
    result = shoal(
        "produce", topic, "-K", ":", "-H", "site=a", "-H", "v=1", "--bootstrap", bootstrap,
        input="k1:hello\nk2:wor:ld\n:no key\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "produced 3 record(s)" in result.stderr
    out = consume(bootstrap, topic, "--offset", "beginning", "-e", "--format", "%o %k=%s %h\\n")
    assert out == "0 k1=hello site=a,v=1\n1 k2=wor:ld site=a,v=1\n2 =no key site=a,v=1\n"
    lines = consume(bootstrap, topic, "--offset", "beginning", "-e", "--format", "json")
    first = json.loads(lines.splitlines()[0])
    assert first["topic"] == topic and first["partition"] == 0 and first["offset"] == 0
    assert first["key"] == "k1" and first["value"] == "hello"
    assert first["headers"] == [["site", "a"], ["v", "1"]]
    assert isinstance(first["timestamp"], int)
    # kcat's length placeholders: -1 for a null key.
    ok("produce", topic, "--value", "abc", "--bootstrap", bootstrap)
    assert consume(bootstrap, topic, "--offset", "3", "-e", "--format", "%K %S %t %p\\n") == (
        f"-1 3 {topic} 0\n"
    )


def test_values_partition_and_offsets(bootstrap: str) -> None:
    topic = new_topic(bootstrap, partitions=2)
    values = [f"v{i}" for i in range(5)]
    args = [a for v in values for a in ("--value", v)]
    ok("produce", topic, *args, "--partition", "1", "--key", "k", "--bootstrap", bootstrap)
    fmt = ("--format", "%p:%o:%k:%s\\n")
    assert consume(bootstrap, topic, "--partition", "0", "--offset", "beginning", "-e") == ""
    out = consume(bootstrap, topic, "--offset", "beginning", "-e", *fmt)
    assert out.splitlines() == [f"1:{i}:k:v{i}" for i in range(5)]
    assert consume(bootstrap, topic, "--partition", "1", "--offset", "3", "-e") == "v3\nv4\n"
    assert consume(bootstrap, topic, "--partition", "1", "--offset", "-2", "-e") == "v3\nv4\n"
    assert consume(bootstrap, topic, "--offset", "end", "-e") == ""
    assert consume(bootstrap, topic, "--offset", "beginning", "--count", "2") == "v0\nv1\n"


def test_consume_from_timestamp(bootstrap: str) -> None:
    topic = new_topic(bootstrap)
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(6):
        p.produce(topic, value=f"r{i}".encode(), timestamp=BASE_MS + i * 1000)
    assert p.flush(TIMEOUT) == 0
    assert consume(bootstrap, topic, "--timestamp", str(BASE_MS + 3500), "-e") == "r4\nr5\n"
    iso = "2023-11-14T22:13:24+00:00"  # BASE_MS + 4 s
    assert consume(bootstrap, topic, "--timestamp", iso, "-e", "--format", "%T %s\\n") == (
        f"{BASE_MS + 4000} r4\n{BASE_MS + 5000} r5\n"
    )
    assert consume(bootstrap, topic, "--timestamp", "2099-01-01T00:00:00Z", "-e") == ""


def test_consume_as_a_group_resumes(bootstrap: str) -> None:
    topic = new_topic(bootstrap)
    ok("produce", topic, "--bootstrap", bootstrap, input="".join(f"m{i}\n" for i in range(6)))
    group = f"g-{uuid.uuid4().hex[:8]}"
    assert consume(bootstrap, topic, "--group", group, "--offset", "beginning", "--count", "4") == (
        "m0\nm1\nm2\nm3\n"
    )
    # The group committed its position: the next run goes on from there.
    assert consume(bootstrap, topic, "--group", group, "-e") == "m4\nm5\n"
    info = json.loads(ok("groups", "describe", group, "--bootstrap", bootstrap, "--format", "json"))
    assert [(p["committed"], p["lag"]) for p in info["partitions"]] == [(6, 0)]


def test_bad_input(bootstrap: str) -> None:
    topic = new_topic(bootstrap, partitions=2)
    missing = f"nope-{uuid.uuid4().hex[:6]}"
    b = ("--bootstrap", bootstrap)
    cases: list[tuple[tuple[str, ...], str | None, str]] = [
        (("produce", missing, "--value", "x"), None, f"unknown topic '{missing}'"),
        (("consume", missing, "-e"), None, f"unknown topic '{missing}'"),
        (("produce", topic, "--value", "x", "--partition", "7"), None, "has no partition 7"),
        (("consume", topic, "--partition", "2"), None, "has no partition 2"),
        (("consume", topic, "--offset", "start"), None, "expected beginning, end, N or -N"),
        (("consume", topic, "--timestamp", "noon"), None, "ISO 8601"),
        (("consume", topic, "--offset", "1", "--timestamp", "5"), None, "not both"),
        (("consume", topic, "--group", "g", "--partition", "0"), None, "--partition needs no"),
        (("produce", topic, "-K", ":"), "a:1\nno separator\n", "line 2 has no key separator"),
        (("produce", topic, "-K", ":", "--key", "k", "--value", "v"), None, "not both"),
        (("produce", topic, "-H", "novalue", "--value", "v"), None, "expected key=value"),
        (("produce", topic, "--value", "x", "-X", "foo.bar=1"), None, "No such configuration"),
    ]
    for args, stdin, message in cases:
        out = fails(*args, *b, input=stdin)
        assert message in out, (args, out)
    assert (
        missing
        not in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=TIMEOUT).topics
    )


def test_closed_port() -> None:
    address = f"127.0.0.1:{free_port()}"
    for args in (("produce", "t", "--value", "x"), ("consume", "t", "-e")):
        result = shoal(*args, "--bootstrap", address, "--timeout", "10")
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1, result.output
        assert f"cannot reach {address}" in result.output


def test_bad_client_setting_is_one_line() -> None:
    """Every command taking -X has librdkafka check it before anything runs."""
    address = f"127.0.0.1:{free_port()}"
    for command in (
        ("bench", "produce"),
        ("bench", "e2e"),
        ("bench", "replay"),
        ("scorecard",),
        ("groups", "list"),
        ("topics", "list"),
        ("consume", "t"),
    ):
        result = shoal(*command, "-X", "foo.bar=1", "--bootstrap", address)
        assert result.exit_code == 2, (command, result.output)  # a usage error
        assert "Traceback" not in result.output
        error = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert error == [
            "Error: Invalid value for '-X': No such configuration property: \"foo.bar\""
        ], command


def test_bad_bootstrap_is_refused_before_connecting() -> None:
    """librdkafka would wrap port 99999 round to another port and try that."""
    for command in (("bench", "produce"), ("scorecard",), ("groups", "list"), ("consume", "t")):
        for address, bad in (
            ("127.0.0.1:99999", "127.0.0.1:99999"),
            ("127.0.0.1:1,host:x", "host:x"),
            ("", ""),
        ):
            result = shoal(*command, "--bootstrap", address)
            assert result.exit_code == 2, (command, result.output)
            assert f"port in 1-65535, got {bad!r}" in result.output, result.output
