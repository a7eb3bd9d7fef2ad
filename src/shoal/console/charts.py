"""Inline SVG line charts, drawn on the server: no script, no CDN."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def line_chart(
    points: Sequence[tuple[float, float]],
    title: str,
    unit: str = "",
    width: int = 600,
    height: int = 140,
) -> str:
    """A polyline of (time, value) points scaled into the box, with the
    peak and the latest value labelled; an empty box says "no data yet"."""
    pad_l, pad_r, pad_t, pad_b = 8, 8, 22, 8
    head = (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="none">'
        f'<text x="{pad_l}" y="15" class="chart-title">{escape(title)}</text>'
    )
    if len(points) < 2:
        return head + f'<text x="{pad_l}" y="{height // 2}">no data yet</text></svg>'
    t0, t1 = points[0][0], points[-1][0]
    vmax = max(v for _, v in points) or 1.0
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    span = (t1 - t0) or 1.0
    coords = " ".join(
        f"{pad_l + (t - t0) / span * w:.1f},{pad_t + h - v / vmax * h:.1f}" for t, v in points
    )
    last = points[-1][1]
    return (
        head + f'<text x="{width - pad_r}" y="15" text-anchor="end" class="chart-value">'
        f"now {last:,.0f}{escape(unit)} · peak {vmax:,.0f}{escape(unit)}</text>"
        f'<polyline fill="none" stroke="currentColor" stroke-width="2" points="{coords}"/>'
        "</svg>"
    )
