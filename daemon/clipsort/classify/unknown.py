""" "None of these": whether a picture shows any of a dataset's classes at all, apart from the softmax.

A softmax over the classes says which class is likeliest, never "none of
them", and fewer classes make it surer of a wrong answer. This gate asks the
other question, calibrated per dataset from what the user gave and nothing
else. Each picture is judged against the class it was given, in every mode,
by one rule:

- *reference+description* (a class with references): the cosine to that
  class's nearest reference (the k-nearest-neighbour out-of-distribution
  score with k = 1, Sun et al., ICML 2022) plus the cosine to the class's
  description (MCM's score at temperature 1, Ming et al., NeurIPS 2022).
  The two see different things: a look-alike near one odd reference is
  still far from the class's name, and a picture the name fits but no
  reference resembles is still far from the references. Measured on
  handwritten digits (docs: the gate's method), the sum kept out 0.86 of
  strangers where the nearest reference alone kept out 0.67, at the same
  share of in-class pictures held. Features without descriptions (a
  fine-tuned checkpoint's, where the head's rows stand in when it has one)
  use the reference term alone (*reference*);
- *text* (a class without references in a dataset that has some): the
  cosine to the class's description;
- *negative labels* (a dataset without a single reference image, so nothing
  to calibrate on): NegLabel (Jiang et al., ICLR 2024). Words from the
  tokenizer's own vocabulary that lie far from every class name stand for
  "something else"; a picture is unknown when those words together are
  likelier than the classes together. It catches pictures of things the
  vocabulary names away from the classes; it cannot catch a stranger that is
  close in meaning to a class name, nor one the vocabulary has no word near;
- *negatives* (``Clases/_none/``, a class with references): a picture at
  least as close to a negative as to its class's nearest reference is
  unknown.

Thresholds come from leave-one-out over the references: each reference is
scored by the others, which is the score new pictures of its class get. The
knob is ``held``, the share of a class's own pictures the gate may hold back.
With a handful of references per class the ``held`` quantile of a class's
own scores is no estimate (eight references give the least or second least
of eight, and one odd reference opens the class to its whole look-alike
concept), so each class keeps only its *location*, the mean of its scores,
and the *spread* is pooled over every class: a robust standard deviation
(1.4826 times the median absolute deviation from the class means; the
scores' lower tail is long, and the plain standard deviation let a few odd
references open every class). A new picture's score is predicted, so the
threshold is the lower prediction bound: Student's t quantile at ``held``
times the spread times sqrt(1 + 1/n). A class with many scores of its own
moves toward its own empirical quantile (shrinkage: weight ``n / (n + 2 /
held)``); a class with one reference takes the pooled location. Finally no
threshold is above a point between the class's own scores and those of the
nearest strangers the user has shown (the other classes' references, the
negatives): where strangers are far, as on the colour set, holding a sixth
of a class's pictures keeps nothing more out. Pure maths: arrays in,
thresholds and judgements out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from clipsort.classify.calibration import MAX_SAMPLES, sample_rows
from clipsort.classify.classindex import ClassIndex, Labels
from clipsort.classify.modes.base import Decision, Familiarity
from clipsort.classify.scoring import probabilities
from clipsort.encode.vectors import Vectors

NEGATIVE_TEMPLATE = "a photo of a {}."
MAX_CANDIDATE_WORDS = 2000  # of the vocabulary, encoded once per model and cached like descriptions
NEGATIVE_LABEL_SHARE = 0.25  # of the candidate words, the farthest from every class name (measured)
MAX_NEGATIVE_LABELS = 1000
MAD_TO_SIGMA = 1.4826  # a normal distribution's standard deviation per median absolute deviation
MIN_SPREAD = 0.005  # identical references would otherwise hold every picture not identical to them
# The cap between a class and its nearest strangers, as a weighted geometric mean of the distances:
# 0.5 is the midpoint; nearer the class's side held the colour set's pictures of no colour out
# (measured 0.5: 2 of 10, 0.65: 7 of 10) and cost digits 0.03 of strangers kept out (1.0: no cap).
NEAR_WEIGHT = 0.65
Floats = npt.NDArray[np.float32]


def describes(index: ClassIndex) -> bool:
    """Whether ``index``'s descriptions live in the pictures' space (not a checkpoint's bare features)."""
    return index.text_vectors.ndim == 2 and index.text_vectors.shape[1] == index.reference_vectors.shape[1]


def student_quantile(probability: float, freedom: float) -> float:
    """Student's t quantile (Cornish-Fisher expansion from the normal one; within 1 % from 3 degrees)."""
    z = NormalDist().inv_cdf(probability)
    nu = max(freedom, 1.0)
    return z + (z**3 + z) / (4 * nu) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)


