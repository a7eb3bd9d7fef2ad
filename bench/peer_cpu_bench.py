"""Shoal against tansu with librdkafka's own C producer: MB/s and each
broker's CPU seconds per GB produced (from /proc), in one run.

    .venv/bin/python bench/peer_cpu_bench.py --rdkafka-performance PATH \
        [--rounds 2] [--count 500000] [--no-idempotence] [--size 1024] [--consume]

rdkafka_performance (built from librdkafka's examples/) is a client that
cannot be the bottleneck; a Python load generator on the same two cores can
hide which broker is faster. 1 KiB records (--size), acks=all, idempotent
(unless --no-idempotence), linger.ms=5, every record to partition 0 of a
topic created on first use (tansu creates such topics with several
partitions, Shoal with one: before -p 0, the records spread over tansu's,
and -C reading partition 0 never got them all), read back from the start
with rdkafka_performance -C after each (--consume);
Shoal on its default file store (every
acknowledged batch in the object store and SQLite), tansu 0.6 on memory;
with --s3 both on one moto S3 server (durable against durable). Shoal's
rounds also count its WAL objects (one PUT each: the request cost on S3),
from its metrics endpoint.

The binary must be linked with a librdkafka that tansu accepts: Debian's
2.0.2 fails its ApiVersions exchange with tansu and retries forever; the
2.16.0 in confluent-kafka's wheel works (docs/BENCHMARKS.md, "Checked with a
C client", says how). The version the binary reports is printed first."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BrokerProcess, free_port, tansu_s3
from security_bench import _cpu_seconds, rdkafka_performance


def consume(binary: str, bootstrap: str, topic: str, count: int) -> float | None:
    """MB/s of rdkafka_performance -C reading `count` records of partition 0
    from the start (the produce runs write one partition); None if it did not
    finish within two minutes."""
    cmd = [binary, "-C", "-t", topic, "-p", "0", "-b", bootstrap, "-o", "beginning"]
    cmd += ["-c", str(count)]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return None
    last = [line for line in out.stderr.splitlines() + out.stdout.splitlines() if "MB/s" in line]
    if not last or f"{count} messages" not in last[-1]:
        raise SystemExit(f"rdkafka_performance -C did not read everything: {last[-1:]}")
    return float(last[-1].rsplit(" MB/s", 1)[0].rsplit("(", 1)[1])  # "... (282.41 MB/s)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rdkafka-performance", metavar="PATH", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--count", type=int, default=500_000, help="records per run")
    ap.add_argument(
        "--no-idempotence",
        action="store_true",
        help="plain acks=all producer (tansu 0.6 stalled with the idempotent one)",
    )
    ap.add_argument("--size", type=int, default=1024, help="record size in bytes")
    ap.add_argument(
        "--targets",
        default="shoal,tansu",
        help="comma-separated, in order (shoal alone for an A/B of two Shoal trees: "
        "PYTHONPATH=TREE/src picks the tree the broker runs)",
    )
    ap.add_argument(
        "--s3",
        action="store_true",
        help="both brokers on one moto S3 server started here (Shoal's objects, "
        "tansu's storage engine), durable against durable",
    )
    ap.add_argument(
        "--consume",
        action="store_true",
        help="after each produce, read the partition back from the start with "
        "rdkafka_performance -C: its MB/s and the broker's CPU s/GB",
    )
    a = ap.parse_args()
    gb = a.count * a.size / 1e9
    usage = subprocess.run([a.rdkafka_performance, "-h"], capture_output=True, text=True)
    version = [x for x in (usage.stdout + usage.stderr).splitlines() if "librdkafka version" in x]
    print(version[0].strip() if version else "librdkafka version: not reported", flush=True)
    with tempfile.TemporaryDirectory(prefix="peer-cpu-") as tmp:
        for target in a.targets.split(","):
            metrics = f"127.0.0.1:{free_port()}" if target == "shoal" else None
            broker = _broker(Path(tmp) / target / "data", target, a.s3, metrics).start()
            try:
                assert broker.proc is not None
                wal0 = _wal_objects(metrics) if metrics is not None else 0
                for r in range(a.rounds):
                    topic = f"peer-{target}-{r}-{os.urandom(2).hex()}"
                    cpu0 = _cpu_seconds(broker.proc.pid)
                    mbs, client_s = rdkafka_performance(
                        a.rdkafka_performance,
                        broker.bootstrap,
                        topic,
                        a.count,
                        [],
                        idempotent=not a.no_idempotence,
                        size=a.size,
                        partition=0,
                    )
                    cpu = _cpu_seconds(broker.proc.pid) - cpu0
                    objects = ""
                    if metrics is not None:
                        now = _wal_objects(metrics)
                        objects = f", {now - wal0} WAL objects (PUTs)"
                        wal0 = now
                    print(
                        f"{target} round {r + 1}: {mbs:.1f} MB/s, broker {cpu / gb:.2f} CPU s/GB, "
                        f"client {client_s / gb:.2f} CPU s/GB{objects}",
                        flush=True,
                    )
                    if a.consume:
                        cpu0 = _cpu_seconds(broker.proc.pid)
                        read = consume(a.rdkafka_performance, broker.bootstrap, topic, a.count)
                        cpu = _cpu_seconds(broker.proc.pid) - cpu0
                        print(
                            f"{target} round {r + 1} consume: "
                            + (
                                "did not finish in 120 s"
                                if read is None
                                else f"{read:.1f} MB/s, broker {cpu / gb:.2f} CPU s/GB"
                            ),
                            flush=True,
                        )
            finally:
                broker.stop()


def _wal_objects(metrics: str) -> int:
    """Shoal's WAL objects committed so far: one PUT each."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("shoal_wal_objects_committed_total "):
                return int(float(line.split()[1]))
    raise SystemExit("the broker's metrics have no shoal_wal_objects_committed_total")


def _broker(data_dir: Path, target: str, s3: bool, metrics: str | None) -> BrokerProcess:
    if target == "shoal":
        if s3:  # the harness starts moto in this process and gives --objects s3://...
            os.environ["SHOAL_TEST_STORE"] = "s3"
        env = {"SHOAL_METRICS_LISTEN": metrics} if metrics is not None else {}
        return BrokerProcess(data_dir, target=target, env=env)
    if not s3:
        return BrokerProcess(data_dir, target=target)
    env = tansu_s3("tansu")  # moto, in this process (shared with Shoal's run)
    return BrokerProcess(data_dir, target=target, env=env, tansu_storage="s3://tansu/")


if __name__ == "__main__":
    main()
