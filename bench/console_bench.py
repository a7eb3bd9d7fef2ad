"""What site reports cost, and the console with a thousand sites.

1. A real edge gateway (three lanes, a backlog in each, central topic
   missing so the backlog stays) reports to a broker every
   `--interval-ms`; after `--seconds` the bench reads the report topic's
   stored bytes and record count: bytes per report as stored (record batch,
   lz4), hence bytes/s per 1,000 sites at the default 5 s interval.
2. That report, renamed, is produced for `--sites` sites; the bench times
   the console's /fleet page and /api/sites (median of 20 requests each,
   logged in over HTTP) once the console has read them all.

    PYTHONPATH=src .venv/bin/python bench/console_bench.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from console_helpers import PASSWORD, console_broker, gateway  # noqa: E402
from shoal.protocol.batches import LZ4, build_batch  # noqa: E402

LANES = [
    {"name": "alarms", "priority": 0, "topics": ["alarms"]},
    {"name": "telemetry", "priority": 5, "topics": ["telemetry"], "disk_budget_bytes": 1 << 30},
    {"name": "bulk", "priority": 9, "topics": ["bulk"], "ttl_ms": 3_600_000},
]


def _report_stats(bootstrap: str, topic: str) -> tuple[int, int, bytes]:
    """(records, bytes of the values, last value) of the report topic."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False})
    _low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, 0)])
    n = size = 0
    last = b""
    offset = -1
    deadline = time.monotonic() + 60
    while offset < high - 1 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        offset = m.offset()
        n += 1
        size += len(m.value() or b"")
        last = m.value() or b""
    c.close()
    return n, size, last


async def _timed(session: Any, url: str, times: int = 20) -> float:
    took = []
    for _ in range(times):
        t = time.perf_counter()
        async with session.get(url) as r:
            await r.read()
            assert r.status == 200, r.status
        took.append(time.perf_counter() - t)
    return statistics.median(took) * 1000


async def _console_times(base: str, sites: int) -> dict[str, float]:
    import aiohttp

    async with aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.post("/login", data={"user": "admin", "password": PASSWORD}) as r:
            assert r.status == 200
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            async with s.get("/api/sites") as r:
                if len((await r.json())["sites"]) >= sites:
                    break
            await asyncio.sleep(0.5)
        return {
            "fleet_page_ms": await _timed(s, "/fleet"),
            "fleet_partial_ms": await _timed(s, "/fleet?partial=1"),
            "api_sites_ms": await _timed(s, "/api/sites"),
        }


@click.command()
@click.option("--seconds", default=20.0, show_default=True, help="How long the gateway reports.")
@click.option("--interval-ms", default=1000, show_default=True)
@click.option("--sites", default=1000, show_default=True, help="Sites for the console timing.")
def main(seconds: float, interval_ms: int, sites: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="console-bench-"))
    broker = console_broker(tmp)
    gw = gateway(tmp, broker, "plant-000", interval_ms, lanes=LANES)
    gw.start()
    try:
        p = Producer({"bootstrap.servers": gw.kafka})
        for topic in ("alarms", "telemetry", "bulk"):
            for i in range(200):
                p.produce(topic, key=f"dev-{i % 20}".encode(), value=b"v" * 200)
        p.flush(30)
        print(f"gateway reporting for {seconds}s", file=sys.stderr)
        time.sleep(seconds)
        n, value_bytes, last = _report_stats(broker.address("PLAINTEXT"), "_shoal_sites")
        report = json.loads(last)
        # one report per produce: one record batch each, as the reporter sends it
        batch = len(build_batch([(0, b"plant-000", last, ())], compression=LZ4))
        out: dict[str, Any] = {
            "reports_read": n,
            "report_json_bytes": round(value_bytes / max(n, 1)),
            "lanes_in_report": len(report["lanes"]),
            "record_batch_bytes_lz4": batch,
            "bytes_per_s_per_1000_sites_at_5s": round(batch * 1000 / 5),
        }
        gw.stop()
        # the console with `sites` sites: the real report, renamed
        p = Producer({"bootstrap.servers": broker.address("PLAINTEXT"), "linger.ms": 20})
        now = time.time()
        for i in range(sites):
            name = f"plant-{i:04d}"
            doc = {**report, "site": name, "time": now, "interval_ms": 3_600_000}
            p.produce("_shoal_sites", key=name.encode(), value=json.dumps(doc).encode())
        p.flush(30)
        print(f"report: {out}; {sites} sites produced", file=sys.stderr)
        out.update(asyncio.run(_console_times(broker.console, sites)))
        out["sites"] = sites
        print(json.dumps(out, indent=2))
    finally:
        gw.kill()
        broker.stop()


if __name__ == "__main__":
    main()
