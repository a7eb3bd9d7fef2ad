"""Issue 10's security results, one run: TLS against plaintext throughput, and
a reconnect storm of 1,000 sites over SASL_SSL with SCRAM-SHA-512.

    .venv/bin/python bench/security_bench.py [--rounds 3] [--sites 1000]
        [--concurrency 100] [--duration 10] [--json FILE]
        [--rdkafka-performance PATH [--rdkafka-count 500000]] [--pin]
        [--storm-only] [--no-verify] [--key ec|rsa|both] [--generator c|python]
        [--ssl-engines loop,threaded]

Starts one broker (PLAINTEXT, SSL and SASL_SSL listeners, certificates from
trustme: ECDSA P-256 keys, or RSA 2048 with --key rsa; --key both starts one
broker of each and storms both in every round, for an A/B in the same
minutes) with users plant-0 ... plant-N (SCRAM-SHA-512, 4096 iterations),
then for each round:

1. `shoal bench produce` then `shoal bench consume` (1 KiB records, 6
   partitions, acks=all) over PLAINTEXT, then the same over SSL
   (`-X security.protocol=SSL -X ssl.ca.location=...`): MB/s each;
2. the storm: every site opens one new connection — TCP, TLS handshake,
   SaslHandshake, the two SCRAM-SHA-512 round trips, then a Metadata request
   (proof the session works) — `concurrency` at a time; new authenticated
   connections per second = sites / wall time, and the broker's and the load
   generator's CPU per login. The generator is bench/storm_gen.c (built here
   with `cc` at run time: threads with blocking sockets, the same request
   bytes) unless `--generator python` or it does not build: then one asyncio
   process, `_site` below, which costs more CPU per login than the broker.

`--ssl-engines loop,threaded` starts one broker per `ssl.engine` (same
certificate type) and runs the rdkafka_performance produce pair (plaintext,
then SSL) against each in every round, alternating which goes first, for an
A/B in the same minutes (the storm runs against each too); each broker's CPU
per GB is reported whole and for its event loop's thread alone (the threaded
engine's workers are the rest).

Each site's salted password is computed before the storm, from the salt the
store holds (a real site computes its own, on its own device): otherwise one
load generator would pay 1,000 PBKDF2s and measure itself. The server does
no PBKDF2 per login (it keeps the stored and server keys), as in Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import resource
import secrets
import shutil
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness import cpu_seconds
from security_helpers import Certs, SecureBroker, make_certs
from shoal.protocol.headers import read_uvarint

PASSWORD = "site-password"
MECH = "SCRAM-SHA-512"


def make_sites(names: list[str]) -> tuple[dict[str, bytes], list[tuple[str, Any]]]:
    """SCRAM-SHA-512 credentials for every site, and each site's salted
    password (what the site's own client derives)."""
    from shoal.security.scram import from_salted_password, salted_password

    salted: dict[str, bytes] = {}
    creds = []
    for name in names:
        salt = secrets.token_bytes(32)
        sp = salted_password(MECH, PASSWORD, salt, 4096)
        salted[name] = sp
        creds.append((name, from_salted_password(MECH, salt, sp, 4096)))
    return salted, creds


def store_sites(metadata_url: str, creds: list[tuple[str, Any]]) -> None:
    from shoal.meta.security import SecurityStore
    from shoal.meta.store import MetaStore

    async def go() -> None:
        meta = await MetaStore.open(metadata_url)
        try:
            await SecurityStore(meta).alter(creds, [])
        finally:
            await meta.close()

    asyncio.run(go())


def _client_final(bare: str, server_first: str, salted: bytes) -> str:
    fields = dict(kv.split("=", 1) for kv in server_first.split(","))
    client_key = hmac.new(salted, b"Client Key", "sha512").digest()
    stored_key = hashlib.sha512(client_key).digest()
    without_proof = f"c=biws,r={fields['r']}"
    auth = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth, "sha512").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    return f"{without_proof},p={base64.b64encode(proof).decode()}"


