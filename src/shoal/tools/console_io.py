"""`shoal produce` and `shoal consume`: records in and out at a terminal, like kcat.

Both use confluent-kafka, so they work against Shoal or any Kafka. Neither
creates a topic: a mistyped name is an error, not a new topic.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, BinaryIO

import click

from shoal.tools.options import (
    KafkaClients,
    bootstrap_option,
    client_errors,
    cluster_options,
    known_partitions,
    parse_settings,
    parse_timestamp,
    settings_option,
    timeout_option,
)

_PLACEHOLDER = re.compile(r"%[tpokKsSTh%]|\\[nrt\\]")
_ESCAPES = {"\\n": b"\n", "\\r": b"\r", "\\t": b"\t", "\\\\": b"\\", "%%": b"%"}


def _records(
    values: tuple[str, ...], stdin: BinaryIO, key: str | None, separator: str | None
) -> Any:
    """(key, value) pairs: each --value, or else each line of stdin."""
    lines: Any = (v.encode() for v in values) if values else stdin
    sep = separator.encode() if separator is not None else None
    for number, raw in enumerate(lines, 1):
        line = raw if values else raw.rstrip(b"\n").removesuffix(b"\r")
        if sep is None:
            yield (key.encode() if key is not None else None), line
            continue
        k, found, v = line.partition(sep)
        if not found:
            raise click.ClickException(
                f"line {number} has no key separator {separator!r}: {line[:60]!r}"
            )
        yield k, v


@click.command()
@click.argument("topic")
@click.option(
    "--value", "values", multiple=True, help="Record value (repeatable); default: stdin lines."
)
@click.option("--key", help="Key of every record.")
@click.option(
    "-K",
    "--key-separator",
    "separator",
    metavar="SEP",
    help="Split each line at the first SEP into key and value (like kcat -K).",
)
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="KEY=VALUE",
    callback=parse_settings,
    help="Header of every record (repeatable).",
)
@click.option("--partition", type=click.IntRange(min=0), help="Partition [the partitioner's].")
@bootstrap_option()
@timeout_option(30.0)
@settings_option()
@client_errors
def produce(
    topic: str,
    values: tuple[str, ...],
    key: str | None,
    separator: str | None,
    headers: dict[str, str],
    partition: int | None,
    bootstrap: str,
    timeout: float,
    extra: dict[str, str],
) -> None:
    """Produce records to TOPIC: each --value, or each line of stdin."""
    if key is not None and separator is not None:
        raise click.UsageError("give --key or --key-separator, not both")
    if separator == "":
        raise click.BadParameter("must not be empty", param_hint="'--key-separator'")
    k = KafkaClients(bootstrap, extra, timeout)
    known_partitions(k, k.metadata(), topic, [partition] if partition is not None else None)
    producer = k.producer(**{"enable.idempotence": True})
    sent = failed = 0
    first_error: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        nonlocal failed
        if err is not None:
            failed += 1
            if not first_error:
                first_error.append(err.str())

    header_list = [(h, v.encode()) for h, v in headers.items()] or None
    stdin = sys.stdin.buffer
    for rec_key, value in _records(values, stdin, key, separator):
        kwargs: dict[str, Any] = {"key": rec_key, "headers": header_list, "on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, value, **kwargs)
                break
            except BufferError:  # the local queue is full: wait for deliveries
                producer.poll(0.1)
                k.check()
        sent += 1
        producer.poll(0)
    left = producer.flush(timeout)
    k.check()
    if left:
        raise click.ClickException(f"{left} of {sent} record(s) not acknowledged in {timeout:g}s")
    if failed:
        raise click.ClickException(f"{failed} of {sent} record(s) failed: {first_error[0]}")
    click.echo(f"produced {sent} record(s) to {topic}", err=True)


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "backslashreplace")


def render(fmt: str, msg: Any) -> bytes:
    """One record in kcat's format language, or as one JSON line."""
    key, value = msg.key(), msg.value()
    headers = msg.headers() or []
    if fmt == "json":
        obj = {
            "topic": msg.topic(),
            "partition": msg.partition(),
            "offset": msg.offset(),
            "timestamp": msg.timestamp()[1],
            "key": _text(key),
            "value": _text(value),
            "headers": [[h, _text(v)] for h, v in headers],
        }
        return json.dumps(obj).encode() + b"\n"

    def one(m: re.Match[str]) -> bytes:
        token = m.group(0)
        if token in _ESCAPES:
            return _ESCAPES[token]
        code = token[1]
        if code == "t":
            return str(msg.topic()).encode()
        if code == "p":
            return str(msg.partition()).encode()
        if code == "o":
            return str(msg.offset()).encode()
        if code == "T":
            return str(msg.timestamp()[1]).encode()
        if code == "k":
            return key or b""
        if code == "K":
            return str(-1 if key is None else len(key)).encode()
        if code == "s":
            return value or b""
        if code == "S":
            return str(-1 if value is None else len(value)).encode()
        return b",".join(h.encode() + b"=" + (v or b"") for h, v in headers)  # %h

    out = bytearray()
    pos = 0
    for m in _PLACEHOLDER.finditer(fmt):
        out += fmt[pos : m.start()].encode() + one(m)
        pos = m.end()
    return bytes(out + fmt[pos:].encode())


