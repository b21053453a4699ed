"""Zero-shot classification by similarity to each class's description.

The original ``ClassifyImagesWithSentenceTransformers`` script: the class
folder's name (prompt-ensembled) is all a class needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from clipsort.classify.classindex import ClassIndex
from clipsort.classify.modes.base import ClipClassifier
from clipsort.classify.scoring import Scores
from clipsort.encode.vectors import Vectors


@dataclass(frozen=True)
class TextClassifier(ClipClassifier):
    """Cosine similarity to the class descriptions."""

    @property
    def name(self) -> str:
        return "text"

    def check(self, index: ClassIndex) -> None:
        # Every class has a name, so every index supports text mode.
        return None

    def scores(self, vectors: Vectors, index: ClassIndex) -> Scores:
        return vectors @ index.text_vectors.T
