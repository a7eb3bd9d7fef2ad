"""A broker's traffic as its heartbeat reports it: bytes in and out a second
since the last heartbeat, and per partition over a longer window.

Only the controller's balancing reads the partitions' rates, once a balance
interval; the heartbeat runs every second. With a fleet's 10,000 partitions,
building and encoding the per-partition map at every heartbeat held the
event loop for ~15 ms each time, so it is built once a window; and then
outside the event loop (`PartitionWindow.to_json` in a worker thread): on
the loop, once a window, it still held every request up for 30-40 ms.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionWindow:
    """The bytes each partition took in and out over a window of `span`
    seconds: handed over whole (no longer counted into), so it may be
    encoded in another thread."""

    parts: dict[tuple[int, int], list[int]]
    span: float

    def as_dict(self) -> dict[str, list[int]]:
        """ "topic_id:partition" -> [bytes in, bytes out] a second."""
        span = max(self.span, 1e-3)
        return {f"{t}:{p}": [int(i / span), int(o / span)] for (t, p), (i, o) in self.parts.items()}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))


class TrafficMeter:
    def __init__(self, window_s: float, now: float | None = None) -> None:
        #: seconds between two per-partition reports
        self.window_s = window_s
        start = time.monotonic() if now is None else now
        self._parts: dict[tuple[int, int], list[int]] = {}
        self._parts_since = start
        self._totals = [0, 0]  # bytes in, out since the last rates()
        self._totals_since = start

    def record(self, topic_id: int, partition: int, bytes_in: int, bytes_out: int) -> None:
        slot = self._parts.setdefault((topic_id, partition), [0, 0])
        slot[0] += bytes_in
        slot[1] += bytes_out
        totals = self._totals
        totals[0] += bytes_in
        totals[1] += bytes_out

    def rates(self, now: float | None = None) -> tuple[int, int, PartitionWindow | None]:
        """(bytes in a second, bytes out a second) since the last call, and
        the partitions' traffic over the window just ended, or None while it
        runs."""
        now = time.monotonic() if now is None else now
        span = max(now - self._totals_since, 1e-3)
        (bytes_in, bytes_out), self._totals = self._totals, [0, 0]
        self._totals_since = now
        rate_in, rate_out = int(bytes_in / span), int(bytes_out / span)
        span = now - self._parts_since
        if span < self.window_s:
            return rate_in, rate_out, None
        self._parts_since = now
        parts, self._parts = self._parts, {}
        return rate_in, rate_out, PartitionWindow(parts, span)
