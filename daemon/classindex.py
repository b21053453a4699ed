"""A dataset's classes as vectors: reference images and class-name text.

Classes are the sub-folders of ``Clases/``; the images in a class folder are
its references (none is fine: a text-only class); the folder name, with
``_`` and ``-`` read as spaces, is the class's description.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.embeddings import Embedder
from daemon.encoder import Vectors
from daemon.errors import NoClassesError
from daemon.layout import DatasetLayout
from daemon.scanner import scan

Labels = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ClassIndex:
    """Everything a classifier needs about one dataset's classes."""

    dataset: str
    classes: tuple[str, ...]
    descriptions: tuple[str, ...]
    text_vectors: Vectors
    reference_vectors: Vectors
    reference_labels: Labels
    reference_paths: tuple[Path, ...]

    def reference_counts(self) -> npt.NDArray[np.int64]:
        """How many references each class has, in class order."""
        return np.bincount(self.reference_labels, minlength=len(self.classes)).astype(np.int64)


def describe(folder_name: str) -> str:
    """The text a class folder's name stands for."""
    return " ".join(folder_name.replace("_", " ").replace("-", " ").split())


def class_folders(layout: DatasetLayout) -> list[Path]:
    """The real (non-hidden, non-symlink) sub-folders of ``Clases/``, sorted."""
    if not layout.classes.is_dir():
        return []
    return sorted(
        path
        for path in layout.classes.iterdir()
        if path.is_dir() and not path.is_symlink() and not path.name.startswith(".")
    )


def build_class_index(layout: DatasetLayout, embedder: Embedder, templates: Sequence[str]) -> ClassIndex:
    """Embed every class of ``layout``; raises :class:`NoClassesError` if it has none."""
    folders = class_folders(layout)
    if not folders:
        raise NoClassesError(
            f"dataset {layout.name!r} has no classes: create one folder per class in {str(layout.classes)!r}"
        )
    vectors: list[Vectors] = []
    labels: list[int] = []
    paths: list[Path] = []
    for label, folder in enumerate(folders):
        found, kept = embedder.images(list(scan(folder)))
        vectors.append(found)
        labels.extend([label] * len(kept))
        paths.extend(kept)
    descriptions = tuple(describe(folder.name) for folder in folders)
    return ClassIndex(
        dataset=layout.name,
        classes=tuple(folder.name for folder in folders),
        descriptions=descriptions,
        text_vectors=embedder.descriptions(descriptions, templates),
        reference_vectors=np.concatenate(vectors, axis=0).astype(np.float32),
        reference_labels=np.asarray(labels, dtype=np.int64),
        reference_paths=tuple(paths),
    )
