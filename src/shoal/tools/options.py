"""What the tools' commands share, so they parse, fail and print alike: option
parsers (checked before anything connects), KafkaClients (one-line errors from
librdkafka) and a rich Console that never cuts tables in a pipe."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
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


def parse_bootstrap(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """HOST[:PORT][,HOST[:PORT]...], each port in 1-65535 (librdkafka would
    silently wrap 99999 to another port)."""
    addresses = [a.strip() for a in value.split(",")]
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep:
            host, port = address, "9092"
        if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(
                f"expected HOST:PORT with a port in 1-65535, got {address!r}",
                ctx=ctx,
                param=param,
            )
    return ",".join(addresses)


def bootstrap_option() -> Callable[[F], F]:
    """--bootstrap, for every command that talks to a cluster."""
    return click.option(
        "--bootstrap",
        default="127.0.0.1:9092",
        show_default=True,
        callback=parse_bootstrap,
        help="Bootstrap address of any Kafka-compatible cluster (HOST:PORT[,...]).",
    )


def parse_client_settings(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """`-X key=value` librdkafka settings, checked by librdkafka itself before
    the command starts (a client without brokers connects to nothing)."""
    out = parse_settings(ctx, param, values)
    if out:
        from confluent_kafka import KafkaException, Producer

        try:
            Producer({**out, "bootstrap.servers": "", "logger": LIBRDKAFKA_LOG})
        except KafkaException as exc:
            raise click.BadParameter(kafka_error_text(exc), ctx=ctx, param=param) from None
    return out


def settings_option() -> Callable[[F], F]:
    """-X KEY=VALUE client settings, repeatable."""
    return click.option(
        "-X",
        "extra",
        multiple=True,
        metavar="KEY=VALUE",
        callback=parse_client_settings,
        help="librdkafka client setting, passed through (repeatable).",
    )


def format_option() -> Callable[[F], F]:
    """--format table|json, for every command that prints a table."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="json: machine-readable, stable keys.",
    )


def timeout_option(default: float = 15.0) -> Callable[[F], F]:
    """--timeout, seconds to wait for each request to the cluster."""
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=default,
        show_default=True,
        help="Seconds to wait for each request to the cluster.",
    )


def cluster_options(f: F) -> F:
    """--bootstrap, --timeout and -X, for every command that talks to a cluster."""
    for option in reversed([bootstrap_option(), timeout_option(), settings_option()]):
        f = option(f)
    return f


#: librdkafka's own log lines (`%3|FAIL|...`) go here and nowhere: every tool
#: reports failures itself, in one line.
LIBRDKAFKA_LOG = logging.getLogger("shoal.tools.librdkafka")
LIBRDKAFKA_LOG.addHandler(logging.NullHandler())
LIBRDKAFKA_LOG.propagate = False


class KafkaClients:
    """librdkafka clients for one command, so every command fails the same way:
    one line naming the address and the cause, as soon as the cause is known.

    librdkafka's own log lines (`%3|FAIL|...`, repeated on every reconnect) are
    dropped; its error callback is kept instead, and an unreachable cluster
    ends the wait at once rather than when the request times out."""

    _FATAL = {"_ALL_BROKERS_DOWN", "_AUTHENTICATION", "_SSL"}

    def __init__(self, bootstrap: str, extra: dict[str, str], timeout: float = 15.0) -> None:
        self.bootstrap = bootstrap
        self.extra = dict(extra)
        self.timeout = timeout
        self.fatal: str | None = None
        self.reached = False  # the cluster has answered once
        self._last: str | None = None
        self._admin: Any = None

    def config(self, **more: Any) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "error_cb": self._on_error,
            "logger": LIBRDKAFKA_LOG,
            **self.extra,
            **more,
        }

    def _on_error(self, err: Any) -> None:
        name = err.name()
        if name == "_ALL_BROKERS_DOWN" and self.reached:
            # Once the cluster answered, an outage is waited out (like kcat):
            # a long `consume` must survive a broker restart.
            self._last = err.str()
        elif name in self._FATAL:
            # "1/1 brokers are down" says less than the connect error before it.
            cause = self._last if name == "_ALL_BROKERS_DOWN" and self._last else err.str()
            self.fatal = f"cannot reach {self.bootstrap}: {cause}"
        else:
            self._last = err.str()

    def check(self) -> None:
        """Raise the fatal error the clients reported, if any."""
        if self.fatal is not None:
            raise click.ClickException(self.fatal)

    @property
    def admin(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self.config())
        return self._admin

    def consumer(self, **more: Any) -> Any:
        from confluent_kafka import Consumer

        return Consumer(self.config(**more))

    def producer(self, **more: Any) -> Any:
        from confluent_kafka import Producer

        return Producer(self.config(**more))

    def metadata(self) -> Any:
        """Metadata of every topic. Never of one topic by name: such a request
        may create the topic on a cluster with auto.create.topics.enable."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + self.timeout
        while True:
            # Short attempts: list_topics blocks for its whole timeout when the
            # cluster is down, while the error callback knows it in milliseconds.
            left = deadline - time.monotonic()
            try:
                metadata = self.admin.list_topics(timeout=max(0.1, min(1.0, left)))
            except KafkaException:
                self.admin.poll(0)  # delivers the error callback
                self.check()
                if time.monotonic() < deadline:
                    continue
                raise
            self.check()
            self.reached = True
            return metadata

    def wait(self, future: Any, what: str) -> Any:
        """The result of an admin future, or a one-line error: the cluster is
        unreachable, the request failed, or no answer came within the timeout."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return future.result(0.05)
            except TimeoutError:
                pass
            if self._admin is not None:
                self._admin.poll(0)
            self.check()
            if time.monotonic() > deadline:
                raise click.ClickException(
                    f"{self.bootstrap}: no answer to {what} within {self.timeout:g}s"
                    + (f" (last error: {self._last})" if self._last else "")
                )


