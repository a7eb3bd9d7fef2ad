"""Network partitions on one machine: every broker in its own network
namespace on a private bridge, PostgreSQL and the S3 server each in a namespace
of their own (`pg`, `s3`), clients (the test process) in the root namespace.

Links are cut with policy-routing rules inside the namespaces this module
made (never in the root namespace's tables): in each of them the `local`
table lookup is moved behind a free range of rule priorities, so a
`from A to B blackhole` rule drops A's packets silently as they arrive at B.
A cut is one direction; `cut(a, b)` plus `cut(b, a)` is a full partition.
To A it looks like a real partition (no error, no reset: requests hang until
someone's timeout); iptables and netem are not needed (this kernel has
neither). A cut whose receiver is the root namespace drops at the sender's
output instead (the root namespace's rules are the machine's, not ours),
which the sender sees as EINVAL on new connections.

PostgreSQL is the test process's embedded server (Unix socket only); a small
forwarder in namespace `pg` (`python tests/netns.py forward ...`)
gives it a TCP address on the bridge. The S3 server is a moto server process
in namespace `s3`.

`unavailable()` probes whether namespaces can be made here (root, iproute2,
a kernel that allows it) and says why not, for a clean skip; `Network.close`
removes every namespace, veth, rule and the bridge, and kills the processes
left in them, even after a failed test.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cluster_harness import FAST, Cluster, new_database, postgres
from harness import BrokerProcess

_counter = itertools.count()
PG_PORT = 5432
S3_PORT = 9000
BROKER_PORT = 9092
CUT_PREF = 100  # cut rules sit here, before the `local` lookup moved to 1000
LOCAL_PREF = 1000


def _ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    return res.stdout


def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    name = f"shprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", name)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _ip("link", "add", f"{name}b", "type", "bridge")
        _ip("link", "del", f"{name}b")
        _ip("rule", "add", "pref", str(LOCAL_PREF), "lookup", "local", ns=name)
        _ip("rule", "del", "pref", "0", ns=name)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"bridges or policy routing not permitted: {exc}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


class Host:
    """One namespace on the bridge, with one address."""

    def __init__(self, net: Network, label: str, index: int) -> None:
        self.net = net
        self.label = label
        self.ns = f"{net.name}-{label}"
        self.address = f"{net.prefix}.{index}"
        self.veth = f"{net.name}v{index}"

    def exec(self, argv: list[str]) -> list[str]:
        """argv run inside this namespace (`ip netns exec` execs it, so the
        process id is the command's own)."""
        return ["ip", "netns", "exec", self.ns, *argv]


ROOT = "root"


class Network:
    """A private bridge with hosts in namespaces; the root namespace is the
    client side at `.1`."""

    def __init__(self) -> None:
        self.name = f"sh{os.getpid() % 10000}{next(_counter)}"
        self.prefix = self._free_prefix()
        self.bridge = f"{self.name}br"
        self.client_address = f"{self.prefix}.1"
        self.hosts: dict[str, Host] = {}
        self._cuts: set[tuple[str, str]] = set()
        self._index = 10

    @staticmethod
    def _free_prefix() -> str:
        used = _ip("-4", "route", "show", "table", "all")
        for _ in range(100):
            prefix = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
            if prefix + "." not in used:
                return prefix
        raise RuntimeError("no free 10.x.y.0/24 subnet")

    def start(self) -> Network:
        _ip("link", "add", self.bridge, "type", "bridge", "forward_delay", "0")
        _ip("addr", "add", f"{self.client_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def host(self, label: str) -> Host:
        h = Host(self, label, self._index)
        self._index += 1
        self.hosts[label] = h
        _ip("netns", "add", h.ns)
        peer = f"{h.veth}p"
        _ip("link", "add", h.veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", h.ns)
        _ip("link", "set", h.veth, "master", self.bridge, "up")
        _ip("addr", "add", f"{h.address}/24", "dev", peer, ns=h.ns)
        _ip("link", "set", peer, "up", ns=h.ns)
        _ip("link", "set", "lo", "up", ns=h.ns)
        _ip("rule", "add", "pref", str(LOCAL_PREF), "lookup", "local", ns=h.ns)
        _ip("rule", "del", "pref", "0", ns=h.ns)
        return h

    def _address(self, who: str) -> str:
        return self.client_address if who == ROOT else self.hosts[who].address

    def _rule(self, op: str, src: str, dst: str) -> None:
        a, b = self._address(src), self._address(dst)
        if dst == ROOT:  # drop at the sender's output: root's rules are not ours
            _ip(
                "rule",
                op,
                "pref",
                str(CUT_PREF),
                "from",
                a,
                "to",
                b,
                "blackhole",
                ns=self.hosts[src].ns,
            )
        else:  # drop silently on arrival
            _ip(
                "rule",
                op,
                "pref",
                str(CUT_PREF),
                "from",
                a,
                "to",
                b,
                "blackhole",
                ns=self.hosts[dst].ns,
            )

    def cut(self, src: str, dst: str) -> None:
        """Drop every packet from src to dst (labels, or ROOT for clients)."""
        if (src, dst) not in self._cuts:
            self._rule("add", src, dst)
            self._cuts.add((src, dst))

    def heal(self, src: str, dst: str) -> None:
        if (src, dst) in self._cuts:
            self._rule("del", src, dst)
            self._cuts.discard((src, dst))

    def partition(self, a: str, b: str) -> None:
        """Both directions."""
        self.cut(a, b)
        self.cut(b, a)

    def heal_all(self) -> None:
        for src, dst in list(self._cuts):
            self.heal(src, dst)

    @property
    def cuts(self) -> set[tuple[str, str]]:
        return set(self._cuts)

    def close(self) -> None:
        """Kill what runs in our namespaces, delete them (their veths go with
        them) and the bridge. Safe to call twice and after partial set-up."""
        for h in self.hosts.values():
            pids = subprocess.run(
                ["ip", "netns", "pids", h.ns], capture_output=True, text=True, timeout=30
            ).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", h.ns, check=False)
            _ip("link", "del", h.veth, check=False)
        self.hosts.clear()
        self._cuts.clear()
        _ip("link", "del", self.bridge, check=False)


def wait_port(address: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {address}:{port} after {timeout}s")


class Services:
    """PostgreSQL (through a forwarder) at host `pg` and a moto S3 server at
    host `s3`, so either can be cut off alone."""

    def __init__(self, net: Network, log_dir: Path) -> None:
        self.pg = net.host("pg")
        self.s3 = net.host("s3")
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> Services:
        info = postgres().get_postmaster_info()
        unix = f"{info.socket_dir}/.s.PGSQL.{info.port or PG_PORT}"
        self._spawn(
            self.pg,
            [sys.executable, __file__, "forward", f"{self.pg.address}:{PG_PORT}={unix}"],
        )
        self._spawn(
            self.s3,
            [sys.executable, "-m", "moto.server", "-H", self.s3.address, "-p", str(S3_PORT)],
        )
        wait_port(self.pg.address, PG_PORT)
        wait_port(self.s3.address, S3_PORT)
        import boto3

        boto3.client("s3", **self.s3_client_args()).create_bucket(Bucket="shoal-test")
        return self

    def _spawn(self, host: Host, argv: list[str]) -> None:
        log = open(self.log_dir / f"{host.label}.log", "ab")
        self.procs.append(subprocess.Popen(host.exec(argv), stdout=log, stderr=subprocess.STDOUT))
        log.close()

    def s3_client_args(self) -> dict[str, str]:
        return {
            "endpoint_url": f"http://{self.s3.address}:{S3_PORT}",
            "region_name": "us-east-1",
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
        }

    @property
    def s3_env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{self.s3.address}:{S3_PORT}",
            "AWS_ALLOW_HTTP": "true",
        }

    def database(self) -> str:
        """A fresh database, as the URL brokers use over the bridge."""
        from sqlalchemy import make_url

        name = make_url(new_database()).database
        return f"postgresql://postgres@{self.pg.address}:{PG_PORT}/{name}"

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


class NsBroker(BrokerProcess):
    """A broker process inside a host's namespace, listening on its address."""

    def __init__(self, host: Host, data_dir: Path, **kwargs: Any) -> None:
        super().__init__(data_dir, port=BROKER_PORT, **kwargs)
        self.host = host

    @property
    def bootstrap(self) -> str:
        return f"{self.host.address}:{self.port}"

    def command(self) -> list[str]:
        return self.host.exec(super().command())


class NetCluster(Cluster):
    """Cluster (cluster_harness) whose brokers are hosts `b1`, `b2`, ... on
    a Network, with PostgreSQL at `pg` and S3 at `s3`."""

    def __init__(
        self,
        root: Path,
        size: int = 3,
        env: dict[str, str] | None = None,
        racks: list[str] | None = None,
    ) -> None:
        self.root = root
        self.brokers: dict[int, BrokerProcess] = {}  # before anything close() may meet
        self.net = Network().start()
        try:
            self.services = Services(self.net, root).start()
            self.url = self.services.database()
            self.env = {**self.services.s3_env, **FAST, **(env or {})}
            self.objects = f"s3://shoal-test/{root.name}-{uuid.uuid4().hex[:6]}"
            self.racks = racks
            for node in range(1, size + 1):
                self.add(node, start=False)
        except BaseException:
            self.close()
            raise

    def add(self, node: int, start: bool = True) -> BrokerProcess:
        label = f"b{node}"
        host = self.net.hosts.get(label) or self.net.host(label)
        args = ["--metadata", self.url, "--objects", self.objects, "--node-id", str(node)]
        if self.racks:
            args += ["--rack", self.racks[(node - 1) % len(self.racks)]]
        b = NsBroker(host, self.root / f"node{node}", args=args, env=self.env)
        self.brokers[node] = b
        if start:
            b.start()
        return b

    def start(self) -> NetCluster:
        """Start the brokers side by side (each waits for its own ready line)."""
        with ThreadPoolExecutor(len(self.brokers)) as pool:
            for f in [pool.submit(b.start) for b in self.brokers.values()]:
                f.result()
        return self

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if hasattr(self, "services"):
                self.services.stop()
            self.net.close()


# the forwarder -------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _serve(
    client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, open_target: Callable[[], Any]
) -> None:
    try:
        target_r, target_w = await open_target()
    except OSError:
        client_w.close()
        return
    await asyncio.gather(_pipe(client_r, target_w), _pipe(target_r, client_w))


async def _forward(specs: list[str]) -> None:
    for spec in specs:
        listen, _, target = spec.partition("=")
        host, _, port = listen.rpartition(":")
        if target.startswith("/"):
            opener = functools.partial(asyncio.open_unix_connection, target)
        else:
            t_host, _, t_port = target.rpartition(":")
            opener = functools.partial(asyncio.open_connection, t_host, int(t_port))
        await asyncio.start_server(
            functools.partial(_serve, open_target=opener), host, int(port), reuse_address=True
        )
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fwd = sub.add_parser("forward", help="forward TCP listeners to a Unix socket or host:port")
    fwd.add_argument("spec", nargs="+", help="LISTEN_HOST:PORT=/unix/path or =HOST:PORT")
    args = parser.parse_args()
    asyncio.run(_forward(args.spec))


if __name__ == "__main__":
    main()
