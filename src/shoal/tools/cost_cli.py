"""``shoal cost``: print the cost model of a workload profile as a table, JSON or a chart.

Kept apart from :mod:`shoal.tools.cost` so the model stays pure and importable
without click, rich or matplotlib.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console, JustifyMethod
from rich.table import Table

from shoal.tools.cost import (
    ARCHITECTURE_LABELS,
    ARCHITECTURES,
    CATEGORIES,
    GB,
    SCENARIOS,
    CostInputError,
    CostReport,
    PriceError,
    evaluate,
    load_price_file,
    load_prices,
    load_profile,
)
from shoal.tools.options import console, format_option

MATPLOTLIB_PIN = "matplotlib>=3.11,<4"
SHORT_LABELS = {"shared_nothing": "RF=3", "tiered": "tiered", "shared_storage": "Shoal"}
SCENARIO_LABELS = {
    "steady": "steady",
    "reconnect_burst": "reconnect burst",
    "replay": "replay",
    "failover": "failover",
}


def _money(x: float) -> str:
    if x == 0:
        return "$0"
    return f"${x:,.0f}" if abs(x) >= 100 else f"${x:,.2f}"


def render_table(report: CostReport, console: Console) -> None:
    """Summary per architecture and scenario, then where the network money goes."""
    v = report.volumes
    sheet = report.prices.sheet
    console.print(
        f"[bold]Workload[/]: {v.messages_per_s:,.0f} msg/s, "
        f"{v.ingest_bytes_s / 1e6:,.2f} MB/s in (compressed), "
        f"{v.consumer_bytes_s / 1e6:,.2f} MB/s to consumers, "
        f"{v.stored_bytes / GB:,.0f} GB retained, "
        f"{v.month_ingest_bytes / GB:,.0f} GB/month in, "
        f"reconnect peak {v.peak_ingest_bytes_s / 1e6:,.1f} MB/s for "
        f"{v.catch_up_hours:.2f} h"
    )
    console.print(
        f"[dim]Prices: {sheet.get('region', '?')} list prices as of "
        f"{sheet.get('as_of', '?')}, {sheet.get('currency', 'USD')}/month of 30 days: "
        "check them before relying on a number.[/]"
    )

    summary = Table(title="Monthly cost by architecture and scenario", show_lines=False)
    headers: tuple[tuple[str, JustifyMethod], ...] = (
        ("scenario", "left"),
        ("arch.", "left"),
        ("brokers", "right"),
        ("compute", "right"),
        ("storage", "right"),
        ("network", "right"),
        ("requests", "right"),
        ("total", "right"),
        ("vs RF=3", "right"),
    )
    for name, justify in headers:
        summary.add_column(name, justify=justify)
    for scenario in SCENARIOS:
        reference = report.get("shared_nothing", scenario).total
        for i, arch in enumerate(ARCHITECTURES):
            r = report.get(arch, scenario)
            brokers = (
                str(r.brokers) if r.peak_brokers == r.brokers else (f"{r.brokers}→{r.peak_brokers}")
            )
            ratio = f"{r.total / reference:.0%}" if reference > 0 else "-"
            summary.add_row(
                SCENARIO_LABELS[scenario] if i == 0 else "",
                SHORT_LABELS[arch],
                brokers,
                _money(r.compute),
                _money(r.storage),
                _money(r.network),
                _money(r.requests),
                f"[bold]{_money(r.total)}[/]",
                ratio,
                end_section=i == len(ARCHITECTURES) - 1,
            )
    console.print(summary)

    net = Table(title="Network and object-store requests (USD/month)")
    for name in (
        "scenario",
        "arch.",
        "replication",
        "cross-zone",
        "PrivateLink",
        "egress",
        "S3 PUT",
        "S3 GET",
        "PUT/GET M",
    ):
        net.add_column(name, justify="left" if name in ("scenario", "arch.") else "right")
    for scenario in SCENARIOS:
        for i, arch in enumerate(ARCHITECTURES):
            r = report.get(arch, scenario)
            put, get = r.line("object_put"), r.line("object_get")
            net.add_row(
                SCENARIO_LABELS[scenario] if i == 0 else "",
                SHORT_LABELS[arch],
                _money(r.line("replication").cost),
                _money(r.line("cross_zone").cost),
                _money(r.line("private_link").cost + r.line("private_link_endpoints").cost),
                _money(r.line("internet_egress").cost + r.line("cross_region").cost),
                _money(put.cost),
                _money(get.cost),
                f"{put.quantity / 1e6:,.1f}/{get.quantity / 1e6:,.1f}",
                end_section=i == len(ARCHITECTURES) - 1,
            )
    console.print(net)
    console.print(
        "[dim]RF=3: shared-nothing Kafka; tiered: Kafka with tiered storage; Shoal: shared "
        "storage. egress = internet + cross-region. Every line's volume: --format json.[/]"
    )
    seen: set[tuple[str, str]] = set()
    for scenario in SCENARIOS:
        for arch in ARCHITECTURES:
            for note in report.get(arch, scenario).notes:
                if (arch, note) in seen:
                    continue
                seen.add((arch, note))
                console.print(
                    f"[dim]- {SCENARIO_LABELS[scenario]}, {ARCHITECTURE_LABELS[arch]}: {note}[/]"
                )


def render_chart(report: CostReport, path: Path) -> None:
    """Stacked bars (compute, storage, network, requests) per scenario and architecture."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise click.ClickException(
            f"--chart needs matplotlib, which is not installed: pip install '{MATPLOTLIB_PIN}'"
        ) from exc

    colors = {
        "compute": "#4C72B0",
        "storage": "#DD8452",
        "network": "#55A868",
        "requests": "#C44E52",
    }
    width = 0.26
    fig, ax = plt.subplots(figsize=(11, 5.5))
    ticks: list[float] = []
    labels: list[str] = []
    top = 0.0
    for s_index, scenario in enumerate(SCENARIOS):
        for a_index, arch in enumerate(ARCHITECTURES):
            x = s_index + (a_index - 1) * width
            r = report.get(arch, scenario)
            bottom = 0.0
            for category in CATEGORIES:
                value = r.category(category)
                label = category if (s_index, a_index) == (0, 0) else None
                ax.bar(x, value, width * 0.92, bottom=bottom, color=colors[category], label=label)
                bottom += value
            ax.text(x, bottom, f"${bottom:,.0f}", ha="center", va="bottom", fontsize=7)
            top = max(top, bottom)
            ticks.append(x)
            labels.append(SHORT_LABELS[arch])
        ax.text(
            s_index,
            -0.09,
            SCENARIO_LABELS[scenario],
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontweight="bold",
        )
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylim(0, top * 1.12 if top > 0 else 1)
    ax.set_ylabel("USD per month")
    sheet = report.prices.sheet
    ax.set_title(
        "Monthly cost: Kafka RF=3, Kafka tiered storage, Shoal shared storage\n"
        f"({sheet.get('region', '?')} list prices as of {sheet.get('as_of', '?')})"
    )
    ax.legend(loc="upper center", ncols=len(CATEGORIES), bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_report(profile_path: Path, prices_path: Path | None) -> CostReport:
    """Load inputs and run the model, turning input errors into click errors."""
    try:
        profile = load_profile(profile_path)
    except CostInputError as exc:
        raise click.BadParameter(str(exc), param_hint="'--profile'") from exc
    layers: list[Any] = [profile.prices]
    if prices_path is not None:
        try:
            layers.append(load_price_file(prices_path))
        except CostInputError as exc:
            raise click.BadParameter(str(exc), param_hint="'--prices'") from exc
    try:
        prices = load_prices(*layers)
        return evaluate(profile, prices)
    except PriceError as exc:
        raise click.BadParameter(str(exc), param_hint="'--prices'") from exc
    except CostInputError as exc:
        raise click.BadParameter(str(exc), param_hint="'--profile'") from exc


@click.command("cost")
@click.option(
    "--profile",
    "profile_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Workload profile (TOML), e.g. profiles/iot-fleet.toml.",
)
@click.option(
    "--prices",
    "prices_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Price overrides (TOML, same layout as the packaged sheet); wins over [prices].",
)
@format_option()
@click.option(
    "--chart",
    "chart_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a PNG of stacked costs (needs matplotlib).",
)
def cost(profile_path: Path, prices_path: Path | None, fmt: str, chart_path: Path | None) -> None:
    """Monthly cost of a workload: Kafka RF=3, Kafka tiered storage and Shoal, split into
    compute, storage, network and object-store requests, for steady state, a reconnect
    burst, a history replay and a broker failover."""
    report = build_report(profile_path, prices_path)
    if chart_path is not None:
        render_chart(report, chart_path)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        render_table(report, console())
        if chart_path is not None:
            click.echo(f"chart written to {chart_path}")
