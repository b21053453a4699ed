"""Tests for clipsort.service.status: the status file and liveness."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from clipsort.cli import app
from clipsort.service.status import STATUS_FILE, DatasetStatus, Status, is_live, read_status, write_status


def status(pid: int, updated: float) -> Status:
    return Status(
        pid=pid,
        started_at=updated - 60,
        updated_at=updated,
        interval=2.0,
        state="running",
        device="cpu",
        model="m",
        version="0",
        datasets={"a": DatasetStatus(sorted=3, rejected=1, queued=2, classes=4)},
    )


def test_round_trip(tmp_path: Path) -> None:
    """What is written is read back, dataset counts included."""
    write_status(tmp_path, status(os.getpid(), time.time()))
    found = read_status(tmp_path)
    assert found is not None and found.datasets["a"].rejected == 1
    assert [p.name for p in tmp_path.iterdir()] == [STATUS_FILE]


def test_liveness_needs_a_live_pid_and_a_fresh_file(tmp_path: Path) -> None:
    """A stale file, or one left by a dead process, does not count as running."""
    now = time.time()
    assert is_live(status(os.getpid(), now))
    assert not is_live(status(os.getpid(), now - 60))
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    assert not is_live(status(int(done.stdout), now))


def test_missing_or_corrupt_file_reads_as_none(tmp_path: Path) -> None:
    """No status file, or garbage in it, is 'no daemon'."""
    assert read_status(tmp_path) is None
    (tmp_path / STATUS_FILE).write_text("{not json")
    assert read_status(tmp_path) is None


def test_status_fits_80_columns(data_root: Path) -> None:
    """`clipsort status` at 80 columns: no line wraps or runs over, long names and paths are cut."""
    state = data_root / ".clipsort"
    state.mkdir()
    found = status(os.getpid(), time.time())
    found.model = "/srv/models/" + "a-very-long-model-folder-name/" * 4 + "clip-vit-base-patch32"
    found.last_error = "the destination folder could not be written: " + "x" * 100
    found.datasets["photographs-of-the-family-archive-2026"] = DatasetStatus(sorted=123456, queued=7)
    write_status(state, found)
    shown = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["status", "--root", str(data_root)])
    assert shown.exit_code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, shown.stdout
    header = next(line for line in lines if "dataset" in line)
    assert all(name in header for name in ("classes", "sorted", "unknown", "uncertain", "corrections"))
    assert any("123456" in line for line in lines) and any(
        line.endswith("clip-vit-base-patch32") for line in lines
    )


def test_status_says_which_dataset_is_degraded_and_why(data_root: Path) -> None:
    state = data_root / ".clipsort"
    state.mkdir()
    found = status(os.getpid(), time.time())
    found.datasets["a"].degraded = "Images/ not watched: OSError: inotify watch limit reached"
    write_status(state, found)
    shown = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["status", "--root", str(data_root)])
    assert shown.exit_code == 0 and "a: degraded, sorted by rescans only: Images/ not watched" in shown.stdout
    read = read_status(state)
    assert (
        read is not None
        and read.datasets["a"].degraded is not None
        and "watch limit" in read.datasets["a"].degraded
    )
