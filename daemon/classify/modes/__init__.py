"""Pluggable classification modes, one module each."""

from __future__ import annotations

from daemon.classify.modes.base import (
    Classifier,
    ClipClassifier,
    Decision,
    Inputs,
    Scores,
    decide,
    probabilities,
)
from daemon.classify.modes.mixed import MixedClassifier
from daemon.classify.modes.reference import ReferenceClassifier
from daemon.classify.modes.text import TextClassifier
from daemon.config import DatasetSettings

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
