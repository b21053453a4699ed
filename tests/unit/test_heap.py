"""Tests for clipsort.heap: what start-up made kept out of full collections, and given back."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from clipsort.heap import settle


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


def test_what_settled_is_left_out_of_collections_until_the_next_settle() -> None:
    """A settle freezes what is alive; a frozen object that later becomes cyclic garbage (a replaced
    model) survives full collections, and the next settle collects it."""
    kept = _Cyclic()
    settled = settle()
    assert settled.frozen == gc.get_freeze_count() > 0 and settled.cpu_ms >= 0
    gone = weakref.ref(kept)
    del kept
    gc.collect()
    assert gone() is not None, "a frozen cycle was collected: nothing was frozen"
    again = settle()
    assert gone() is None, "the next settle did not give the frozen objects back to the collector"
    assert again.collected >= 1


def test_garbage_made_before_a_settle_is_collected_not_frozen() -> None:
    """A settle collects before it freezes: a cycle already unreachable is freed, never kept."""
    garbage = _Cyclic()
    gone = weakref.ref(garbage)
    del garbage
    settle()
    assert gone() is None
