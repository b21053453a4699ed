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

from clipsort.classify.classindex import ClassIndex
from clipsort.classify.modes.base import ClipClassifier
from clipsort.classify.scoring import Scores, affinity, class_means
from clipsort.encode.vectors import Vectors


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
