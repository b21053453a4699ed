"""Pluggable classification modes, one module each."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

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
from clipsort.config import DatasetSettings, Settings

__all__ = [
    "MODES",
    "Classifier",
    "ClipClassifier",
    "Decision",
    "Inputs",
    "Mode",
    "Scores",
    "decide",
    "make_classifier",
    "mode",
    "needs_clip",
    "probabilities",
]


@dataclass(frozen=True)
class Mode:
    """What one mode needs, declared once: every other module asks here rather than test the name.

    The unknown gate is one rule for every mode (:mod:`clipsort.classify.unknown`), on the vectors
    the mode classifies with: CLIP's, or the checkpoint's features with its head's rows.
    """

    name: str
    model: Literal["clip", "checkpoint"]  # what classifies: the CLIP model's vectors, or a checkpoint
    calibrated: bool  # weights chosen per dataset by leave-one-out (mixed mode's alpha and beta)
    build: Callable[[DatasetSettings, float, float], ClipClassifier] | None  # None: not a CLIP mode


MODES: dict[str, Mode] = {
    "reference": Mode("reference", "clip", False, lambda own, _a, _b: ReferenceClassifier(own.aggregate)),
    "text": Mode("text", "clip", False, lambda _own, _a, _b: TextClassifier()),
    "mixed": Mode("mixed", "clip", True, lambda _own, a, b: MixedClassifier(alpha=a, beta=b)),
    # The checkpoint's classifier is built from the checkpoint (modes/finetuned.py).
    "finetuned": Mode("finetuned", "checkpoint", False, None),
}


def mode(name: str) -> Mode:
    """The declared mode ``name`` (``reference-max`` and ``reference-avg`` are the reference mode)."""
    return MODES[name.split("-", 1)[0]]


def make_classifier(settings: DatasetSettings, alpha: float = 0.0, beta: float = 1.0) -> ClipClassifier:
    """The classifier for a dataset's CLIP mode (``alpha``/``beta``: mixed mode's resolved weights)."""
    declared = mode(settings.mode)
    if declared.build is None:
        raise ValueError(f"mode {settings.mode!r} classifies with its checkpoint, not CLIP vectors")
    return declared.build(settings, alpha, beta)


def needs_clip(settings: Settings, datasets: Iterable[str] | None = None) -> bool:
    """Whether some dataset's mode classifies CLIP vectors (so the CLIP model is to be loaded).

    With ``datasets`` (a one-shot run's) only those count; without, every dataset the daemon may
    meet: one without a ``[datasets.<name>]`` table follows the global mode.
    """
    if datasets is not None:
        return any(mode(settings.for_dataset(name).mode).model == "clip" for name in datasets)
    named = (own.mode for own in settings.datasets.values() if own.mode is not None)
    return any(mode(name).model == "clip" for name in (settings.mode, *named))
