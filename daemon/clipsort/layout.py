"""Where a dataset's folders are: ``Data/<dataset>/{Clases,Images,Dataset}``.

The layout is the original project's and is kept exactly; ``Rejected/`` (files
that are not readable images) sits beside them.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from clipsort.errors import DatasetError, UnknownDatasetError

log = structlog.get_logger()

CLASSES_DIR = "Clases"
INBOX_DIR = "Images"
SORTED_DIR = "Dataset"
REJECTED_DIR = "Rejected"
REVIEW_DIR = "Review"
# Clases/_none/: pictures of "none of these" (the unknown gate's negatives), never a class of its own.
NEGATIVES_DIR = "_none"


@dataclass(frozen=True)
class DatasetLayout:
    """The folders of one dataset under the data root."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @functools.cached_property  # the placer asks for it per file
    def classes(self) -> Path:
        return self.root / CLASSES_DIR

    @functools.cached_property  # the placer asks for it per file
    def inbox(self) -> Path:
        return self.root / INBOX_DIR

    @functools.cached_property  # the placer asks for it per file
    def sorted(self) -> Path:
        return self.root / SORTED_DIR

    @functools.cached_property  # the placer asks for it per file
    def rejected(self) -> Path:
        return self.root / REJECTED_DIR

    @functools.cached_property  # the placer asks for it per file
    def review(self) -> Path:
        return self.root / REVIEW_DIR

    @functools.cached_property  # the placer asks for it per file
    def negatives(self) -> Path:
        return self.classes / NEGATIVES_DIR

    def class_dir(self, label: str) -> Path:
        """``Dataset/<label>``; labels only ever come from folder names.

        One ``Path`` per class, made once: the placer asks per file, and a fresh ``Path`` is parsed
        and its string built again each time.
        """
        if (found := self._class_dirs.get(label)) is None:
            found = self._class_dirs[label] = self.sorted / label
        return found

    @functools.cached_property
    def _class_dirs(self) -> dict[str, Path]:
        return {}

    def sorted_class_dirs(self) -> list[Path]:
        """The real (non-symlink) folders in ``Dataset/``, sorted; none when it does not exist."""
        try:
            return sorted(Path(e.path) for e in os.scandir(self.sorted) if e.is_dir(follow_symlinks=False))
        except OSError:
            return []


def is_dataset(path: Path) -> bool:
    """A real (non-symlink) folder holding ``Clases/`` or ``Images/``."""
    return (
        path.is_dir()
        and not path.is_symlink()
        and not path.name.startswith(".")
        and ((path / CLASSES_DIR).is_dir() or (path / INBOX_DIR).is_dir())
    )


def discover(root: Path) -> list[DatasetLayout]:
    """Every dataset under ``root``, sorted by name."""
    if not root.is_dir():
        raise DatasetError(f"data root {str(root)!r} does not exist or is not a folder")
    return [DatasetLayout(path) for path in sorted(root.iterdir()) if is_dataset(path)]


def require_data_root(root: Path) -> None:
    """DatasetError unless ``root`` is an existing folder that is not itself a dataset.

    A root that does not exist would otherwise be created (its state folder inside), and one that
    is a dataset would hold no dataset: either way the daemon would idle for good, sorting nothing.
    Checked by the commands before the model loads, and by a reload that changes the root.
    """
    if not root.is_dir():
        raise DatasetError(
            f"data root {str(root)!r} does not exist or is not a folder: pass --root with the folder "
            f"that holds your datasets (each with {CLASSES_DIR}/ and {INBOX_DIR}/), or set root in the config"
        )
    inside = [name for name in (CLASSES_DIR, INBOX_DIR) if (root / name).is_dir()]
    if inside:
        raise DatasetError(
            f"{str(root)!r} is a dataset (it holds {inside[0]}/), not the data root: "
            f"use --root {str(root.parent)!r}, the folder that holds it"
        )


def select(root: Path, names: Sequence[str]) -> list[DatasetLayout]:
    """The named datasets (all of them when ``names`` is empty)."""
    found = discover(root)
    if not names:
        return found
    by_name = {layout.name: layout for layout in found}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        existing = ", ".join(by_name) or "none"
        raise UnknownDatasetError(
            f"unknown dataset {', '.join(map(repr, unknown))} under {str(root)!r}; existing: {existing}"
        )
    return [by_name[name] for name in names]


def warn_unknown_tables(tables: Iterable[str], root: Path) -> list[str]:
    """Log a warning for each ``[datasets.<name>]`` table that names no dataset under ``root``.

    A misspelt table would otherwise be ignored without a word. Returns the
    names warned about; nothing when ``root`` is not there yet (the caller's
    own checks report that).
    """
    names = sorted(tables)
    if not names or not root.is_dir():
        return []
    existing = [layout.name for layout in discover(root)]
    unknown = [name for name in names if name not in existing]
    for name in unknown:
        nearest = difflib.get_close_matches(name, existing, n=1, cutoff=0.5)
        log.warning(
            "dataset_table_unknown",
            table=f"[datasets.{name}]",
            note=f"no dataset {name!r} under {str(root)!r}; its settings apply to nothing",
            nearest=nearest[0] if nearest else None,
        )
    return unknown