def _frame(api_key: int, version: int, cid: int, body: bytes, flexible: bool) -> bytes:
    """A request frame: header v1 (v2 with its empty tag buffer) and body."""
    client = b"storm"
    header = struct.pack(">hhih", api_key, version, cid, len(client)) + client
    if flexible:
        header += b"\x00"
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


_HANDSHAKE = _frame(17, 1, 1, struct.pack(">h", len(MECH)) + MECH.encode(), False)
# Metadata v12: no topics, no auto-creation, no authorized operations.
_METADATA = _frame(3, 12, 4, b"\x01\x00\x00\x00", True)


async def _answer(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack(">i", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def _authenticate_frame(cid: int, message: bytes) -> bytes:
    """SaslAuthenticate v2 (flexible): compact bytes, empty tag buffer."""
    n = len(message) + 1  # compact bytes: unsigned varint of length + 1
    assert n < 1 << 14
    size = bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7])
    return _frame(36, 2, cid, size + message + b"\x00", True)


async def _authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cid: int, message: bytes
) -> bytes:
    """SaslAuthenticate v2: the server's bytes, or AssertionError with the
    broker's error."""
    writer.write(_authenticate_frame(cid, message))
    resp = await _answer(reader)
    pos = 5  # correlation id, empty response-header tags
    error = struct.unpack_from(">h", resp, pos)[0]
    n, pos = read_uvarint(resp, pos + 2)  # error message (compact nullable string)
    text = resp[pos : pos + n - 1].decode() if n else ""
    pos += max(n - 1, 0)
    assert error == 0, f"SaslAuthenticate error {error}: {text}"
    n, pos = read_uvarint(resp, pos)
    return resp[pos : pos + n - 1]


async def _site(port: int, ctx: ssl.SSLContext, name: str, salted: bytes) -> None:
    """One site's login: TLS, SaslHandshake v1, the two SCRAM round trips,
    then Metadata v12 as proof the session works. Frames are built and
    answers read by hand, so the load generator costs as little as it can
    next to the broker it measures (kio's codecs cost more than the SCRAM
    exchange itself)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        writer.write(_HANDSHAKE)
        hs = await _answer(reader)
        assert hs[4:6] == b"\x00\x00", f"SaslHandshake error {hs[4:6].hex()}"
        bare = f"n={name},r={secrets.token_urlsafe(18)}"
        first = await _authenticate(reader, writer, 2, f"n,,{bare}".encode())
        msg = _client_final(bare, first.decode(), salted)
        await _authenticate(reader, writer, 3, msg.encode())
        writer.write(_METADATA)
        md = await _answer(reader)
        brokers, _ = read_uvarint(md, 9)  # after correlation id, tags, throttle time
        assert brokers > 1, "no brokers in the authenticated Metadata answer"
    finally:
        writer.close()


async def storm(
    port: int, ctx: ssl.SSLContext, salted: dict[str, bytes], concurrency: int
) -> float:
    """Seconds for every site to log in once, `concurrency` at a time."""
    sites = list(salted.items())
    sem = asyncio.Semaphore(concurrency)

    async def one(name: str, sp: bytes) -> None:
        async with sem:
            await _site(port, ctx, name, sp)

    start = time.monotonic()
    await asyncio.gather(*(one(n, sp) for n, sp in sites))
    return time.monotonic() - start


C_GENERATOR = Path(__file__).resolve().parent / "storm_gen.c"


def build_c_generator(directory: Path) -> tuple[Path | None, str]:
    """Compile bench/storm_gen.c into `directory`: (the binary, "") or (None,
    why not) when cc or OpenSSL's headers are missing."""
    cc = shutil.which("cc")
    if cc is None:
        return None, "no C compiler (cc) on PATH"
    binary = directory / "storm_gen"
    cmd = [cc, "-O2", "-o", str(binary), str(C_GENERATOR), "-lssl", "-lcrypto", "-lpthread"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return None, f"cc failed (OpenSSL 3 headers and libraries needed): {done.stderr[-500:]}"
    return binary, ""


def write_sites(path: Path, salted: dict[str, bytes]) -> Path:
    """The C generator's input: one site a line, name and hex salted password."""
    path.write_text("".join(f"{name} {sp.hex()}\n" for name, sp in salted.items()))
    return path


def c_storm(
    binary: Path,
    port: int,
    sites_file: Path,
    concurrency: int,
    ca_file: Path | None,
    pin: bool = False,
) -> dict[str, Any]:
    """One storm by the C generator: its JSON (logins, failures, seconds,
    first_error) plus cpu_seconds, the generator's user + system time from the
    kernel's accounting of the child (wait4), read after it exits."""
    cmd = [str(binary), "--port", str(port), "--sites", str(sites_file)]
    cmd += ["--concurrency", str(concurrency)]
    if ca_file is not None:
        cmd += ["--ca", str(ca_file)]
    pin_cpu = (lambda: os.sched_setaffinity(0, {1})) if pin else None
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pin_cpu
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"storm_gen exited with {proc.returncode}: {err.strip()}")
    result: dict[str, Any] = json.loads(out)
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return result


