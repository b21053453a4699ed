"""Tests for daemon.sorter in-process: one-shot sorting places a batch while the next is classified."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon import mover
from daemon.catalog import make_embedder
from daemon.config import Settings, load_settings
from daemon.embedcache import EmbeddingCache, content_hash
from daemon.embeddings import Embedder
from daemon.encoder import Encoder
from daemon.images import Crop
from daemon.journal import Journal
from daemon.layout import discover
from daemon.mover import make_state_dir
from daemon.pipeline import Outcome
from daemon.sorter import Work, gather, run
from tests.helpers import GatedRenames, tree
from tests.synthetic import draw, make_dataset, save
from tests.waiting import wait_until

COLORS = ["red", "blue", "blue", "red"]


@pytest.fixture
def inbox(data_root: Path) -> list[Path]:
    """Four pictures waiting in the inbox of a red/blue dataset; two batches of two."""
    make_dataset(data_root / "rgb", {"red": "red", "blue": "blue"}, references=2)
    files = [data_root / "rgb" / "Images" / f"p{k}.png" for k in range(len(COLORS))]
    for k, (path, color) in enumerate(zip(files, COLORS, strict=True)):
        save(draw(np.random.default_rng(k), color), path)
    return files


@pytest.fixture
def settings(data_root: Path, tiny_model: Path) -> Settings:
    return load_settings(None, {"root": data_root, "model": str(tiny_model), "batch_size": 2})


@pytest.fixture
def embedder(settings: Settings, encoder: Encoder, tmp_path: Path) -> Iterator[Embedder]:
    """The session's tiny model with a fresh vector cache (which shows what has been classified)."""
    with EmbeddingCache(tmp_path / "cache.sqlite3") as cache:
        yield make_embedder(settings, encoder, cache)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    make_state_dir(tmp_path / "state")
    with Journal(tmp_path / "state") as opened:
        yield opened


def sort_all(settings: Settings, embedder: Embedder, journal: Journal, outcomes: list[Outcome]) -> None:
    gathered = work(settings, embedder)
    run(gathered, settings, embedder, journal=journal, dry_run=False, on_outcome=outcomes.append)


def work(settings: Settings, embedder: Embedder) -> list[Work]:
    return gather(discover(settings.root), settings, embedder, named=False)


def test_the_next_batch_is_classified_while_the_last_is_placed(
    inbox: list[Path],
    settings: Settings,
    embedder: Embedder,
    journal: Journal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the first batch's moves held up, the second batch is still encoded; then all four land."""
    syscalls = GatedRenames()
    monkeypatch.setattr(mover, "SYSCALLS", syscalls)
    outcomes: list[Outcome] = []
    sorting = threading.Thread(target=sort_all, args=(settings, embedder, journal, outcomes))
    sorting.start()
    try:
        assert syscalls.waiting.wait(timeout=30), "the first batch never reached its moves"
        cache, keys = embedder.cache, [content_hash(path) for path in inbox]
        assert cache is not None
        # Every file's vector is cached at classification while none has moved.
        wait_until(lambda: len(cache.get(embedder.encoder.identity, keys)) == len(inbox), timeout=30)
        assert all(path.exists() for path in inbox) and outcomes == []
    finally:
        syscalls.gate.set()
        sorting.join(timeout=60)
    assert not sorting.is_alive()
    assert [outcome.decision.label for outcome in outcomes if outcome.decision] == COLORS
    assert tree(settings.root / "rgb" / "Dataset") == {
        "blue": ["p1.png", "p2.png"],
        "red": ["p0.png", "p3.png"],
    }


class FailingRename(mover.Syscalls):
    """The rename of one file fails, as on a disk that has just filled up."""

    def __init__(self, name: str) -> None:
        self.name = name

    def renameat2(self, source: Path, target: Path) -> None:
        if source.name == self.name:
            raise OSError(28, os.strerror(28))
        super().renameat2(source, target)


def test_a_file_that_cannot_be_placed_stops_the_run_before_the_next_batch_moves(
    inbox: list[Path],
    settings: Settings,
    embedder: Embedder,
    journal: Journal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first failure is raised; files before it are reported, the later batch stays in the inbox."""
    monkeypatch.setattr(mover, "SYSCALLS", FailingRename("p1.png"))
    outcomes: list[Outcome] = []
    with pytest.raises(OSError, match="No space left"):
        sort_all(settings, embedder, journal, outcomes)
    assert [outcome.source.name for outcome in outcomes] == ["p0.png"]
    assert tree(settings.root / "rgb" / "Images") == {".": ["p1.png", "p2.png", "p3.png"]}


def test_a_batch_being_placed_is_finished_and_reported_when_the_next_cannot_be_classified(
    inbox: list[Path],
    settings: Settings,
    embedder: Embedder,
    journal: Journal,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model failing on batch two leaves batch one moved and reported, and the error raised."""
    encode = embedder.encoder.encode_images
    calls: list[int] = []

    def fails_second_time(images: Sequence[Image.Image | Crop]) -> np.ndarray:
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("the device went away")
        return encode(images)

    gathered = work(settings, embedder)  # the references are encoded before the failures begin
    monkeypatch.setattr(embedder.encoder, "encode_images", fails_second_time)
    outcomes: list[Outcome] = []
    with pytest.raises(RuntimeError, match="device went away"):
        run(gathered, settings, embedder, journal=journal, dry_run=False, on_outcome=outcomes.append)
    assert [outcome.source.name for outcome in outcomes] == ["p0.png", "p1.png"]
    assert tree(settings.root / "rgb" / "Images") == {".": ["p2.png", "p3.png"]}