def _offset(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    if value is None or value in ("beginning", "end"):
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(
            f"expected beginning, end, N or -N (N from the end), got {value!r}",
            ctx=ctx,
            param=param,
        ) from None


def _start_offsets(
    k: KafkaClients, consumer: Any, topic: str, parts: list[int], offset: Any, timestamp: Any
) -> list[Any]:
    """TopicPartitions positioned where the user asked."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

    if timestamp is not None:
        asked = [TopicPartition(topic, p, timestamp) for p in parts]
        found = consumer.offsets_for_times(asked, timeout=k.timeout)
        # No record at or after the time: start at the end, as Kafka does.
        return [
            TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
            for tp in found
        ]
    if offset in (None, "end"):
        return [TopicPartition(topic, p, OFFSET_END) for p in parts]
    if offset == "beginning":
        return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
    out = []
    for p in parts:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=k.timeout)
        wanted = high + offset if offset < 0 else offset
        out.append(TopicPartition(topic, p, min(max(wanted, low), high)))
    return out


@click.command()
@click.argument("topic")
@click.option(
    "--partition",
    "partitions",
    type=click.IntRange(min=0),
    multiple=True,
    help="Only this partition (repeatable; not with --group).",
)
@click.option(
    "--offset",
    callback=_offset,
    metavar="beginning|end|N|-N",
    help="Where to start: beginning, end, offset N, or N records before the end [end]. "
    "With --group, beginning and end apply only where the group has committed nothing.",
)
@click.option(
    "--timestamp",
    callback=parse_timestamp,
    metavar="ISO|MS",
    help="Start at the first record at or after this time.",
)
@click.option("--group", help="Consume as this group (commits offsets); default: no group.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after N records.")
@click.option("-e", "--exit-at-end", is_flag=True, help="Stop at the end of every partition.")
@click.option(
    "--format",
    "fmt",
    default="%s\\n",
    show_default=True,
    help="json, or kcat placeholders: %t topic %p partition %o offset %k key %s value "
    "%T timestamp (ms) %h headers %K/%S key/value length; \\n \\t escapes.",
)
@cluster_options
@client_errors
def consume(
    topic: str,
    partitions: tuple[int, ...],
    offset: Any,
    timestamp: int | None,
    group: str | None,
    count: int | None,
    exit_at_end: bool,
    fmt: str,
    bootstrap: str,
    timeout: float,
    extra: dict[str, str],
) -> None:
    """Print records of TOPIC, one per --format."""
    from confluent_kafka import KafkaError

    if offset is not None and timestamp is not None:
        raise click.UsageError("give --offset or --timestamp, not both")
    if group is not None and partitions:
        raise click.UsageError("--partition needs no --group (a group assigns partitions)")
    k = KafkaClients(bootstrap, extra, timeout)
    parts = known_partitions(k, k.metadata(), topic, list(partitions))
    conf: dict[str, Any] = {
        "group.id": group or "shoal-consume",
        "enable.auto.commit": group is not None,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest" if offset == "beginning" else "latest",
    }
    consumer = k.consumer(**conf)
    at_end: set[int] = set()
    assigned: set[int] = set()
    if group is None:
        start = _start_offsets(k, consumer, topic, parts, offset, timestamp)
        consumer.assign(start)
        assigned = set(parts)
    else:

        def on_assign(c: Any, tps: list[Any]) -> None:
            assigned.update(tp.partition for tp in tps)
            # beginning/end only say where to start without a committed
            # offset (auto.offset.reset); N, -N and a time always apply.
            if isinstance(offset, int) or timestamp is not None:
                c.assign(
                    _start_offsets(k, c, topic, [tp.partition for tp in tps], offset, timestamp)
                )

        def on_revoke(_c: Any, tps: list[Any]) -> None:
            assigned.difference_update(tp.partition for tp in tps)

        consumer.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    out = sys.stdout.buffer
    # A terminal sees each record at once; a pipe gets full buffers, flushed
    # whenever the topic goes quiet (a flush per record costs a syscall each).
    eager = out.isatty()
    seen = 0
    try:
        while count is None or seen < count:
            msg = consumer.poll(0.2)
            k.check()
            if msg is None:
                out.flush()
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    if exit_at_end and assigned and assigned <= at_end:
                        break
                    continue
                raise click.ClickException(f"{topic}-{msg.partition()}: {err.str()}")
            at_end.discard(msg.partition())
            out.write(render(fmt, msg))
            if eager:
                out.flush()
            seen += 1
        out.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as kcat does; point
        # stdout at /dev/null so the interpreter's final flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        consumer.close()
