"""A dataset's classes as vectors: reference images and class-name text.

Classes are the sub-folders of ``Clases/``; the images in a class folder are
its references (none is fine: a text-only class). A class's description is,
first found: the dataset's ``descriptions`` table in the config,
``Clases/<class>/description.txt``, or the folder name with ``_`` and ``-``
read as spaces.

``Clases/_none/`` is not a class: its pictures are the negatives of the
"none of these" gate (:mod:`clipsort.classify.unknown`), kept apart from the
references.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from clipsort.config import DEFAULT_IGNORE
from clipsort.encode.vectors import Vectors
from clipsort.errors import NoClassesError
from clipsort.files import scan
from clipsort.layout import NEGATIVES_DIR, DatasetLayout

if TYPE_CHECKING:  # the embedder loads the model stack; the index itself is plain arrays
    from clipsort.encode.embeddings import Embedder

Labels = npt.NDArray[np.int64]
DESCRIPTION_FILE = "description.txt"
MAX_DESCRIPTION = 1000  # characters; CLIP's text encoder reads 77 tokens anyway
REFERENCE_IGNORE = (*DEFAULT_IGNORE, DESCRIPTION_FILE)


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
    # Corrected examples (see clipsort.learn.corrections) follow the reference images.
    reference_weights: npt.NDArray[np.float32]  # each row's weight in its class's average
    corrected: npt.NDArray[np.bool_]  # which rows are corrected examples
    # Clases/_none/: pictures of nothing the dataset sorts, (0, dim) when there are none.
    negative_vectors: Vectors = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    negative_paths: tuple[Path, ...] = ()

    def reference_counts(self) -> npt.NDArray[np.int64]:
        """How many references each class has, in class order."""
        return np.bincount(self.reference_labels, minlength=len(self.classes)).astype(np.int64)

    def correction_counts(self) -> dict[str, int]:
        """Corrected examples in use per class (classes without any left out)."""
        counts = np.bincount(self.reference_labels[self.corrected], minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts, strict=True) if n}


@dataclass(frozen=True)
class Example:
    """A corrected example: a sorted file a person put in another class, by its cached vector."""

    label: str
    vector: Vectors
    weight: float
    path: Path


def describe(folder_name: str) -> str:
    """The text a class folder's name stands for."""
    return " ".join(folder_name.replace("_", " ").replace("-", " ").split())


def class_description(folder: Path, configured: Mapping[str, str]) -> str:
    """What the class in ``folder`` is, in words (see the module docstring)."""
    if folder.name in configured:
        return configured[folder.name]
    file = folder / DESCRIPTION_FILE
    if file.is_file() and not file.is_symlink():
        text = " ".join(file.read_text(encoding="utf-8", errors="replace").split())[:MAX_DESCRIPTION]
        if text:
            return text
    return describe(folder.name)


def class_folders(layout: DatasetLayout) -> list[Path]:
    """The real (non-hidden, non-symlink) sub-folders of ``Clases/``, sorted; the negatives folder is none."""
    if layout.classes.is_symlink() or not layout.classes.is_dir():
        return []  # a Clases/ linked elsewhere holds no dataset's references: never followed
    return sorted(
        path
        for path in layout.classes.iterdir()
        if path.is_dir()
        and not path.is_symlink()
        and not path.name.startswith(".")
        and path.name != NEGATIVES_DIR
    )


def build_class_index(
    layout: DatasetLayout,
    embedder: Embedder | None,
    templates: Sequence[str],
    descriptions: Mapping[str, str] | None = None,
    examples: Sequence[Example] = (),
) -> ClassIndex:
    """Embed every class of ``layout``; raises :class:`NoClassesError` if it has none.

    ``examples`` of classes that exist are appended to the references, with their weights.
    Without an ``embedder`` (a dataset a fine-tuned checkpoint classifies) the index holds the
    folders, references and descriptions with zero-width vectors: no CLIP model is needed.
    """
    folders = class_folders(layout)
    if not folders:
        raise NoClassesError(
            f"dataset {layout.name!r} has no classes: create one folder per class in {str(layout.classes)!r}"
        )
    vectors: list[Vectors] = []
    labels: list[int] = []
    paths: list[Path] = []
    for label, folder in enumerate(folders):
        files = list(scan(folder, REFERENCE_IGNORE))
        found, kept = embedder.images(files) if embedder else (np.zeros((len(files), 0), np.float32), files)
        vectors.append(found)
        labels.extend([label] * len(kept))
        paths.extend(kept)
    negatives = layout.negatives
    files = (
        [] if negatives.is_symlink() or not negatives.is_dir() else list(scan(negatives, REFERENCE_IGNORE))
    )
    negative_vectors, negative_paths = (
        embedder.images(files) if embedder else (np.zeros((len(files), 0), np.float32), files)
    )
    texts = tuple(class_description(folder, descriptions or {}) for folder in folders)
    names = [folder.name for folder in folders]
    usable = [example for example in examples if example.label in names]
    weights = [1.0] * len(labels) + [example.weight for example in usable]
    corrected = [False] * len(labels) + [True] * len(usable)
    vectors.extend(example.vector[np.newaxis, :] for example in usable)
    labels.extend(names.index(example.label) for example in usable)
    paths.extend(example.path for example in usable)
    return ClassIndex(
        dataset=layout.name,
        classes=tuple(folder.name for folder in folders),
        descriptions=texts,
        text_vectors=embedder.descriptions(texts, templates)
        if embedder
        else np.zeros((len(texts), 0), np.float32),
        reference_vectors=np.concatenate(vectors, axis=0).astype(np.float32),
        reference_labels=np.asarray(labels, dtype=np.int64),
        reference_paths=tuple(paths),
        reference_weights=np.asarray(weights, dtype=np.float32),
        corrected=np.asarray(corrected, dtype=np.bool_),
        negative_vectors=negative_vectors.astype(np.float32),
        negative_paths=tuple(negative_paths),
    )
