"""The many-partitions check with librdkafka's C client: is the wall clock
the client's or the broker's?

`partitions_bench.py` produces from Python (confluent-kafka); this sends
10,000 records of 200 bytes with rdkafka_performance to one topic of 10,000
partitions, null keys spread at random (`sticky.partitioning.linger.ms=0`;
about 6,300 partitions get one or more), acks=all, against Shoal and then
tansu in the same run, twice each (the first write after the topic's
creation opens its streams), reporting the wall time and the broker's CPU
seconds from /proc.

    PYTHONPATH=src .venv/bin/python bench/partitions_rdkafka.py \
        --rdkafka-performance /tmp/rdk216/rdkafka_performance
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BrokerProcess
from security_bench import _cpu_seconds

RECORD_BYTES = 200


def fleet_brokers(tmp: str, targets: list[str], partitions: int) -> Iterator[BrokerProcess]:
    """Each target started in turn, with a topic `fleet` of `partitions`, and
    stopped once the caller moves on to the next."""
    for target in targets:
        broker = BrokerProcess(Path(tmp) / target, target=target).start()
        assert broker.proc is not None
        try:
            admin = AdminClient({"bootstrap.servers": broker.bootstrap})
            new = NewTopic("fleet", partitions, 1)
            admin.create_topics([new], request_timeout=300)["fleet"].result(600)
            yield broker
        finally:
            broker.stop()


def produce_cmd(binary: str, bootstrap: str, count: int) -> list[str]:
    """rdkafka_performance sending `count` records of RECORD_BYTES to `fleet`,
    acks=all, linger.ms=5, null keys spread at random over its partitions."""
    return [
        *(binary, "-P", "-t", "fleet", "-b", bootstrap, "-s", str(RECORD_BYTES)),
        *("-c", str(count), "-a", "-1", "-X", "linger.ms=5"),
        *("-X", "sticky.partitioning.linger.ms=0"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rdkafka-performance", required=True, metavar="PATH")
    ap.add_argument("--partitions", type=int, default=10_000)
    ap.add_argument("--count", type=int, help="records per phase (default: one per partition)")
    a = ap.parse_args()
    count = a.count or a.partitions
    with tempfile.TemporaryDirectory(prefix="partitions-rdkafka-") as tmp:
        for broker in fleet_brokers(tmp, ["shoal", "tansu"], a.partitions):
            assert broker.proc is not None
            for phase in ("first", "again"):
                cpu0, t0 = _cpu_seconds(broker.proc.pid), time.monotonic()
                cmd = produce_cmd(a.rdkafka_performance, broker.bootstrap, count)
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                wall = time.monotonic() - t0
                cpu = _cpu_seconds(broker.proc.pid) - cpu0
                ok = f"{count} delivered" in out.stdout + out.stderr
                gb = count * RECORD_BYTES / 1e9
                print(
                    f"{broker.target} {phase}: {wall:.2f} s wall, broker {cpu:.2f} CPU s "
                    f"({cpu / gb:.0f} s/GB, {cpu / count * 1e6:.0f} µs per record), "
                    f"all delivered: {ok}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
