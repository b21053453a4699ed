"""Classification by similarity to each class's reference images.

The original ``ClassifyImagesWithEmbeddings`` script: ``max`` takes the class
of the single most similar reference, ``avg`` the class whose references are
most similar on average. Classes without references cannot win.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipsort.classify.classindex import ClassIndex
from clipsort.classify.modes.base import ClipClassifier
from clipsort.classify.scoring import Scores, class_means
from clipsort.config import Aggregate
from clipsort.encode.vectors import Vectors
from clipsort.errors import NoClassesError


@dataclass(frozen=True)
class ReferenceClassifier(ClipClassifier):
    """Cosine similarity to reference images, aggregated per class."""

    aggregate: Aggregate = "max"

    @property
    def name(self) -> str:
        return f"reference-{self.aggregate}"

    def check(self, index: ClassIndex) -> None:
        if len(index.reference_labels) == 0:
            raise NoClassesError(
                f"dataset {index.dataset!r} has no reference images in Clases/<class>/; "
                'add some, or use mode = "text"'
            )

    def scores(self, vectors: Vectors, index: ClassIndex) -> Scores:
        similarity = vectors @ index.reference_vectors.T
        if self.aggregate == "avg":
            means = class_means(
                similarity, index.reference_labels, len(index.classes), index.reference_weights
            )
            present = index.reference_counts() > 0
            return np.where(present, means, -np.inf).astype(np.float32)
        # max: a corrected example is one more reference; its weight only matters to averages.
        result = np.full((len(vectors), len(index.classes)), -np.inf, dtype=np.float32)
        for label in np.unique(index.reference_labels):
            result[:, label] = similarity[:, index.reference_labels == label].max(axis=1)
        return result
