"""A broker's traffic as its heartbeat reports it: bytes in and out a second
since the last heartbeat, and per partition over a longer window.

Only the controller's balancing reads the partitions' rates, once a balance
interval; the heartbeat runs every second. With a fleet's 10,000 partitions,
building and encoding the per-partition map at every heartbeat held the
event loop for ~15 ms each time, so it is built once a window.
"""

from __future__ import annotations

import time


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

    def rates(self, now: float | None = None) -> tuple[int, int, dict[str, list[int]] | None]:
        """(bytes in a second, bytes out a second) since the last call, and
        each partition's ("topic_id:partition" -> [in, out] a second) over
        the window just ended, or None while it runs."""
        now = time.monotonic() if now is None else now
        span = max(now - self._totals_since, 1e-3)
        (bytes_in, bytes_out), self._totals = self._totals, [0, 0]
        self._totals_since = now
        rate_in, rate_out = int(bytes_in / span), int(bytes_out / span)
        span = now - self._parts_since
        if span < self.window_s:
            return rate_in, rate_out, None
        span = max(span, 1e-3)
        self._parts_since = now
        parts, self._parts = self._parts, {}
        load = {f"{t}:{p}": [int(i / span), int(o / span)] for (t, p), (i, o) in parts.items()}
        return rate_in, rate_out, load
