"""The broker's collector policy: start-up's heap frozen, young collections rarer."""

from __future__ import annotations

import gc

from shoal.broker import gc_policy


def test_settle_freezes_the_heap_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        # CPython's defaults: another library in this process may have moved
        # them (mypy's API sets 200,000 and leaves it).
        gc.set_threshold(700, 10, 10)
        kept = [object() for _ in range(10)] + [[] for _ in range(10)]
        gc_policy.settle()
        assert gc.get_freeze_count() > len(kept)
        assert gc.get_threshold() == (gc_policy.YOUNG_THRESHOLD, *gc_policy.OLDER_THRESHOLDS)
        assert gc_policy.YOUNG_THRESHOLD > 700
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
