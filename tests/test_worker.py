"""Tests for daemon.worker in-process: the model classifies the next batch while the last is placed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from daemon.config import load_settings
from daemon.ingest.scanner import content_hash
from daemon.service.wiring import Service
from daemon.store import mover
from tests.helpers import GatedRenames
from tests.synthetic import draw, make_dataset, save
from tests.waiting import wait_until


def test_the_next_batch_is_classified_while_the_last_is_placed(
    data_root: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the first batch's moves held up, the second batch is still encoded; then all four land."""
    make_dataset(data_root / "rgb", {"red": "red", "blue": "blue"}, references=2)
    inbox = data_root / "rgb" / "Images"
    colors = ["red", "blue", "blue", "red"]
    files = [inbox / f"p{k}.png" for k in range(len(colors))]
    for k, (path, color) in enumerate(zip(files, colors, strict=True)):
        save(draw(np.random.default_rng(k), color), path)
        os.utime(path, (time.time() - 60, time.time() - 60))  # an old backlog: ready at the first scan
    syscalls = GatedRenames()
    monkeypatch.setattr(mover, "SYSCALLS", syscalls)
    settings = load_settings(
        None,
        {"root": data_root, "model": str(tiny_model), "batch_size": 2, "settle_seconds": 0.1},
    )
    service = Service(settings, None, {})
    service.catalog.request(["rgb"], 0.0)
    service.catalog.rebuild_due(service.embedder)
    service.intake.start()
    service.worker.start()
    try:
        assert syscalls.waiting.wait(timeout=30), "the first batch never reached its moves"
        keys = [content_hash(path) for path in files]
        # Every file has been through the model (its vector is cached at classification) while
        # none has moved: the model did not wait for the placer.
        wait_until(
            lambda: len(service.cache.get(service.embedder.clip.identity, keys)) == len(files), timeout=30
        )
        assert all(path.exists() for path in files)
        syscalls.gate.set()
        for path, color in zip(files, colors, strict=True):
            wait_until((data_root / "rgb" / "Dataset" / color / path.name).exists, timeout=30)
    finally:
        syscalls.gate.set()
        service.intake.stop()
        assert service.worker.stop(timeout=10)
        service.cache.close()
        service.journal.close()
