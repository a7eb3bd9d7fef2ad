"""Click option parsers shared by the tools' commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def parse_settings(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """`-X key=value` client settings, passed through unchanged."""
    out: dict[str, str] = {}
    for raw in values:
        key, sep, val = raw.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected key=value, got {raw!r}", ctx=ctx, param=param)
        out[key.strip()] = val
    return out


def parse_rate(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    """Records per second, or `unlimited` (also `max` or 0) for as fast as possible."""
    text = str(value).strip().lower()
    if text in ("unlimited", "max", "0"):
        return None
    try:
        rate = float(text)
    except ValueError:
        raise click.BadParameter(
            f"expected records/s or 'unlimited', got {value!r}", ctx=ctx, param=param
        ) from None
    if not rate > 0 or rate == float("inf"):
        raise click.BadParameter(
            f"must be > 0 records/s or 'unlimited', got {value!r}", ctx=ctx, param=param
        )
    return rate


def bootstrap_option() -> Callable[[F], F]:
    """--bootstrap, for every command that talks to a cluster."""
    return click.option(
        "--bootstrap",
        default="127.0.0.1:9092",
        show_default=True,
        help="Bootstrap address of any Kafka-compatible cluster.",
    )


def settings_option() -> Callable[[F], F]:
    """-X KEY=VALUE client settings, repeatable."""
    return click.option(
        "-X",
        "extra",
        multiple=True,
        metavar="KEY=VALUE",
        callback=parse_settings,
        help="librdkafka client setting, passed through (repeatable).",
    )
