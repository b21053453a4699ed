"""The classifier interface and the decision maths shared by every mode.

A classifier is pure: vectors and a class index in, a score matrix out
(one row per image, one column per class). :func:`decide` turns scores into
decisions. Nothing here touches files or models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from daemon.classindex import ClassIndex
from daemon.encoder import Vectors

Scores = npt.NDArray[np.float32]


class Classifier(Protocol):
    """Scores images against a dataset's classes."""

    @property
    def name(self) -> str:
        """The mode's name as logged, e.g. ``reference-max``."""

    def check(self, index: ClassIndex) -> None:
        """Raise :class:`NoClassesError` when ``index`` cannot support this mode."""

    def scores(self, vectors: Vectors, index: ClassIndex) -> Scores:
        """A ``(images, classes)`` matrix; higher is more likely, ``-inf`` is impossible."""


@dataclass(frozen=True)
class Decision:
    """The winning class of one image and the class that came second."""

    label: str
    score: float
    runner_up: str | None
    runner_up_score: float | None


def decide(scores: Scores, classes: tuple[str, ...]) -> list[Decision]:
    """The best and second-best class of each row (ties go to the earlier class)."""
    if scores.shape[1] != len(classes):
        raise ValueError(f"{scores.shape[1]} score columns for {len(classes)} classes")
    # A stable sort on the negated scores keeps the earlier class first on ties.
    order = np.argsort(-scores, axis=1, kind="stable")
    decisions = []
    for row, ranked in zip(scores, order, strict=True):
        best = int(ranked[0])
        second = int(ranked[1]) if len(ranked) > 1 and np.isfinite(row[ranked[1]]) else None
        decisions.append(
            Decision(
                label=classes[best],
                score=float(row[best]),
                runner_up=None if second is None else classes[second],
                runner_up_score=None if second is None else float(row[second]),
            )
        )
    return decisions
