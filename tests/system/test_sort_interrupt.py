"""Ctrl-C stops `clipsort sort` promptly in every phase, never half-way through a batch, losing nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsort.store.journal import Journal
from tests.daemonproc import children, slots
from tests.synthetic import make_dataset
from tests.waiting import wait_until

FILES = 1500
BATCH = 32
REPO = Path(__file__).resolve().parents[2]


def inbox_of_noise(inbox: Path) -> dict[str, str]:
    """``FILES`` small PNGs of coloured noise, every one different; content hash -> name."""
    rng = np.random.default_rng(11)
    hashes = {}
    for k in range(FILES):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        pixels[..., k % 3] = 255
        path = inbox / f"n{k:04d}.png"
        Image.fromarray(pixels).save(path)
        hashes[hashlib.sha256(path.read_bytes()).hexdigest()] = path.name
    return hashes


def contents(dataset: Path) -> list[str]:
    """The content hash of every file in the dataset but its references."""
    return sorted(
        hashlib.sha256(path.read_bytes()).hexdigest()
        for area in ("Images", "Dataset", "Review", "Rejected")
        for path in (dataset / area).rglob("*")
        if path.is_file()
    )


class Sorting:
    """`clipsort sort` in a session of its own (a terminal's process group), its JSON log read as it comes."""

    def __init__(self, root: Path, model: Path, state: Path) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "HF_HUB_OFFLINE": "1",
            "CLIPSORT_LOG_FORMAT": "json",
            "CLIPSORT_STATE_DIR": str(state),
            "CLIPSORT_BATCH_SIZE": str(BATCH),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clipsort", "sort", "--root", str(root), "--model", str(model)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def events(self, *names: str) -> int:
        """How many log lines of these events were read so far."""
        lines = list(self.lines)
        return sum(1 for line in lines if line.startswith("{") and json.loads(line)["event"] in names)

    def interrupt(self) -> float:
        """Ctrl-C as a terminal sends it (SIGINT to the foreground group); seconds until it ended."""
        started = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        return time.monotonic() - started


def decoding_processes(pid: int) -> list[int]:
    return children(pid, b"decodeprocesses")


OUTCOMES = ("sorted", "review", "rejected")  # a file's line, once it is placed
PHASES: dict[str, Callable[[Sorting], object]] = {
    "decoding processes starting": lambda run: decoding_processes(run.process.pid),
    "model loading": lambda run: run.events("model_loading"),
    "a batch in flight": lambda run: run.events(*OUTCOMES),
    "placing": lambda run: run.events(*OUTCOMES) >= 10 * BATCH,
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_ctrl_c_stops_sort_promptly_in_every_phase_and_loses_nothing(
    data_root: Path, tiny_model: Path, tmp_path: Path, phase: str
) -> None:
    dataset = data_root / "rgb"
    make_dataset(dataset, {"red": "red", "green": "green", "blue": "blue"}, references=2, seed=3)
    originals = inbox_of_noise(dataset / "Images")
    run = Sorting(data_root, tiny_model, tmp_path / "state")
    try:
        wait_until(lambda: PHASES[phase](run) or run.process.poll() is not None, timeout=120)
        assert run.process.poll() is None, "\n".join(run.lines[-3:])
        took = run.interrupt()
    finally:
        if run.process.poll() is None:
            run.process.kill()
    log = "\n".join(run.lines[-30:])
    assert run.process.returncode == 130, log
    assert took < 20, f"stopped {took:.1f} s after Ctrl-C"
    assert run.lines[-1].startswith("clipsort: interrupted:"), log
    assert "Traceback" not in "\n".join(run.lines), log
    assert contents(dataset) == sorted(originals), "every file once: in the inbox or placed"
    left = len(list((dataset / "Images").iterdir()))
    placed = FILES - left
    assert placed % BATCH == 0, f"{placed} placed: a batch was cut in half"
    assert f"{placed} file(s) were placed" in run.lines[-1]
    if phase in ("decoding processes starting", "model loading"):
        assert placed == 0
    assert not decoding_processes(run.process.pid)
    assert not slots(run.process.pid)
    assert run.events("decoder_not_started") == 0, "no decoding process died of the Ctrl-C"
    if (tmp_path / "state" / "journal.db").exists():
        with Journal(tmp_path / "state") as journal:
            assert journal.planned() == [], "no move left half-done"
            moved = [entry for entry in journal.entries() if entry.state == "moved"]
        assert len(moved) == placed
