"""Logging set-up, with repeated warnings summarised instead of repeated.

A client that sends garbage in a loop, or a thousand sites reconnecting at
once, would otherwise write the same line thousands of times a minute and bury
everything else. Each kind of message (logger, level, format string) from each
client address gets `burst` lines per `window`; the rest are counted and
reported in one summary line when the window closes.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_Key = tuple[str, int, str, str]


@dataclass(slots=True)
class _Window:
    start: float
    shown: int = 0
    suppressed: int = 0


def _address_of(record: logging.LogRecord) -> str:
    """The client's IP address among the record's arguments, if any: objects
    with a `peer` ("host:port") or strings that look like one."""
    args = record.args if isinstance(record.args, tuple) else ()
    for arg in args:
        peer = getattr(arg, "peer", None)
        if isinstance(peer, str):
            return peer.rpartition(":")[0] or peer
    for arg in args:
        if isinstance(arg, str) and arg.count(".") == 3 and ":" in arg:
            return arg.rpartition(":")[0]
    return ""


class RateLimitFilter(logging.Filter):
    """Lets `burst` records of one kind from one address through per `window`
    seconds; summarises the rest. Only WARNING and above are limited (INFO
    lines are one per event and already rare per client)."""

    def __init__(self, burst: int = 5, window: float = 60.0, max_keys: int = 10_000) -> None:
        super().__init__()
        self.burst = burst
        self.window = window
        self.max_keys = max_keys
        self._windows: dict[_Key, _Window] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "summary", False):
            return True
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        self._sweep(now)
        key = (record.name, record.levelno, str(record.msg), _address_of(record))
        with self._lock:
            w = self._windows.get(key)
            if w is None:
                if len(self._windows) >= self.max_keys:
                    return True  # too many kinds to track: pass through
                w = self._windows[key] = _Window(now)
            if w.shown < self.burst:
                w.shown += 1
                return True
            w.suppressed += 1
            return False

    def sweep(self, now: float) -> None:
        self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Close expired windows, logging one summary line for each that
        suppressed something."""
        if now < self._next_sweep:
            return
        summaries: list[tuple[_Key, int]] = []
        with self._lock:
            self._next_sweep = now + min(self.window / 4, 5.0)
            for key, w in list(self._windows.items()):
                if now - w.start >= self.window:
                    del self._windows[key]
                    if w.suppressed:
                        summaries.append((key, w.suppressed))
        for (name, level, msg, address), count in summaries:
            logging.getLogger(name).log(
                level,
                "%d more like %r%s in the last %ds (rate-limited)",
                count,
                msg,
                f" from {address}" if address else "",
                int(self.window),
                extra={"summary": True},
            )

    def flush(self) -> None:
        """Summarise every open window now (at shutdown, or from a timer)."""
        self._next_sweep = 0.0
        self._sweep(time.monotonic() + self.window)


_FILTER: RateLimitFilter | None = None


def configure(level: str = "INFO", burst: int = 5, window: float = 60.0) -> RateLimitFilter:
    """stderr logging, one line per event, with repeats rate-limited."""
    global _FILTER
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    _FILTER = RateLimitFilter(burst, window)
    handler.addFilter(_FILTER)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return _FILTER


def sweep_summaries() -> None:
    """Write the summaries of windows that have closed, even when nothing
    else is being logged (called from a periodic task)."""
    if _FILTER is not None:
        _FILTER.sweep(time.monotonic())


def flush_summaries() -> None:
    if _FILTER is not None:
        _FILTER.flush()