def known_topic(k: KafkaClients, metadata: Any, topic: str) -> Any:
    """TOPIC's metadata; an unknown topic is an error, not a no-op."""
    meta = metadata.topics.get(topic)
    if meta is None or meta.error is not None:
        raise click.ClickException(f"unknown topic {topic!r} at {k.bootstrap}")
    return meta


def known_partitions(
    k: KafkaClients, metadata: Any, topic: str, wanted: list[int] | None = None
) -> list[int]:
    """TOPIC's partitions, all of them or those `wanted`; an unknown topic or
    partition is an error."""
    meta = known_topic(k, metadata, topic)
    have = sorted(meta.partitions)
    for p in wanted or []:
        if p not in meta.partitions:
            raise click.ClickException(f"topic {topic!r} has no partition {p} (it has {len(have)})")
    return sorted(set(wanted)) if wanted else have


def kafka_error_text(exc: BaseException) -> str:
    """The message of a KafkaException without the KafkaError{...} wrapper."""
    err: Any = exc.args[0] if exc.args else None
    return str(err.str()) if hasattr(err, "str") else str(exc)


def client_errors(f: F) -> F:
    """One line instead of a traceback when a Kafka client fails: bad -X setting,
    unreachable cluster, refused request. Needs the command's `bootstrap` argument."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from confluent_kafka import KafkaException

        bootstrap = kwargs.get("bootstrap", "?")
        try:
            return f(*args, **kwargs)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if getattr(err, "name", lambda: "")() == "_INVALID_ARG":
                raise click.ClickException(
                    f"bad client setting (-X): {kafka_error_text(exc)}"
                ) from None
            raise click.ClickException(f"{bootstrap}: {kafka_error_text(exc)}") from None
        except TimeoutError:
            raise click.ClickException(f"{bootstrap}: no answer (timed out)") from None

    return wrapper  # type: ignore[return-value]


def console() -> Any:
    """A rich Console that never truncates a table in a pipe or a file: the
    terminal's width on a terminal, otherwise no width limit and no wrapping."""
    from rich.console import Console

    out = Console()
    if out.is_terminal:
        return out
    return Console(width=10_000, soft_wrap=True, color_system=None)


def parse_topic_partitions(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, list[int] | None]:
    """`--topic T` (every partition) or `--topic T:0,2` (those partitions), repeatable."""
    out: dict[str, list[int] | None] = {}
    for raw in values:
        topic, sep, parts = raw.partition(":")
        if not topic.strip():
            raise click.BadParameter(f"expected TOPIC[:P,...], got {raw!r}", ctx=ctx, param=param)
        if not sep:
            out[topic] = None
            continue
        try:
            numbers = sorted({int(p) for p in parts.split(",")})
        except ValueError:
            raise click.BadParameter(
                f"partitions must be numbers, got {raw!r}", ctx=ctx, param=param
            ) from None
        if not numbers or numbers[0] < 0:
            raise click.BadParameter(f"partitions must be >= 0, got {raw!r}", ctx=ctx, param=param)
        previous = out.get(topic, [])
        out[topic] = None if previous is None and topic in out else [*(previous or []), *numbers]
    return out


def parse_datetime(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """ISO 8601 date-time to epoch milliseconds; a time without a zone is UTC."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(
            f"expected an ISO 8601 date-time like 2026-01-31T12:00:00Z, got {value!r}",
            ctx=ctx,
            param=param,
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def parse_timestamp(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """Epoch milliseconds, given as such or as an ISO 8601 date-time."""
    if value is not None and value.strip().isdigit():
        return int(value)
    return parse_datetime(ctx, param, value)
