"""Mirror catch-up, steady lag and the produce pause at promotion of a
migration link (issue 12).

Starts a source Shoal broker and a target through tests/harness.py, writes a
backlog to the source with librdkafka, creates a link on the target and
measures how fast the mirror catches up (MB/s of record batches copied). Then,
with the link caught up, produces at a steady rate to the source and samples
how long each source high watermark takes to appear on the mirror (p50/p99).

`--mode pause`: a write-through link; a producer writes to the mirror topic
on the target at a steady rate (forwarded to the source) while `shoal link
promote` runs; reports the longest gap between two acknowledgements around
the promotion (the produce pause), the same before it, and checks that the
acknowledged offsets have no duplicates or gaps.

    .venv/bin/python bench/mirror_bench.py [--backlog-mb 256] [--partitions 4]
        [--rate-mb 10] [--seconds 20]
    .venv/bin/python bench/mirror_bench.py --mode pause [--partitions 4]
        [--rate 2000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from click.testing import CliRunner  # noqa: E402
from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from harness import BrokerProcess, cpu_seconds  # noqa: E402
from shoal.link.cli import link  # noqa: E402

RECORD = 1024


def ends(bootstrap: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench"})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in range(partitions)]
    except Exception:
        return [-1] * partitions
    finally:
        c.close()


class Ends:
    """`ends` on one long-lived consumer per broker, for the loops that poll
    every 50-100 ms: a new client each time (connections, ApiVersions,
    Metadata) cost the polled broker about 8 ms of CPU per poll, which the
    catch-up's CPU per GB counted as the mirror's."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench"})

    def __call__(self) -> list[int]:
        try:
            return [
                self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), 10)[1]
                for p in range(self.partitions)
            ]
        except Exception:
            return [-1] * self.partitions

    def close(self) -> None:
        self.consumer.close()


