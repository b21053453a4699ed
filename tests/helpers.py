"""Small test helpers: folder trees as dicts, a disk whose renames stall."""

from __future__ import annotations

import threading
from pathlib import Path

from daemon import mover


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