def location_and_spread(scores: Floats, truth: Labels, classes: int) -> tuple[npt.NDArray[np.float64], float]:
    """Per class the mean of its ``scores`` (0 without any), and their spread pooled over the
    classes: a robust standard deviation of the scores about their class's mean (at least
    ``MIN_SPREAD``). Where :func:`threshold_at` starts."""
    counts = np.bincount(truth, minlength=classes)
    means = np.bincount(truth, weights=scores, minlength=classes) / np.maximum(counts, 1)
    spread = max(MAD_TO_SIGMA * float(np.median(np.abs(scores - means[truth]))), MIN_SPREAD)
    return means, spread


def threshold_at(scores: Floats, truth: Labels, classes: int, held: float) -> tuple[Floats, float]:
    """Per class, the score below which ``held`` of its new pictures should fall; and the pooled one.

    Each class's location is the mean of its own scores; the spread is pooled over every class as a
    robust standard deviation. A new picture's score is predicted, not known: the threshold is the
    lower prediction bound, Student's t at the pooled degrees of freedom times the spread times
    sqrt(1 + 1/n), so four references per class hold about ``held`` of new pictures rather than a
    fifth (measured on the colour set with the plain normal quantile). A class with many scores
    moves toward its own empirical quantile. A class without scores gets NaN; the pooled threshold
    (the mean of every score) is for classes with a reference but no score of their own.
    """
    thresholds = np.full(classes, np.nan, dtype=np.float32)
    if not len(scores):
        return thresholds, float("nan")
    counts = np.bincount(truth, minlength=classes)
    means, spread = location_and_spread(scores, truth, classes)
    below = student_quantile(held, float(len(scores) - np.count_nonzero(counts))) * spread
    for label in np.flatnonzero(counts):
        own = scores[truth == label]
        weight = len(own) / (len(own) + 2.0 / held)
        predicted = means[label] + below * np.sqrt(1.0 + 1.0 / len(own))
        thresholds[label] = (1 - weight) * predicted + weight * float(np.quantile(own, held))
    return thresholds, float(np.mean(scores)) + below * np.sqrt(1.0 + 1.0 / len(scores))


def similarities(index: ClassIndex, rows: Labels) -> Floats:
    """Cosines of reference ``rows``, then of every negative, to every reference: one product.

    What :func:`own_scores` and :func:`midpoints` both read (measured: computing it once halved
    a 20-class, 1,000-reference calibration).
    """
    strangers = np.concatenate([index.reference_vectors[rows], index.negative_vectors])
    found: Floats = strangers @ index.reference_vectors.T
    return found


def own_scores(index: ClassIndex, rows: Labels, cosines: Floats | None = None) -> Floats:
    """Reference ``rows`` each scored for its own class by the other references (-inf: no other).

    ``cosines``: :func:`similarities` of the same rows, when already computed.
    """
    labels = index.reference_labels
    if cosines is None:
        similarity = index.reference_vectors[rows] @ index.reference_vectors.T
    else:
        similarity = cosines[: len(rows)].copy()
    similarity[np.arange(len(rows)), rows] = -np.inf  # nobody is their own neighbour
    truth = labels[rows]
    scores: Floats = np.where(labels[np.newaxis, :] == truth[:, np.newaxis], similarity, -np.inf).max(axis=1)
    if describes(index):
        scores = scores + np.einsum("ij,ij->i", index.reference_vectors[rows], index.text_vectors[truth])
    return scores.astype(np.float32)