def shoal_bench(kind: str, bootstrap: str, args: list[str], tls: list[str]) -> float:
    """MB/s of one `shoal bench produce|consume` run."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, "-m", "shoal", "bench", kind, "--bootstrap", bootstrap]
        cmd += [*args, *tls, "--quiet", "--json", out.name]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
        data = json.loads(Path(out.name).read_text())
    stats = data["produce"] if kind == "produce" else data["consume"]
    assert kind != "produce" or stats["errors"] == 0, stats
    return float(stats["throughput"]["mb_per_s"])


def rdkafka_performance(
    binary: str,
    bootstrap: str,
    topic: str,
    count: int,
    tls: list[str],
    idempotent: bool = True,
    size: int = 1024,
    partition: int | None = None,
) -> tuple[float, float]:
    """MB/s of librdkafka's own C producer (rdkafka_performance -P, `size`-byte
    records, acks=all, linger.ms=5), and its CPU seconds (user + system, from
    the kernel's accounting of the child): on two shared cores the client's
    own TLS work competes with the broker's, so its cost is part of the
    answer. With `partition`, every record goes to that partition; without,
    the partitioner spreads them over as many as the topic has, which is
    the broker's default for a topic created on first use."""
    cmd = [binary, "-P", "-t", topic, "-b", bootstrap, "-s", str(size), "-c", str(count)]
    if partition is not None:
        cmd += ["-p", str(partition)]
    cmd += ["-a", "-1"]
    cmd += ["-X", "linger.ms=5", "-X", f"enable.idempotence={str(idempotent).lower()}"]
    for i in range(0, len(tls), 2):  # -X k=v pairs, as shoal bench takes them
        cmd += ["-X", tls[i + 1]]
    cpu_before = _children_cpu()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    cpu = _children_cpu() - cpu_before  # run() reaped it: counted in RUSAGE_CHILDREN
    last = [line for line in out.stderr.splitlines() + out.stdout.splitlines() if "MB/s" in line]
    if not last or f"{count} delivered" not in last[-1]:
        raise SystemExit(f"rdkafka_performance did not deliver everything: {last[-1:]}")
    return float(last[-1].rsplit(" MB/s", 1)[0].rsplit(" ", 1)[1]), cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a process with its children (harness.py),
    or of one of its threads (Linux /proc; a process's first thread, its
    event loop, has the process's id)."""
    if thread is None:
        return cpu_seconds(pid)
    fields = Path(f"/proc/{pid}/task/{thread}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def run_storm(
    broker: SecureBroker,
    certs: Certs,
    salted: dict[str, bytes],
    a: argparse.Namespace,
    generator: Path | None,
    sites_file: Path,
) -> tuple[float, float, float]:
    """One storm, by the C generator `generator` or (None) this process:
    (logins per second, broker CPU ms per login, the load generator's CPU ms
    per login). With a.pin the broker runs on CPU 0, the generator on CPU 1."""
    assert broker.proc is not None
    port = broker.ports["SASL_SSL"]
    if a.pin:
        os.sched_setaffinity(broker.proc.pid, {0})
    cpu0, own0 = _cpu_seconds(broker.proc.pid), _cpu_seconds(os.getpid())
    n = len(salted)
    if generator is not None:
        ca = None if a.no_verify else certs.ca_file
        res = c_storm(generator, port, sites_file, a.concurrency, ca, a.pin)
        if res["failures"]:
            raise SystemExit(f"storm: {res['failures']} failed logins, first: {res['first_error']}")
        secs, own_ms = res["seconds"], res["cpu_seconds"] * 1000 / n
    else:
        if a.pin:
            os.sched_setaffinity(0, {1})
        ctx = client_context(certs, not a.no_verify)
        secs = uvloop.run(storm(port, ctx, salted, a.concurrency))
        own_ms = (_cpu_seconds(os.getpid()) - own0) * 1000 / n
    cpu_ms = (_cpu_seconds(broker.proc.pid) - cpu0) * 1000 / n
    if a.pin:
        every = set(range(os.cpu_count() or 1))
        os.sched_setaffinity(broker.proc.pid, every)
        os.sched_setaffinity(0, every)
    return n / secs, cpu_ms, own_ms


def client_context(certs: Certs, verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca_file))
    if not verify:
        # Each real site checks the broker's certificate on its own CPU; the
        # broker's side of the handshake is the same either way.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per produce run")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument(
        "--rdkafka-performance",
        metavar="PATH",
        help="also produce with librdkafka's rdkafka_performance (built from librdkafka's "
        "examples/), with the broker's CPU seconds per GB",
    )
    ap.add_argument("--rdkafka-count", type=int, default=500_000, help="records per run")
    ap.add_argument("--storm-only", action="store_true", help="skip the throughput runs")
    ap.add_argument(
        "--ssl-engines",
        default="loop",
        help="ssl.engine of the broker(s), comma-separated: with two (loop,threaded) one "
        "broker each, the rdkafka_performance pair against each in every round",
    )
    ap.add_argument(
        "--key",
        choices=("ec", "rsa", "both"),
        default="ec",
        help="the broker's certificate key: ECDSA P-256 (default), RSA 2048, or both: one "
        "broker each, the storm against each in every round (alternating which goes first); "
        "the throughput runs use the first",
    )
    ap.add_argument(
        "--no-verify",
        action="store_true",
        help="the storm's generator does not check the broker's certificate (its own cost, "
        "not the broker's)",
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="storm with the broker on CPU 0 and the load generator on CPU 1 (Linux), "
        "so the two do not take turns on one core",
    )
    ap.add_argument(
        "--generator",
        choices=("c", "python"),
        help="the storm's load generator: bench/storm_gen.c compiled with cc (the default "
        "when it compiles) or this Python process (the default otherwise)",
    )
    a = ap.parse_args()
    key_types = ["ec", "rsa"] if a.key == "both" else [a.key]
    engines = [e.strip() for e in a.ssl_engines.split(",") if e.strip()]
    if not engines or any(e not in ("loop", "threaded") for e in engines):
        raise SystemExit(f"--ssl-engines: {a.ssl_engines!r}: loop, threaded or both")

    with tempfile.TemporaryDirectory(prefix="security-bench-") as tmp:
        t0 = time.monotonic()
        generator: Path | None = None
        if a.generator != "python":
            generator, why = build_c_generator(Path(tmp))
            if generator is None and a.generator == "c":
                raise SystemExit(f"--generator c: {why}")
            if generator is None:
                print(f"storm generator: Python ({why})", flush=True)
        a.generator = "c" if generator is not None else "python"
        salted, creds = make_sites([f"plant-{i}" for i in range(a.sites)])
        sites_file = write_sites(Path(tmp) / "sites.txt", salted)
        brokers: dict[str, tuple[SecureBroker, Certs]] = {}
        by_engine: dict[str, SecureBroker] = {}
        try:
            for kt in key_types:
                certs = make_certs(Path(tmp) / f"certs-{kt}", kt)
                keys = {
                    "ssl.keystore.location": str(certs.server_keystore),
                    "ssl.truststore.location": str(certs.ca_file),
                    "sasl.enabled.mechanisms": MECH,
                    "max.connections.per.ip": 100_000,
                    "ssl.engine": engines[0],
                    # The plaintext and TLS runs share a broker for every
                    # round: compaction catching up on one run's gigabytes
                    # would land on whichever run came next. It rewrites
                    # every byte once whatever the listener (BENCHMARKS).
                    "compaction.interval.ms": 3_600_000,
                }
                broker = SecureBroker(
                    Path(tmp) / f"data-{kt}", keys, ("PLAINTEXT", "SSL", "SASL_SSL")
                )
                brokers[kt] = (broker, certs)
                broker.start()
                store_sites(broker.metadata_url, creds)
                if kt == key_types[0]:
                    by_engine[engines[0]] = broker
                    for engine in engines[1:]:
                        other = SecureBroker(
                            Path(tmp) / f"data-{kt}-{engine}",
                            {**keys, "ssl.engine": engine},
                            ("PLAINTEXT", "SSL", "SASL_SSL"),
                        )
                        by_engine[engine] = other
                        brokers[f"{kt}-{engine}"] = (other, certs)  # stormed too
                        other.start()
                        store_sites(other.metadata_url, creds)
            print(
                f"{a.sites} SCRAM-SHA-512 users stored in {time.monotonic() - t0:.1f} s "
                f"({', '.join(key_types)} certificates)",
                flush=True,
            )
            res = _rounds(a, brokers, by_engine, salted, generator, sites_file)
        finally:
            for broker, _ in brokers.values():
                broker.stop()

    out = {k: _summary(v) for k, v in res.items() if v}
    if not a.storm_only:
        out["produce_ratio_median"] = {
            "value": out["produce_ssl"]["median"] / out["produce_plain"]["median"]
        }
        out["consume_ratio_median"] = {
            "value": out["consume_ssl"]["median"] / out["consume_plain"]["median"]
        }
    if a.rdkafka_performance:
        for engine in engines:
            sfx = "" if len(engines) == 1 else f"_{engine}"
            out[f"rdk_produce_ratio_median{sfx}"] = {
                "value": out[f"rdk_produce_ssl{sfx}"]["median"]
                / out[f"rdk_produce_plain{sfx}"]["median"]
            }
    rounds = {k: v for k, v in res.items() if v}
    text = json.dumps({"generator": a.generator, "rounds": rounds, "summary": out}, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text)


