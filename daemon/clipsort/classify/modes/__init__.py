"""Pluggable classification modes, one module each."""

from __future__ import annotations

from clipsort.classify.modes.base import (
    Classifier,
    ClipClassifier,
    Decision,
    Inputs,
    decide,
)
from clipsort.classify.modes.mixed import MixedClassifier
from clipsort.classify.modes.reference import ReferenceClassifier
from clipsort.classify.modes.text import TextClassifier
from clipsort.classify.scoring import Scores, probabilities
from clipsort.config import DatasetSettings

__all__ = [
    "Classifier",
    "ClipClassifier",
    "Decision",
    "Inputs",
    "Scores",
    "decide",
    "make_classifier",
    "probabilities",
]


def make_classifier(settings: DatasetSettings, alpha: float = 0.0, beta: float = 1.0) -> ClipClassifier:
    """The classifier for a dataset's mode (``alpha``/``beta``: mixed mode's resolved weights)."""
    if settings.mode == "text":
        return TextClassifier()
    if settings.mode == "mixed":
        return MixedClassifier(alpha=alpha, beta=beta)
    return ReferenceClassifier(aggregate=settings.aggregate)