def reference_thresholds(index: ClassIndex, held: float) -> Floats:
    """Per class, the threshold of its reference score (NaN: a class without any reference).

    A class with a single reference has no score of its own and takes the pooled threshold. No
    threshold is above a point between the class and the nearest strangers the user has shown
    (:func:`midpoints`): where those are far, holding more of the class keeps nothing more out.
    """
    if not len(index.reference_labels):
        return np.full(len(index.classes), np.nan, dtype=np.float32)
    rows = sample_rows(index.reference_labels, MAX_SAMPLES)
    cosines = similarities(index, rows)
    return _thresholds(index, rows, own_scores(index, rows, cosines), cosines, held)


def _thresholds(index: ClassIndex, rows: Labels, scores: Floats, cosines: Floats, held: float) -> Floats:
    """:func:`reference_thresholds` from the sampled references' leave-one-out ``scores``."""
    scored = np.isfinite(scores)
    truth = index.reference_labels[rows][scored]
    found, pooled = threshold_at(scores[scored], truth, len(index.classes), held)
    lonely = np.isnan(found) & (index.reference_counts() > 0)
    if lonely.any() and describes(index) and scored.any():
        # A class with one reference: the nearest-reference part is the pooled one, but its own
        # description part is known from that reference (classes' names differ in how well the
        # model knows them: measured, a pooled "sky" location held every picture of "fire").
        labels = index.reference_labels
        text = np.einsum("ij,ij->i", index.reference_vectors, index.text_vectors[labels])
        counts = np.maximum(index.reference_counts(), 1)
        own_text = np.bincount(labels, weights=text, minlength=len(index.classes)) / counts
        scored_text = text[rows][scored]
        found[lonely] = pooled - float(np.mean(scored_text)) + own_text[lonely]
    elif lonely.any():
        found[lonely] = pooled
    return np.fmin(found, midpoints(index, rows, scores, cosines)).astype(np.float32)


def references_kept(index: ClassIndex, thresholds: Floats) -> Floats:
    """Per class, the share of its references that pass its threshold, each judged by the others.

    What the review page shows beside each class's threshold (NaN: no reference with another).
    """
    if not len(index.reference_labels):
        return np.full(len(index.classes), np.nan, dtype=np.float32)
    rows = sample_rows(index.reference_labels, MAX_SAMPLES)
    return _kept(index, rows, own_scores(index, rows), thresholds)


def _kept(index: ClassIndex, rows: Labels, scores: Floats, thresholds: Floats) -> Floats:
    """:func:`references_kept` from the sampled references' leave-one-out ``scores``."""
    truth = index.reference_labels[rows]
    scored = np.isfinite(scores)
    passed = np.bincount(
        truth[scored], weights=scores[scored] >= thresholds[truth[scored]], minlength=len(thresholds)
    )
    counts = np.bincount(truth[scored], minlength=len(thresholds))
    kept: Floats = np.full(len(thresholds), np.nan, dtype=np.float32)
    np.divide(passed, counts, out=kept, where=counts > 0)
    return kept


