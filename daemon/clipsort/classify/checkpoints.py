"""Where a dataset's fine-tuned checkpoints are and which one is current (reading only).

``clipsort train`` publishes a checkpoint folder and then replaces the
``current`` pointer file atomically (through the mover); the classifier and
the daemon only read the pointer, so they never see half a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

CURRENT = "current"  # the pointer file naming the published checkpoint folder


def checkpoints_of(state_dir: Path, dataset: str) -> Path:
    """Where a dataset's checkpoints are published by default."""
    return state_dir / "checkpoints" / dataset


def current_checkpoint(folder: Path) -> Path | None:
    """The published checkpoint in ``folder`` (what its ``current`` pointer names), or None."""
    try:
        name = (folder / CURRENT).read_text().strip()
    except OSError:
        return None
    return folder / name if name and (folder / name).is_dir() else None
