"""Pluggable classification modes, one module each."""

from __future__ import annotations

from daemon.classifiers.base import Classifier, Decision, Scores, decide
from daemon.classifiers.reference import ReferenceClassifier
from daemon.classifiers.text import TextClassifier
from daemon.config import DatasetSettings

__all__ = ["Classifier", "Decision", "Scores", "decide", "make_classifier"]


def make_classifier(settings: DatasetSettings) -> Classifier:
    """The classifier for a dataset's configured mode."""
    if settings.mode == "text":
        return TextClassifier()
    return ReferenceClassifier(aggregate=settings.aggregate)