def midpoints(index: ClassIndex, rows: Labels, scores: Floats, cosines: Floats | None = None) -> Floats:
    """Per class, a point between two medians, in distance from the best score (``NEAR_WEIGHT``).

    The median score of the class's own references (``scores``, leave-one-out, for ``rows``) and
    the median score for this class of the other classes' references and the negatives: the
    nearest strangers a user has shown (with none, an unrelated picture stands in, cosine 0).
    Medians shrug off one odd picture. On the colour set, whose strangers are far, this is what
    keeps a class with four references from holding a sixth of its pictures; on digits, whose
    strangers are near, the held-share threshold is the lower one.
    """
    labels = index.reference_labels
    top = 2.0 if describes(index) else 1.0  # the best score: cosine 1 to a reference (and description)
    found = np.full(len(index.classes), np.nan, dtype=np.float32)
    strangers = np.concatenate([index.reference_vectors[rows], index.negative_vectors])
    stranger_labels = np.concatenate([labels[rows], np.full(len(index.negative_vectors), -1)])
    similarity = similarities(index, rows) if cosines is None else cosines
    described = strangers @ index.text_vectors.T if describes(index) else None
    for label in range(len(index.classes)):
        own = labels == label
        inside = scores[(labels[rows] == label) & np.isfinite(scores)]
        others = stranger_labels != label
        if not own.any() or not len(inside):
            continue
        outside = similarity[:, own].max(axis=1)[others] if others.any() else np.zeros(1)
        if described is not None and others.any():
            outside = outside + described[others, label]
        near = top - float(np.median(inside))
        far = top - float(np.median(outside))
        found[label] = top - float(max(near, 1e-6) ** NEAR_WEIGHT * max(far, 1e-6) ** (1 - NEAR_WEIGHT))
    return found


def within_own_references(index: ClassIndex, thresholds: Floats) -> Floats:
    """``thresholds`` lowered, where needed, to each class's lowest leave-one-out reference score.

    For features trained on the references themselves (a fine-tuned checkpoint's): its training
    pictures sit closer to each other than new pictures of their class come, so thresholds from
    their scores held a tenth of the inbox's in-class pictures back; no reference the model was
    trained on is held by its own class's gate. Measured on the colour set: in-class held 0.10 ->
    0.08, strangers kept out unchanged at 0.92.
    """
    labels = index.reference_labels
    scores = own_scores(index, np.arange(len(labels)))
    lowered = thresholds.copy()
    for label in range(len(index.classes)):
        own = scores[(labels == label) & np.isfinite(scores)]
        if len(own) and not np.isnan(lowered[label]):
            lowered[label] = min(float(lowered[label]), float(own.min()))
    return lowered


def thresholds_from_unseen(index: ClassIndex, unseen: npt.NDArray[np.bool_], held: float) -> Floats | None:
    """Per class, the threshold from the references a model never trained on; None without any.

    For features trained on most of the references (a fine-tuned checkpoint's): they sit closer to
    each other than new pictures of their class come, so thresholds from their own scores hold too
    many new pictures, by as much as the model overfit. The references training held out for
    validation (``unseen``) score as new pictures do: each class keeps its trained references' mean
    score as its location, and the unseen references' residuals from it (pooled over classes: a
    handful each) give the offset and the spread. They can only lower a class's threshold below the
    one from every reference's leave-one-out score: a handful that happen to score high say
    nothing (measured on the colour set, two per class raised thresholds enough to hold a fifth of
    the class's pictures). Measured on handwritten digits with default
    training: strangers kept out 0.83 and in-class held 0.09, where lowering every threshold to its
    class's lowest trained-reference score (:func:`within_own_references`, the fallback) kept out
    0.64.
    """
    labels = index.reference_labels
    scores = own_scores(index, np.arange(len(labels)))
    trained = np.isfinite(scores) & ~unseen
    counts = np.bincount(labels[trained], minlength=len(index.classes))
    sums = np.bincount(labels[trained], weights=scores[trained], minlength=len(index.classes))
    means = sums / np.maximum(counts, 1)
    judged = np.isfinite(scores) & unseen & (counts[labels] > 0)
    if not judged.any():
        return None
    residuals = scores[judged] - means[labels[judged]]
    centre = float(np.mean(residuals))
    spread = max(MAD_TO_SIGMA * float(np.median(np.abs(residuals - centre))), MIN_SPREAD)
    thresholds = reference_thresholds(index, held)
    known = counts > 0
    from_unseen = means[known] + centre + NormalDist().inv_cdf(held) * spread
    thresholds[known] = np.minimum(thresholds[known], from_unseen)
    return thresholds


