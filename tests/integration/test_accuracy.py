"""Integration: the one-shot sorter really sorts held-out pictures with the tiny trained CLIP."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsort.config import load_settings
from clipsort.encode.encoder import Encoder
from clipsort.encode.factory import make_embedder
from clipsort.layout import discover
from clipsort.sort.oneshot import gather, run
from clipsort.sort.pipeline import Outcome
from tests.synthetic import COLORS, make_dataset


@pytest.mark.parametrize(("mode", "aggregate"), [("text", "max"), ("reference", "max"), ("reference", "avg")])
def test_held_out_accuracy_at_least_90_percent(
    data_root: Path, encoder: Encoder, mode: str, aggregate: str
) -> None:
    """60 unseen pictures (new positions, sizes, shapes, backgrounds) land in their colour's folder."""
    truth = make_dataset(
        data_root / "colors", {c: c for c in COLORS}, references=4, inbox=list(COLORS) * 10, seed=99
    )
    settings = load_settings(None, {"root": data_root, "mode": mode, "aggregate": aggregate})
    embedder = make_embedder(settings, encoder)
    outcomes: list[Outcome] = []
    work = gather(discover(data_root), settings, embedder, named=False)
    run(work, settings, embedder, journal=None, dry_run=False, on_outcome=outcomes.append)
    assert len(outcomes) == 60
    correct = sum(o.destination.parent.name == truth[o.source.name] for o in outcomes)
    assert all(o.destination.exists() and not o.source.exists() for o in outcomes)
    assert correct / len(outcomes) >= 0.9, f"{mode}-{aggregate}: {correct}/60"
