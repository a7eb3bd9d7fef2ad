"""Reconnect-burst replay, Shoal and tansu side by side in one session (issue 7).

Starts each broker in turn through tests/harness.py (each stopped before the
next starts, so they never share the 2 cores), runs the same
`shoal bench replay` command line against it, and prints a Markdown table.
JSON goes to bench/results/replay-<target>.json, charts to docs/img/.

    .venv/bin/python bench/replay_bench.py [--sites 100 --offline 10 ...]

Extra arguments are passed to `shoal bench replay` unchanged.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from harness import BrokerProcess  # noqa: E402
from shoal.tools.replay import ReplayResult  # noqa: E402

DEFAULT = ["--sites", "100", "--rate", "20", "--offline", "10", "--before", "5", "--after", "10"]
DEFAULT += ["--partitions", "6", "--record-size", "256", "--topic", "replay-bench"]


def run(target: str, args: list[str], workdir: Path) -> tuple[str, ReplayResult]:
    broker = BrokerProcess(workdir / target, target=target).start()
    out = ROOT / "bench" / "results" / f"replay-{target}.json"
    chart = ROOT / "docs" / "img" / f"replay-{target}.png"
    cmd = ["shoal", "bench", "replay", "--bootstrap", broker.bootstrap, *args]
    cmd += ["--json", str(out.relative_to(ROOT)), "--chart", str(chart.relative_to(ROOT))]
    try:
        proc = subprocess.run(
            [str(ROOT / ".venv" / "bin" / cmd[0]), *cmd[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        broker.stop()
    print(proc.stdout, end="")
    if proc.returncode not in (0, 1) or not out.exists():
        raise SystemExit(f"{target}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return shlex.join(cmd), ReplayResult.from_dict(json.loads(out.read_text()))


def table(results: dict[str, ReplayResult]) -> str:
    def lat(r: ReplayResult, attr: str) -> str:
        s = getattr(r, attr)
        return f"{s.p50_ms:.1f} / {s.p99_ms:.1f}"

    rows = [
        ("backlog replayed (records)", lambda r: f"{r.backlog_records:,}"),
        (
            "produced = acked = received (unique)",
            lambda r: f"{r.produced:,} / {r.acked:,} / {r.received_unique:,}",
        ),
        ("duplicates / lost / gaps", lambda r: f"{r.duplicates} / {r.lost} / {r.gaps}"),
        ("baseline e2e lag p99 (ms)", lambda r: f"{r.baseline_lag_p99_ms:.1f}"),
        (
            "catch-up time after reconnect (s)",
            lambda r: f"{r.catchup_s:.2f}" if r.catchup_s is not None else "not caught up",
        ),
        ("peak consumer lag (s)", lambda r: f"{r.peak_lag_ms / 1000:.2f}"),
        ("live produce p50 / p99 ms, before", lambda r: lat(r, "produce_latency_before")),
        ("live produce p50 / p99 ms, burst", lambda r: lat(r, "produce_latency_burst")),
        ("live produce p50 / p99 ms, after", lambda r: lat(r, "produce_latency_after")),
        ("replay produce p50 / p99 ms", lambda r: lat(r, "replay_produce_latency")),
        (
            "errors",
            lambda r: (
                ", ".join(f"{side}: {k}={v}" for side, c in r.errors.items() for k, v in c.items())
                or "none"
            ),
        ),
    ]
    names = list(results)
    out = ["| measurement | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for label, f in rows:
        out.append(f"| {label} | " + " | ".join(f(results[n]) for n in names) + " |")
    return "\n".join(out)


def main() -> None:
    args = sys.argv[1:] or DEFAULT
    results: dict[str, ReplayResult] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for target in ("shoal", "tansu"):
            cmd, res = run(target, args, Path(tmp))
            print(f"\n$ {cmd}\n")
            results[target] = res
    print(table(results))


if __name__ == "__main__":
    main()
