"""Where the controller puts a dead broker's partitions (pure, no cluster):
not on another broker that has stopped renewing but whose lease has not
run out yet (a zone dying broker by broker)."""

from __future__ import annotations

from shoal.cluster.controller import orphan_target
from shoal.meta.cluster import BrokerRow

NOW = 1_000_000


def broker(node: int, lease_left_ms: int) -> BrokerRow:
    return BrokerRow(node, 1, "h", 9000, None, 0, NOW + lease_left_ms, False, 0, 0, {})


def test_a_broker_that_stopped_renewing_gets_no_orphans() -> None:
    live = [broker(1, 1_500), broker(2, 5_800), broker(3, 5_100)]
    counts = {1: 0, 2: 3, 3: 2}  # 1 has the fewest, but renewed 4.5 s ago
    assert orphan_target(counts, live, NOW, fresh_ms=4_000) == 3


def test_all_late_falls_back_to_the_fewest() -> None:
    live = [broker(1, 1_500), broker(2, 900)]
    assert orphan_target({1: 2, 2: 1}, live, NOW, fresh_ms=4_000) == 2


def test_without_a_threshold_the_fewest_wins() -> None:
    live = [broker(1, 1_500), broker(2, 5_800)]
    assert orphan_target({1: 0, 2: 3}, live, NOW, fresh_ms=0) == 1
