"""Small test helpers: folder trees as dicts, a disk whose renames stall, clipsort as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.store import mover

REPO = Path(__file__).resolve().parents[1]


def unit(*rows: list[float]) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length: hand-written vectors for the classification maths."""
    array = np.asarray(rows, dtype=np.float32)
    scaled: npt.NDArray[np.float32] = array / np.linalg.norm(array, axis=1, keepdims=True)
    return scaled


def python_process(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a real process importing this checkout (offline unless ``env`` says otherwise)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"} if env is None else dict(env)
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**environment, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def clipsort_process(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m daemon ARGS``: clipsort as its console script runs it."""
    return python_process("-m", "daemon", *args, env=env, timeout=timeout)


def tree(root: Path) -> dict[str, list[str]]:
    """Each folder under ``root`` (relative, '/'-joined) -> sorted file names in it."""
    result: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() or path.is_symlink():
            result.setdefault(path.parent.relative_to(root).as_posix(), []).append(path.name)
    return {folder: sorted(names) for folder, names in result.items()}


class GatedRenames(mover.Syscalls):
    """Every rename waits until the gate opens: a disk that stalls while a batch is being placed."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def renameat2(self, source: mover.At, target: mover.At) -> None:
        self.waiting.set()
        if not self.gate.wait(timeout=60):
            raise OSError("the test never opened the gate")
        super().renameat2(source, target)
