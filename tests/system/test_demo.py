"""Tests for clipsort.learn.demo and ``clipsort demo-model``: an offline model for the shipped example."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clipsort.cli import app
from clipsort.learn.demo import train_tiny_clip
from tests.helpers import predicted, tree

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_COLORS = ("red", "green", "blue")  # python -m tests.synthetic wrote img0000 red, img0001 green...


def test_the_demo_model_sorts_the_shipped_example(tiny_model: Path, data_root: Path) -> None:
    """The model `clipsort demo-model` made (the session's tiny CLIP) files every example picture right."""
    # As the README's first command lays it out: the shipped classes, the pictures copied into the inbox.
    shutil.copytree(REPO / "Data" / "example", data_root / "example")
    shutil.copytree(REPO / "examples" / "inbox", data_root / "example" / "Images")
    result = CliRunner().invoke(app, ["sort", "--root", str(data_root), "--model", str(tiny_model), "--json"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 9
    for record in records:
        number = int(Path(record["file"]).stem.removeprefix("img"))
        assert predicted(record) == EXAMPLE_COLORS[number % 3], record
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


@pytest.mark.skipif(
    not (REPO / ".git").exists() or shutil.which("git") is None, reason="needs a git checkout"
)
def test_running_the_readme_example_leaves_git_status_clean() -> None:
    """What the first run makes or moves under Data/ is ignored by git; nothing tracked is moved away."""

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)

    tracked = git("ls-files", "Data").stdout.split()
    assert tracked and all("/Clases/" in path for path in tracked), "only the references are tracked"
    made = [
        "Data/example/Images/img0000.png",
        "Data/example/Dataset/red/img0000.png",
        "Data/example/Review/img0009.png",
        "Data/example/Rejected/notes.txt",
        "Data/.clipsort/journal.db",
        "models/demo/model.safetensors",
    ]
    ignored = git("check-ignore", "--no-index", *made).stdout.split()
    assert ignored == made