def text_threshold(index: ClassIndex, held: float) -> float | None:
    """The threshold of the cosine to a class's description, for a class without references.

    From the references' cosines to their own classes' descriptions: the pooled location and
    spread, as a class without scores of its own gets in the reference rule. None without any.
    """
    labels = index.reference_labels
    if not len(labels) or not describes(index):
        return None
    rows = sample_rows(labels, MAX_SAMPLES)
    truth = labels[rows]
    cosine = np.einsum("ij,ij->i", index.reference_vectors[rows], index.text_vectors[truth])
    return threshold_at(cosine.astype(np.float32), truth, len(index.classes), held)[1]


def candidate_words(vocabulary: Sequence[str], limit: int = MAX_CANDIDATE_WORDS) -> tuple[str, ...]:
    """At most ``limit`` words spread evenly over the sorted vocabulary: the same choice every time."""
    if len(vocabulary) <= limit:
        return tuple(vocabulary)
    picks = np.unique(np.linspace(0, len(vocabulary) - 1, limit).round().astype(np.int64))
    return tuple(vocabulary[k] for k in picks)


def choose_negative_labels(
    words: Sequence[str], vectors: Vectors, index: ClassIndex
) -> tuple[tuple[str, ...], Vectors]:
    """NegLabel's choice: the candidate words farthest from every class description."""
    taken = {word for text in index.descriptions for word in text.lower().split()}
    usable = [k for k, word in enumerate(words) if word.lower() not in taken]
    if not usable or not len(index.classes):
        return (), np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), np.float32)
    nearest = (vectors[usable] @ index.text_vectors.T).max(axis=1)
    count = min(MAX_NEGATIVE_LABELS, max(1, round(NEGATIVE_LABEL_SHARE * len(usable))))
    farthest = [usable[k] for k in np.argsort(nearest, kind="stable")[:count]]
    return tuple(words[k] for k in farthest), vectors[farthest]


