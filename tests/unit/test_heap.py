"""Tests for clipsort.heap: what start-up made kept out of full collections, and given back."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from clipsort.heap import freeze_survivors


class _Cyclic:
    """An object in a reference cycle with itself, as the encoder's objects are: only the cyclic
    collector frees it, never reference counting alone."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    """The test process's collector as it was: nothing frozen after each test."""
    yield
    gc.unfreeze()


def test_what_survived_is_left_out_of_collections_until_the_next_call() -> None:
    """What is alive is frozen; a frozen object that later becomes cyclic garbage (a replaced model)
    survives full collections, and the next call collects it."""
    kept = _Cyclic()
    frozen = freeze_survivors()
    assert frozen.frozen == gc.get_freeze_count() > 0 and frozen.cpu_ms >= 0
    gone = weakref.ref(kept)
    del kept
    gc.collect()
    assert gone() is not None, "a frozen cycle was collected: nothing was frozen"
    again = freeze_survivors()
    assert gone() is None, "the next call did not give the frozen objects back to the collector"
    assert again.collected >= 1


def test_garbage_made_before_the_call_is_collected_not_frozen() -> None:
    """It collects before it freezes: a cycle already unreachable is freed, never kept."""
    garbage = _Cyclic()
    gone = weakref.ref(garbage)
    del garbage
    freeze_survivors()
    assert gone() is None
