"""Mixed embeddings: text and reference images together, training-free (Tip-Adapter).

Zhang et al., "Tip-Adapter" (ECCV 2022): the zero-shot text logits plus a
key-value cache of the reference images' features,
``text + alpha * affinity``, where the affinity of an image to a reference is
``exp(-beta * (1 - cos))``. Here the cache term of a class is the *mean*
affinity over its references rather than Tip-Adapter's sum, because user
classes are rarely balanced and a class with many references must not win
by count. A class without references contributes text only; a class whose
name means nothing to the model wins by its references once alpha is large
enough, which automatic calibration finds (see ``clipsort.classify.calibration``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from clipsort.classify.classindex import ClassIndex, Labels
from clipsort.classify.modes.base import ClipClassifier, Scores
from clipsort.encode.vectors import Vectors


def class_means(
    values: npt.NDArray[np.float32],
    labels: Labels,
    classes: int,
    weights: npt.NDArray[np.float32] | None = None,
) -> Scores:
    """Per row, the (weighted) mean of ``values`` over each class's columns (0 where a class has none)."""
    onehot = np.zeros((len(labels), classes), dtype=np.float32)
    onehot[np.arange(len(labels)), labels] = 1.0 if weights is None else weights
    counts = onehot.sum(axis=0)
    sums = values @ onehot
    means: Scores = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return means


def affinity(similarity: npt.NDArray[np.float32], beta: float) -> npt.NDArray[np.float32]:
    """Tip-Adapter's sharpened affinity: 1 for an identical picture, falling with beta."""
    result: npt.NDArray[np.float32] = np.exp(-beta * (1.0 - similarity)).astype(np.float32)
    return result


@dataclass(frozen=True)
class MixedClassifier(ClipClassifier):
    """Text similarity plus ``alpha`` times the mean reference affinity."""

    alpha: float
    beta: float

    @property
    def name(self) -> str:
        return "mixed"

    def check(self, index: ClassIndex) -> None:
        # Every class has a description, so mixed works even without references.
        return None

    def scores(self, vectors: Vectors, index: ClassIndex) -> Scores:
        text: Scores = vectors @ index.text_vectors.T
        if self.alpha == 0 or len(index.reference_labels) == 0:
            return text
        cache = class_means(
            affinity(vectors @ index.reference_vectors.T, self.beta),
            index.reference_labels,
            len(index.classes),
            index.reference_weights,
        )
        return text + self.alpha * cache