@dataclass(frozen=True)
class Gate:
    """One dataset's "is this any of my classes": thresholds, and the rule each class is judged by."""

    class_thresholds: Floats  # per class, of the reference score; NaN for a class without references
    text_threshold: float | None = None  # for classes without references, in a dataset with some
    label_scale: float = 1.0  # CLIP's temperature: negative labels compete with the classes as logits
    words: tuple[str, ...] = ()
    negative_labels: Vectors = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    held: float | None = None  # the share of in-class pictures it was calibrated to hold
    described: bool = True  # whether its features have descriptions (a checkpoint's head may not)
    kept: Floats | None = None  # per class, the share of its references that pass (references_kept)

    @property
    def rule(self) -> str:
        """The rule most classes are judged by, as logged."""
        if not np.isnan(self.class_thresholds).all():
            return "reference+description" if self.described else "reference"
        if self.text_threshold is not None:
            return "text"
        return "negative labels" if self.words else "none"

    def judge(self, vectors: Vectors, labels: Labels, index: ClassIndex) -> list[Familiarity | None]:
        """Per picture (``labels``: the class each was given), how familiar it is; None: no rule applies."""
        found: list[Familiarity | None] = [None] * len(vectors)
        if not len(vectors):
            return found
        nearest = self._nearest_own(vectors, labels, index) if len(index.reference_labels) else None
        described = index.text_vectors.ndim == 2 and index.text_vectors.shape[1] == vectors.shape[1]
        text = np.einsum("ij,ij->i", vectors, index.text_vectors[labels]) if described else None
        score = nearest + text if nearest is not None and text is not None else nearest
        basis = "reference+description" if text is not None else "reference"
        negatives = index.negative_vectors
        nearest_negative = (vectors @ negatives.T).max(axis=1) if len(negatives) else None
        labelled = self._negative_label_share(vectors, index) if len(self.words) else None
        for row, label in enumerate(labels.tolist()):
            threshold = float(self.class_thresholds[label])
            if score is not None and np.isfinite(score[row]) and not np.isnan(threshold):
                judged = Familiarity(basis, float(score[row]), threshold, bool(score[row] >= threshold))
            elif text is not None and self.text_threshold is not None:
                cosine = float(text[row])
                judged = Familiarity("text", cosine, self.text_threshold, cosine >= self.text_threshold)
            elif labelled is not None:
                share = float(labelled[row])
                judged = Familiarity("negative labels", share, 0.5, share >= 0.5)
            else:
                continue
            if (
                judged.known
                and nearest_negative is not None
                and nearest is not None
                and np.isfinite(nearest[row])
            ):
                # The nearest reference alone: a negative is a picture, with no description to add.
                negative = float(nearest_negative[row])
                if negative >= nearest[row]:
                    judged = Familiarity("negative", negative, float(nearest[row]), False)
            found[row] = judged
        return found

    @staticmethod
    def _nearest_own(vectors: Vectors, labels: Labels, index: ClassIndex) -> Floats:
        """Each picture's cosine to the nearest reference of its class (-inf: the class has none)."""
        similarity = vectors @ index.reference_vectors.T
        same = index.reference_labels[np.newaxis, :] == labels[:, np.newaxis]
        nearest: Floats = np.where(same, similarity, -np.inf).max(axis=1).astype(np.float32)
        return nearest

    def _negative_label_share(self, vectors: Vectors, index: ClassIndex) -> Floats:
        """NegLabel's score: the probability the classes together get against the negative labels."""
        cosines = np.concatenate([vectors @ index.text_vectors.T, vectors @ self.negative_labels.T], axis=1)
        share: Floats = probabilities(cosines, self.label_scale)[:, : len(index.classes)].sum(axis=1)
        return share

    def apply(self, decisions: Sequence[Decision], vectors: Vectors, index: ClassIndex) -> list[Decision]:
        """``decisions`` with each one's familiarity filled in."""
        position = {name: k for k, name in enumerate(index.classes)}
        labels = np.asarray([position[d.label] for d in decisions], dtype=np.int64)
        judged = self.judge(vectors, labels, index)
        return [
            decision if familiar is None else decision.judged(familiar)
            for decision, familiar in zip(decisions, judged, strict=True)
        ]


def calibrate_gate(
    index: ClassIndex,
    *,
    held: float,
    label_scale: float = 1.0,
    words: Sequence[str] = (),
    word_vectors: Vectors | None = None,
) -> Gate:
    """The gate of ``index`` holding ``held`` of in-class pictures: reference and text thresholds.

    ``words`` and their ``word_vectors`` (the candidate negative labels) are
    only needed, and only used, when the dataset has no reference image.
    """
    chosen: tuple[str, ...] = ()
    label_vectors = np.zeros((0, 0), np.float32)
    if not len(index.reference_labels) and word_vectors is not None and len(words):
        chosen, label_vectors = choose_negative_labels(words, word_vectors, index)
    thresholds = kept = np.full(len(index.classes), np.nan, dtype=np.float32)
    if len(index.reference_labels):
        rows = sample_rows(index.reference_labels, MAX_SAMPLES)
        cosines = similarities(index, rows)
        scores = own_scores(index, rows, cosines)  # once: the thresholds and what they keep
        thresholds = _thresholds(index, rows, scores, cosines, held)
        kept = _kept(index, rows, scores, thresholds)
    return Gate(
        class_thresholds=thresholds,
        kept=kept,
        text_threshold=text_threshold(index, held),
        label_scale=label_scale,
        words=chosen,
        negative_labels=label_vectors,
        held=held,
        described=describes(index),
    )