def _rdkafka_pair(
    a: argparse.Namespace,
    broker: SecureBroker,
    engine: str,
    tls: list[str],
    r: int,
    res: dict[str, list[float]],
) -> None:
    """rdkafka_performance over PLAINTEXT then SSL against one broker: MB/s,
    the broker's CPU per GB and its event loop thread's."""
    assert broker.proc is not None
    pid = broker.proc.pid
    sfx = f"_{engine}" if engine else ""
    for name, listener, extra in (("plain", "PLAINTEXT", []), ("ssl", "SSL", tls)):
        topic = f"sec-rdk-{name}-{r}-{os.urandom(2).hex()}"
        cpu0, loop0 = _cpu_seconds(pid), _cpu_seconds(pid, pid)
        mbs, client_s = rdkafka_performance(
            a.rdkafka_performance, broker.address(listener), topic, a.rdkafka_count, extra
        )
        gb = a.rdkafka_count * 1024 / 1e9
        cpu, loop_cpu = (_cpu_seconds(pid) - cpu0) / gb, (_cpu_seconds(pid, pid) - loop0) / gb
        res[f"rdk_produce_{name}{sfx}"].append(mbs)
        res[f"rdk_produce_{name}{sfx}_broker_cpu_s_per_gb"].append(cpu)
        res[f"rdk_produce_{name}{sfx}_loop_thread_cpu_s_per_gb"].append(loop_cpu)
        res[f"rdk_produce_{name}{sfx}_client_cpu_s_per_gb"].append(client_s / gb)
        print(
            f"round {r + 1}: rdkafka_performance {name}{' ' + engine if engine else ''}: "
            f"{mbs:.1f} MB/s, broker {cpu:.2f} CPU s/GB (event loop thread {loop_cpu:.2f}), "
            f"client {client_s / gb:.2f} CPU s/GB, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )


def _rounds(
    a: argparse.Namespace,
    brokers: dict[str, tuple[SecureBroker, Certs]],
    by_engine: dict[str, SecureBroker],
    salted: dict[str, bytes],
    generator: Path | None,
    sites_file: Path,
) -> dict[str, list[float]]:
    """Every round: the throughput runs on the first broker, then the storm
    against each."""
    broker, certs = next(iter(brokers.values()))
    tls = ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={certs.ca_file}"]
    res: dict[str, list[float]] = {
        k: [] for k in ("produce_plain", "produce_ssl", "consume_plain", "consume_ssl")
    }
    engines = list(by_engine)
    if a.rdkafka_performance:
        for engine in engines:
            sfx = "" if len(engines) == 1 else f"_{engine}"
            for k in ("rdk_produce_plain", "rdk_produce_ssl"):
                res[k + sfx] = []
                res[k + sfx + "_broker_cpu_s_per_gb"] = []
                res[k + sfx + "_loop_thread_cpu_s_per_gb"] = []
                res[k + sfx + "_client_cpu_s_per_gb"] = []
    for kt in brokers:
        for k in ("storm_per_s", "storm_broker_cpu_ms_per_login", "storm_client_cpu_ms_per_login"):
            res[f"{k}_{kt}"] = []
    res["load_average_1min"] = []
    for r in range(a.rounds):
        for name, listener, extra in (("plain", "PLAINTEXT", []), ("ssl", "SSL", tls)):
            if a.storm_only:
                break
            topic = f"sec-bench-{name}-{r}-{os.urandom(2).hex()}"
            boot = broker.address(listener)
            produce = ["--topic", topic, "--duration", str(a.duration)]
            res[f"produce_{name}"].append(shoal_bench("produce", boot, produce, extra))
            consume = ["--topic", topic, "--duration", "60"]
            res[f"consume_{name}"].append(shoal_bench("consume", boot, consume, extra))
        order = engines if r % 2 == 0 else engines[::-1]
        for engine in order if a.rdkafka_performance else []:
            _rdkafka_pair(a, by_engine[engine], engine if len(engines) > 1 else "", tls, r, res)
        if not a.storm_only:
            print(
                f"round {r + 1}: produce {res['produce_plain'][-1]:.1f} / "
                f"{res['produce_ssl'][-1]:.1f} MB/s (plain / SSL), consume "
                f"{res['consume_plain'][-1]:.1f} / {res['consume_ssl'][-1]:.1f} MB/s",
                flush=True,
            )
        res["load_average_1min"].append(os.getloadavg()[0])
        order = list(brokers)
        if r % 2:
            order.reverse()
        for kt in order:
            kt_broker, kt_certs = brokers[kt]
            rate, cpu_ms, own_ms = run_storm(kt_broker, kt_certs, salted, a, generator, sites_file)
            res[f"storm_per_s_{kt}"].append(rate)
            res[f"storm_broker_cpu_ms_per_login_{kt}"].append(cpu_ms)
            res[f"storm_client_cpu_ms_per_login_{kt}"].append(own_ms)
            print(
                f"round {r + 1}: storm ({kt} certificate) {len(salted)} logins at {rate:.0f}/s, "
                f"broker CPU {cpu_ms:.2f} ms per login (one core: {1000 / cpu_ms:.0f}/s), "
                f"{a.generator} load generator {own_ms:.2f} ms; "
                f"load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
    return res


if __name__ == "__main__":
    main()
