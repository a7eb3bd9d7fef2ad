"""Errors an operator meets in the first hour (issue 15, items 4 and 10):
read-only commands that must not create state, secrets kept out of errors,
ports out of range, and `shoal serve &` from a script stopping on SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_harness import gateway_config, to_toml
from harness import BrokerProcess, free_port, s3_endpoint

pytestmark = pytest.mark.skipif(
    os.environ.get("SHOAL_TEST_TARGET", "shoal") != "shoal", reason="Shoal's own commands"
)


def shoal(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=timeout
    )


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert lines, out
    return lines[-1]


def test_storage_stats_on_a_wrong_data_dir_creates_nothing(tmp_path: Path) -> None:
    wrong = tmp_path / "shaol-data"
    out = shoal("storage", "stats", "--data-dir", str(wrong))
    line = one_line(out)
    assert f"no metadata database at {wrong}/meta.db" in line, line
    assert not wrong.exists()


def test_storage_stats_with_a_missing_objects_dir_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    BrokerProcess(data).start().stop()
    elsewhere = tmp_path / "objects-typo"
    out = shoal("storage", "stats", "--data-dir", str(data), "--objects", elsewhere.as_uri())
    assert f"objects directory {elsewhere} does not exist" in one_line(out)
    assert not elsewhere.exists()
    ok = shoal("storage", "stats", "--data-dir", str(data), "--format", "json")
    assert ok.returncode == 0, ok.stderr


def test_edge_check_on_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "edge-data"
    conf = tmp_path / "edge.toml"
    conf.write_text(to_toml(gateway_config(missing)))
    out = shoal("edge", "check", "--config", str(conf))
    assert out.returncode == 2
    assert f"data directory {missing} does not exist" in one_line(out)
    assert not missing.exists()
    # A directory that exists but never held a gateway: said so, left alone.
    other = tmp_path / "other"
    other.mkdir()
    conf.write_text(to_toml(gateway_config(other)))
    out = shoal("edge", "check", "--config", str(conf))
    assert out.returncode == 2
    assert "holds no local log" in one_line(out)
    assert list(other.iterdir()) == []


def test_metadata_password_is_never_printed(tmp_path: Path) -> None:
    url = f"postgresql://shoal:pa55word@127.0.0.1:{free_port()}/shoal"
    out = shoal("serve", "--listen", f"127.0.0.1:{free_port()}", "--metadata", url)
    line = one_line(out)
    assert "pa55word" not in out.stderr + out.stdout
    assert "postgresql://shoal:***@127.0.0.1" in line, line
    out = shoal("storage", "stats", "--metadata", url, "--objects", "memory:///")
    assert "pa55word" not in out.stderr + out.stdout
    assert "shoal:***@" in one_line(out)
    out = shoal(
        "serve", "--listen", f"127.0.0.1:{free_port()}", "--metadata", "mysql://u:pa55word@h/d"
    )
    assert "pa55word" not in out.stderr + out.stdout
    assert "unsupported metadata URL" in one_line(out)


def test_port_out_of_range_says_so(tmp_path: Path) -> None:
    out = shoal("serve", "--listen", "127.0.0.1:70000")
    assert out.returncode == 2
    assert "port 70000 out of range 1-65535" in one_line(out)
    conf = tmp_path / "edge.toml"
    doc = gateway_config(tmp_path / "edge-data")
    doc["admin"]["listen"] = "127.0.0.1:99999"
    conf.write_text(to_toml(doc))
    out = shoal("edge", "--config", str(conf))
    assert "admin.listen" in one_line(out) and "port 99999 out of range 1-65535" in one_line(out)


def test_serve_started_in_the_background_of_a_script_stops_on_sigint(tmp_path: Path) -> None:
    """A non-interactive shell starts background jobs with SIGINT ignored.
    A SIGINT that arrives while the broker is starting (held here at the
    schema check by a lock on schema_version) must still stop it."""
    import asyncpg

    from cluster_harness import new_database

    url = new_database()
    BrokerProcess(
        tmp_path / "first", args=["--metadata", url, "--objects", "memory:///"]
    ).start().stop()
    log = tmp_path / "serve.log"
    script = (
        f'"{sys.executable}" -m shoal serve --listen 127.0.0.1:{free_port()} '
        f'--data-dir "{tmp_path / "data"}" --metadata "{url}" --objects memory:/// '
        f'>"{log}" 2>&1 &\necho $!\nwait $!\necho exit=$?\n'
    )

    async def waiting(conn: asyncpg.Connection) -> int:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = "
                "'schema_version'::regclass"
            )
        )

    async def scenario() -> tuple[str, int | None]:
        holder = await asyncpg.connect(url)
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE schema_version IN ACCESS EXCLUSIVE MODE")
        shell = await asyncio.create_subprocess_exec(
            "sh", "-c", script, stdout=asyncio.subprocess.PIPE
        )
        assert shell.stdout is not None
        pid = int(await shell.stdout.readline())
        try:
            deadline = time.monotonic() + 30
            while not await waiting(holder):  # the broker is inside its start-up
                assert time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.05)
            os.kill(pid, signal.SIGINT)
            try:
                rest = await asyncio.wait_for(shell.stdout.read(), timeout=15)
            except TimeoutError:
                rest = b"still running 15 s after SIGINT"
            return rest.decode(), shell.returncode
        finally:
            await tx.rollback()
            await holder.close()
            # The shell reaps the broker when it exits; while the shell runs,
            # the broker's pid is still its own (at worst a zombie).
            try:
                await asyncio.wait_for(shell.wait(), timeout=2)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                await shell.wait()

    rest, _ = asyncio.run(scenario())
    assert rest.strip().startswith("exit="), (rest, log.read_text())
    assert "shoal: ready" not in log.read_text()
    assert "Traceback" not in log.read_text()
    assert "stopped by SIGINT while starting" in log.read_text()


def serve_s3(tmp_path: Path, env: dict[str, str], bucket: str) -> str:
    """`shoal serve` on an S3 store that cannot work: its one-line error."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "shoal",
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--data-dir",
            str(tmp_path / "data"),
            "--objects",
            f"s3://{bucket}/shoal",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | env,
    )
    assert out.returncode == 1
    assert "Debug source" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_s3_errors_name_the_endpoint_the_cause_and_the_fix(tmp_path: Path) -> None:
    s3 = s3_endpoint()
    endpoint = s3["AWS_ENDPOINT_URL"]
    creds = {k: v for k, v in s3.items() if k.startswith("AWS_") and k != "AWS_ALLOW_HTTP"}
    line = serve_s3(tmp_path, creds, s3["SHOAL_TEST_BUCKET"])
    assert endpoint in line and "plain-HTTP" in line, line
    assert "s3.allow.http" in line and "AWS_ALLOW_HTTP" in line, line

    closed = f"http://127.0.0.1:{free_port()}"
    line = serve_s3(tmp_path, {**s3, "AWS_ENDPOINT_URL": closed}, "shoal-test")
    assert closed in line and "connection refused" in line and "AWS_ENDPOINT_URL" in line, line

    line = serve_s3(tmp_path, s3, "no-such-bucket")
    assert "s3://no-such-bucket/shoal" in line and "bucket does not exist" in line, line


def test_cluster_status_on_an_empty_database_creates_nothing() -> None:
    import asyncpg

    from cluster_harness import new_database

    url = new_database()
    for args in (["cluster", "status"], ["cluster", "drain", "1", "--no-wait"]):
        out = shoal(*args, "--metadata", url)
        line = one_line(out)
        assert "no Shoal schema" in line and "schema_version" in line, line

    async def tables() -> list[str]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        finally:
            await conn.close()
        return [r["table_name"] for r in rows]

    assert asyncio.run(tables()) == []


@pytest.mark.parametrize(
    "command",
    [
        ["bench", "produce", "--duration", "3"],
        ["bench", "replay", "--sites", "2", "--offline", "1", "--rate", "10"],
        ["users", "list"],
    ],
)
def test_tools_print_one_error_not_librdkafka_lines(command: list[str]) -> None:
    """librdkafka logs a `%3|FAIL|` line per reconnect attempt; a tool
    against a closed port says once that it cannot reach it."""
    closed = f"127.0.0.1:{free_port()}"
    out = shoal(*command, "--bootstrap", closed, timeout=120)
    assert "|FAIL|" not in out.stderr + out.stdout
    assert f"cannot reach {closed}" in one_line(out)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
