"""Tests for clipsort.classify.catalog: debounced rebuilds and atomic swaps of class indexes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from clipsort.classify.catalog import Catalog
from clipsort.config import load_settings
from clipsort.encode.encoder import Encoder
from clipsort.encode.factory import make_embedder
from tests.synthetic import draw, make_dataset, save


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_debounce_swap_waiting_and_availability(data_root: Path, encoder: Encoder) -> None:
    """Rebuilds wait for quiet; a snapshot taken before a rebuild never changes; waiting is tracked."""
    make_dataset(data_root / "ds", {"red": "red"}, references=2)
    (data_root / "empty" / "Images").mkdir(parents=True)
    settings = load_settings(None, {"root": data_root})
    embedder = make_embedder(settings, encoder)
    available: list[str] = []
    clock = Clock()
    catalog = Catalog(settings, on_available=available.append, clock=clock)

    catalog.request(["ds", "empty"], delay=1.0)
    catalog.rebuild_due(embedder)
    assert catalog.snapshot() == {}
    clock.now = 1.0
    catalog.rebuild_due(embedder)
    before = catalog.snapshot()
    assert list(before) == ["ds"] and before["ds"].index.classes == ("red",)
    assert catalog.waiting() == {"empty"}
    assert available == ["ds"]

    save(draw(np.random.default_rng(0), "blue"), data_root / "ds" / "Clases" / "blue" / "b.png")
    catalog.request(["ds"], delay=1.0)
    clock.now = 1.5
    catalog.request(["ds"], delay=1.0)  # another event pushes the deadline back
    clock.now = 2.2
    catalog.rebuild_due(embedder)
    assert catalog.snapshot()["ds"].index.classes == ("red",)
    clock.now = 2.6
    catalog.rebuild_due(embedder)
    assert catalog.snapshot()["ds"].index.classes == ("blue", "red")
    assert before["ds"].index.classes == ("red",), "an old snapshot must never change under a batch"
    assert available == ["ds"], "a rebuild of an available dataset is not a new availability"

    shutil.rmtree(data_root / "ds")
    catalog.request(["ds"], delay=0)
    catalog.rebuild_due(embedder)
    assert "ds" not in catalog.snapshot()
