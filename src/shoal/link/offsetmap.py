"""A reverse link's offset map for one partition, sans-IO: which source offset
a Shoal offset was copied to, kept as ranges.

The reverse link produces records back to the old cluster, which assigns its
own offsets (Apache Kafka cannot take records at given offsets). Each batch
keeps its offset span, so a run of batches the source took one after another
is one range; a new range starts only where the two logs drift apart (a
transaction marker here, which is not copied). Before the first range offsets
are identical: everything up to the promotion was mirrored at the source's
offsets. Group offsets are translated through the map as MirrorMaker 2's
checkpoints do.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field


class MapError(ValueError):
    """The map cannot take a range: it would go backwards or overlap."""


@dataclass(slots=True)
class Range:
    shoal_start: int
    source_start: int
    count: int

    @property
    def shoal_end(self) -> int:
        return self.shoal_start + self.count

    @property
    def source_end(self) -> int:
        return self.source_start + self.count


@dataclass(slots=True)
class OffsetMap:
    """Ranges in Shoal offset order; the first (possibly empty) range marks
    where the reverse copy began (the promotion point)."""

    ranges: list[Range] = field(default_factory=list)
    dirty: set[int] = field(default_factory=set)  # shoal_start of ranges to save

    @classmethod
    def starting_at(cls, offset: int) -> OffsetMap:
        m = cls([Range(offset, offset, 0)])
        m.dirty.add(offset)
        return m

    @property
    def shoal_end(self) -> int:
        """The next Shoal offset the map has no range for."""
        return self.ranges[-1].shoal_end

    @property
    def source_end(self) -> int:
        """The source offset the next copied record gets."""
        return self.ranges[-1].source_end

    @property
    def copied(self) -> int:
        return sum(r.count for r in self.ranges)

    def add(self, shoal_start: int, source_start: int, count: int) -> None:
        """Record that `count` offsets from `shoal_start` are at `source_start`
        on the source; merged into the last range when it continues it."""
        last = self.ranges[-1]
        if shoal_start < last.shoal_end or source_start < last.source_end or count <= 0:
            raise MapError(
                f"range {shoal_start}+{count} -> {source_start} does not follow "
                f"{last.shoal_start}+{last.count} -> {last.source_start}"
            )
        if shoal_start == last.shoal_end and source_start == last.source_end:
            last.count += count
            self.dirty.add(last.shoal_start)
            return
        self.ranges.append(Range(shoal_start, source_start, count))
        self.dirty.add(shoal_start)

    def translate(self, offset: int) -> int:
        """The source position equivalent to Shoal position `offset` (a
        committed offset: the next record to read). Before the reverse copy
        began offsets are identical; an offset in a gap (a record that was not
        copied) moves to the next copied record; past the map, the source's end."""
        first = self.ranges[0]
        if offset <= first.shoal_start:
            return offset - first.shoal_start + first.source_start
        i = bisect_right([r.shoal_start for r in self.ranges], offset) - 1
        r = self.ranges[i]
        if offset <= r.shoal_end:
            return r.source_start + (offset - r.shoal_start)
        return self.ranges[i + 1].source_start if i + 1 < len(self.ranges) else self.source_end

    def take_dirty(self) -> list[Range]:
        """Ranges changed since the last call (to save them)."""
        by_start = {r.shoal_start: r for r in self.ranges}
        out = [by_start[s] for s in sorted(self.dirty) if s in by_start]
        self.dirty.clear()
        return out
