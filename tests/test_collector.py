"""The run's garbage-collector setting (``ingest.engine.collector``): fewer young collections while it
sends, everything as it was afterwards."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ingest.engine.collector import RUN_THRESHOLD, fewer_collections


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    gc.enable() if enabled else gc.disable()
    gc.unfreeze()


def test_a_run_collects_less_often_and_leaves_the_startup_objects_out() -> None:
    gc.set_threshold(700, 10, 10)
    with fewer_collections():
        assert gc.get_threshold() == (RUN_THRESHOLD, 10, 10)
        assert gc.get_freeze_count() > 0  # modules and settings, never garbage: not walked again
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_the_setting_is_restored_when_the_run_fails() -> None:
    gc.set_threshold(700, 10, 10)
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("boom")
    assert (gc.get_threshold(), gc.get_freeze_count()) == ((700, 10, 10), 0)


@pytest.mark.parametrize("threshold", [0, 50_000])
def test_a_process_with_its_own_setting_keeps_it(threshold: int) -> None:
    gc.set_threshold(threshold, 10, 10)
    with fewer_collections():
        assert gc.get_threshold() == (threshold, 10, 10)
        assert gc.get_freeze_count() == 0


def test_a_disabled_collector_stays_disabled() -> None:
    gc.disable()
    with fewer_collections():
        assert not gc.isenabled()
        assert gc.get_freeze_count() == 0
