"""Tests for daemon.demo and ``clipsort demo-model``: an offline model that sorts the shipped example."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from typer.testing import CliRunner

from daemon.cli import app
from daemon.learn.demo import train_tiny_clip
from tests.helpers import tree

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_COLORS = ("red", "green", "blue")  # python -m tests.synthetic wrote img0000 red, img0001 green...


def test_the_demo_model_sorts_the_shipped_example(tiny_model: Path, data_root: Path) -> None:
    """The model `clipsort demo-model` made (the session's tiny CLIP) files every example picture right."""
    shutil.copytree(REPO / "Data" / "example", data_root / "example")
    result = CliRunner().invoke(app, ["sort", "--root", str(data_root), "--model", str(tiny_model), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 9
    for record in records:
        number = int(Path(record["file"]).stem.removeprefix("img"))
        assert record["class"] == EXAMPLE_COLORS[number % 3], record
    assert "Images" not in tree(data_root / "example")


def test_demo_model_never_writes_over_a_folder(tmp_path: Path) -> None:
    """An existing folder is refused with exit 2 and left as it was; nothing half-written stays."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    result = CliRunner().invoke(app, ["demo-model", str(folder)])
    assert result.exit_code == 2 and "exists already" in result.stderr
    assert tree(tmp_path) == {"models": ["mine.txt"]}


def test_training_is_deterministic_and_restores_the_thread_count(tmp_path: Path) -> None:
    """The same seed gives the same bytes of weights; torch's thread count is the caller's again after."""
    threads = torch.get_num_threads()
    weights = [
        hashlib.sha256(
            (train_tiny_clip(tmp_path / f"run{k}", steps=20) / "model.safetensors").read_bytes()
        ).hexdigest()
        for k in range(2)
    ]
    assert weights[0] == weights[1]
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    other = train_tiny_clip(tmp_path / "seed1", steps=20, seed=1) / "model.safetensors"
    assert hashlib.sha256(other.read_bytes()).hexdigest() != weights[0], "the seed matters"
