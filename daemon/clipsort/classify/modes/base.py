"""The classifier contract every mode implements, and the decision maths they share.

A classifier says what it needs of a batch (:attr:`Classifier.needs`: CLIP
vectors, or the decoded pictures for a fine-tuned checkpoint), and turns that
and the dataset's class index into decisions. Nothing outside the modes
branches on which mode it is. The CLIP modes' maths is pure: vectors and a
class index in, a score matrix out (one row per image, one column per
class); :func:`decide` turns scores into decisions. Nothing here touches
files or models.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

import numpy as np

from clipsort.classify.classindex import ClassIndex
from clipsort.classify.scoring import Scores, probabilities
from clipsort.encode.vectors import Vectors

if TYPE_CHECKING:
    from PIL import Image

Needs = Literal["vectors", "pictures"]


@dataclass(frozen=True)
class Inputs:
    """One dataset's share of a batch: its decoded pictures, and their CLIP vectors if its mode uses them."""

    pictures: Sequence[Image.Image]
    vectors: Vectors | None = None


class Classifier(Protocol):
    """What every mode provides: what it needs, the classes it files into, its decisions."""

    @property
    def name(self) -> str:
        """The mode's name as logged, e.g. ``reference-max``."""

    @property
    def needs(self) -> Needs:
        """``vectors``: the batch's CLIP image vectors; ``pictures``: the decoded pictures themselves."""

    @property
    def decided_by(self) -> str | None:
        """What decides besides the CLIP model (a checkpoint folder); None when the CLIP model does."""

    def classes(self, index: ClassIndex) -> tuple[str, ...]:
        """The folders files can be sorted into (a checkpoint's own classes in finetuned mode)."""

    def check(self, index: ClassIndex) -> None:
        """Raise :class:`NoClassesError` when ``index`` cannot support this mode."""

    def classify(self, inputs: Inputs, index: ClassIndex, clip_scale: float) -> list[Decision]:
        """One decision per picture; ``clip_scale`` is the CLIP model's temperature (where it decides)."""


class ClipClassifier(abc.ABC):
    """What the CLIP modes share: they score CLIP vectors against the index's classes."""

    needs: ClassVar[Needs] = "vectors"
    decided_by: ClassVar[str | None] = None

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The mode's name as logged, e.g. ``reference-max``."""

    @abc.abstractmethod
    def check(self, index: ClassIndex) -> None:
        """Raise :class:`NoClassesError` when ``index`` cannot support this mode."""

    @abc.abstractmethod
    def scores(self, vectors: Vectors, index: ClassIndex) -> Scores:
        """A ``(images, classes)`` matrix; higher is more likely, ``-inf`` is impossible."""

    def classes(self, index: ClassIndex) -> tuple[str, ...]:
        return index.classes

    def classify(self, inputs: Inputs, index: ClassIndex, clip_scale: float) -> list[Decision]:
        if inputs.vectors is None:
            raise ValueError(f"{self.name} classifies CLIP vectors, and the batch brought none")
        return decide(self.scores(inputs.vectors, index), index.classes, clip_scale)


@dataclass(frozen=True)
class Familiarity:
    """How much a picture looks like the class it was given at all: the "none of these" gate's measure.

    ``basis`` names the rule (see :mod:`clipsort.classify.unknown`), which
    compared ``score`` with ``threshold`` and found the picture ``known`` or not.
    """

    basis: str
    score: float
    threshold: float
    known: bool

    def __str__(self) -> str:
        relation = "<" if self.score < self.threshold else ">="
        return f"{self.basis} {self.score:.3f} {relation} {self.threshold:.3f}"


@dataclass(frozen=True)
class Decision:
    """The winning class of one image, with probabilities and the runners-up."""

    label: str
    score: float  # probability of ``label``
    runner_up: str | None
    runner_up_score: float | None
    similarity: float  # the classifier's raw score of ``label`` (cosine units)
    top: tuple[tuple[str, float], ...]  # the three most probable classes
    familiar: Familiarity | None = None  # the unknown gate's measure, where a gate judged it

    def judged(self, familiar: Familiarity) -> Decision:
        """This decision with the gate's measure (what ``dataclasses.replace`` makes, a fifth of
        its cost: it looks up the fields on every call, once per file)."""
        return Decision(
            self.label, self.score, self.runner_up, self.runner_up_score, self.similarity, self.top, familiar
        )

    @property
    def margin(self) -> float:
        """How much more probable the winner is than the runner-up."""
        return self.score - (self.runner_up_score or 0.0)


def decide(scores: Scores, classes: tuple[str, ...], logit_scale: float) -> list[Decision]:
    """The best classes of each row with their probabilities (ties go to the earlier class)."""
    if scores.shape[1] != len(classes):
        raise ValueError(f"{scores.shape[1]} score columns for {len(classes)} classes")
    probs = probabilities(scores, logit_scale).tolist()
    # A stable sort on the negated scores keeps the earlier class first on ties. Plain lists from
    # here: indexing NumPy arrays one scalar at a time took twice as long (6 against 3 us a row).
    order = np.argsort(-scores, axis=1, kind="stable")[:, :3].tolist()
    decisions = []
    for row, prob, ranked in zip(scores.tolist(), probs, order, strict=True):
        best = ranked[0]
        top = [k for k in ranked if math.isfinite(row[k])]
        second = top[1] if len(top) > 1 else None
        decisions.append(
            Decision(
                label=classes[best],
                score=prob[best],
                runner_up=None if second is None else classes[second],
                runner_up_score=None if second is None else prob[second],
                similarity=row[best],
                top=tuple((classes[k], round(prob[k], 6)) for k in top),
            )
        )
    return decisions
