"""Small test helpers: folder trees as dicts, a disk whose renames stall, clipsort as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from daemon import mover

REPO = Path(__file__).resolve().parents[1]


def clipsort_process(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m daemon ARGS`` in a real process (offline unless ``env`` says otherwise)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"} if env is None else dict(env)
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        env={**environment, "PYTHONPATH": str(REPO)},
        timeout=timeout,
        check=False,
    )


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

    def renameat2(self, source: Path, target: Path) -> None:
        self.waiting.set()
        if not self.gate.wait(timeout=60):
            raise OSError("the test never opened the gate")
        super().renameat2(source, target)
