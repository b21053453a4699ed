"""Small test helpers: folder trees as dicts."""

from __future__ import annotations

from pathlib import Path


def tree(root: Path) -> dict[str, list[str]]:
    """Each folder under ``root`` (relative, '/'-joined) -> sorted file names in it."""
    result: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() or path.is_symlink():
            result.setdefault(path.parent.relative_to(root).as_posix(), []).append(path.name)
    return {folder: sorted(names) for folder, names in result.items()}