@contextlib.contextmanager
def source_and_target(
    prefix: str, topic: str, partitions: int
) -> Iterator[tuple[BrokerProcess, BrokerProcess, str]]:
    """A source and a target broker with TOPIC on the source: (source,
    target, the target's metadata URL for `shoal link`)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    src = BrokerProcess(work / "src").start()
    dst = BrokerProcess(work / "dst").start()
    try:
        admin = AdminClient({"bootstrap.servers": src.bootstrap})
        for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
            f.result(30)
        yield src, dst, f"sqlite:///{(work / 'dst' / 'meta.db').resolve()}"
    finally:
        src.stop()
        dst.stop()


def produce(bootstrap: str, topic: str, total_bytes: int, rate: float | None) -> None:
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1 << 20,
            "queue.buffering.max.kbytes": 1 << 20,
            "enable.idempotence": True,
        }
    )
    value = os.urandom(RECORD)
    sent = 0
    start = time.monotonic()
    while sent < total_bytes:
        try:
            p.produce(topic, value)
        except BufferError:
            p.poll(0.05)
            continue
        sent += RECORD
        if rate is not None and sent % (64 * RECORD) == 0:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        if sent % (256 * RECORD) == 0:
            p.poll(0)
    assert p.flush(120) == 0


def promotion_pause(args: argparse.Namespace) -> dict[str, object]:
    """Produce through write-through at `--rate` records/s during promote."""
    topic = "pause-bench"
    result: dict[str, object] = {"load_before": os.getloadavg()}
    with source_and_target("mirror-pause-", topic, args.partitions) as (src, dst, meta):
        r = CliRunner().invoke(
            link,
            [
                *("create", "pause", "--source", src.bootstrap, "--topics", topic),
                *("--write-through", "--metadata", meta),
            ],
        )
        assert r.exit_code == 0, r.output
        while ends(dst.bootstrap, topic, args.partitions)[0] < 0:
            time.sleep(0.05)
        acks: list[tuple[float, int, int]] = []  # (monotonic, partition, offset)
        errors: list[str] = []
        stop = threading.Event()

        def on_delivery(err: object, msg: object) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                acks.append((time.monotonic(), msg.partition(), msg.offset()))  # type: ignore[attr-defined]

        def writer() -> None:
            p = Producer(
                {
                    "bootstrap.servers": dst.bootstrap,
                    "linger.ms": 5,
                    "enable.idempotence": True,
                    "retry.backoff.ms": 20,
                    "retry.backoff.max.ms": 100,
                }
            )
            start, sent = time.monotonic(), 0
            while not stop.is_set():
                p.produce(
                    topic, b"x" * 100, partition=sent % args.partitions, on_delivery=on_delivery
                )
                sent += 1
                ahead = sent / args.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
                p.poll(0)
            assert p.flush(60) == 0

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(args.seconds)
        t0 = time.monotonic()
        r = CliRunner().invoke(link, ["promote", topic, "--metadata", meta])
        t1 = time.monotonic()
        assert r.exit_code == 0, r.output
        time.sleep(args.seconds)
        stop.set()
        thread.join()
        # Nothing may reach the source after the promotion point (a forward
        # still under way when the mirror was declared complete would).
        status = CliRunner().invoke(link, ["status", "--format", "json", "--metadata", meta])
        [row] = json.loads(status.output)
        promoted_at = sum(p["mirror_end"] for p in row["partitions"])
        result["source_records_past_promotion"] = (
            sum(ends(src.bootstrap, topic, args.partitions)) - promoted_at
        )
        times = sorted(a[0] for a in acks)
        gaps = [(b - a, a) for a, b in itertools.pairwise(times)]
        around = [g for g, at in gaps if t0 - 1 <= at <= t1 + 1]
        before = [g for g, at in gaps if at < t0 - 1]
        by_part: dict[int, list[int]] = {}
        part_times: dict[int, list[float]] = {}
        for at, part, offset in acks:
            by_part.setdefault(part, []).append(offset)
            part_times.setdefault(part, []).append(at)
        worst = max(
            (
                b - a
                for ts in part_times.values()
                for a, b in itertools.pairwise(sorted(ts))
                if t0 - 1 <= a <= t1 + 1
            ),
            default=0.0,
        )
        dupes = sum(len(o) - len(set(o)) for o in by_part.values())
        holes = sum(max(o) - min(o) + 1 - len(set(o)) for o in by_part.values())
        result.update(
            rate_per_s=args.rate,
            partitions=args.partitions,
            promote_command_s=round(t1 - t0, 3),
            max_ack_gap_around_promotion_s=round(max(around, default=0.0), 3),
            max_ack_gap_before_s=round(max(before, default=0.0), 3),
            max_partition_ack_gap_around_promotion_s=round(worst, 3),
            acked=len(acks),
            errors=len(errors),
            first_errors=sorted(set(errors))[:3],
            duplicate_offsets=dupes,
            offset_gaps=holes,
            load_after=os.getloadavg(),
        )
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["catchup", "pause"], default="catchup")
    ap.add_argument("--backlog-mb", type=int, default=256)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rate-mb", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=2000.0, help="pause: records/s")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    if args.mode == "pause":
        print(json.dumps(promotion_pause(args), indent=2))
        return
    topic = "mirror-bench"
    result: dict[str, object] = {"load_before": os.getloadavg()}
    with source_and_target("mirror-bench-", topic, args.partitions) as (src, dst, meta):
        t0 = time.monotonic()
        produce(src.bootstrap, topic, args.backlog_mb << 20, None)
        result["backlog_produce_s"] = round(time.monotonic() - t0, 2)
        target = ends(src.bootstrap, topic, args.partitions)
        cpu0 = cpu_seconds(dst.proc.pid), cpu_seconds(src.proc.pid)
        t0 = time.monotonic()
        r = CliRunner().invoke(
            link,
            ["create", "bench", "--source", src.bootstrap, "--topics", topic, "--metadata", meta],
        )
        assert r.exit_code == 0, r.output
        first = None
        mirror_ends = Ends(dst.bootstrap, topic, args.partitions)
        source_ends = Ends(src.bootstrap, topic, args.partitions)
        while (now := mirror_ends()) != target:
            if first is None and max(now) > 0:
                first = time.monotonic()  # the mirror topic exists and data flows
            time.sleep(0.05)
        took = time.monotonic() - t0
        cpu1 = cpu_seconds(dst.proc.pid), cpu_seconds(src.proc.pid)
        result["from_link_create_s"] = round(took, 2)
        if first is not None:
            took = time.monotonic() - first
        time.sleep(1.5)  # progress rows are written every second
        status = CliRunner().invoke(link, ["status", "--format", "json", "--metadata", meta])
        copied = sum(row["bytes"] for row in json.loads(status.output))
        result["catchup_s"] = round(took, 2)  # from the first mirrored batch
        result["catchup_bytes"] = copied
        result["catchup_MB_per_s"] = round(copied / took / (1 << 20), 1)
        # Broker CPU per GB copied (the machine is shared: wall-clock rates
        # depend on the load, CPU seconds much less).
        gb = copied / 1e9
        result["target_cpu_s_per_GB"] = round((cpu1[0] - cpu0[0]) / gb, 1)
        result["source_cpu_s_per_GB"] = round((cpu1[1] - cpu0[1]) / gb, 1)
        result["load_after_catchup"] = os.getloadavg()
        # Steady state: the time from a source high watermark to the mirror's.
        writer = threading.Thread(
            target=produce,
            args=(
                src.bootstrap,
                topic,
                int(args.rate_mb * args.seconds) << 20,
                args.rate_mb * (1 << 20),
            ),
        )
        writer.start()
        delays: list[float] = []
        pending: list[tuple[float, list[int]]] = []
        while writer.is_alive():
            now = time.monotonic()
            pending.append((now, source_ends()))
            mirror = mirror_ends()
            seen = time.monotonic()
            while pending and all(m >= s for m, s in zip(mirror, pending[0][1], strict=True)):
                delays.append(seen - pending.pop(0)[0])
            time.sleep(0.1)
        writer.join()
        mirror_ends.close()
        source_ends.close()
        delays.sort()
        if delays:
            result["steady_samples"] = len(delays)
            result["steady_lag_p50_s"] = round(delays[len(delays) // 2], 3)
            result["steady_lag_p99_s"] = round(delays[int(len(delays) * 0.99)], 3)
        result["load_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
