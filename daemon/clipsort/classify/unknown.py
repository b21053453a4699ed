""" "None of these": whether a picture shows any of a dataset's classes at all, apart from the softmax.

A softmax over the classes says which class is likeliest, never "none of
them", and fewer classes make it surer of a wrong answer. This gate asks the
other question, calibrated per dataset from what the user gave and nothing
else. Each picture is judged against the class it was given, by one rule:

- *reference* (reference and mixed modes, a class with references): the
  cosine to that class's nearest reference, the k-nearest-neighbour
  out-of-distribution score with k = 1 (Sun et al., ICML 2022);
- *text* (text mode; mixed mode's classes without references): the raw
  cosine to the class's description, MCM's score at temperature 1 (Ming et
  al., NeurIPS 2022), not CLIP's x100 logits;
- *negative labels* (a dataset without a single reference image, so nothing
  to calibrate on): NegLabel (Jiang et al., ICLR 2024). Words from the
  tokenizer's own vocabulary that lie far from every class name stand for
  "something else"; a picture is unknown when those words together are
  likelier than the classes together. It catches pictures of things the
  vocabulary names away from the classes; it cannot catch a stranger that is
  close in meaning to a class name, nor one the vocabulary has no word near;
- *negatives* (``Clases/_none/``, every mode, a class with references): a
  picture at least as close to a negative as to its class's nearest
  reference is unknown.

Thresholds come from leave-one-out over the references: each reference is
scored by the others, which is the score pictures of the classes get. With a
handful of references the ``keep`` quantile of those scores is no estimate
at all (four references give the least of four, and one odd reference, a
picture the model sees as another concept, opens the class to that whole
concept: measured, one yellowish orange reference of four let every yellow
picture into ``orange``). So the threshold is the geometric midpoint, in
distance, between the median in-class score and the median score of the
*other* classes' references and the negatives, the nearest strangers a user
has shown (with none, a single class and no negatives, an unrelated picture
at cosine 0); medians shrug off one odd picture. Once a class has enough scores
for its ``1 - keep`` quantile to mean something (``1 / (1 - keep)`` of them,
20 at 0.95), the threshold is never above that quantile either, so at least
``keep`` of the references pass. Pure maths: arrays in, thresholds and judgements out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

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
Floats = npt.NDArray[np.float32]


def operating_point(inside: Floats, outside: Floats, keep: float) -> float:
    """The midpoint of the two medians; with enough in-class scores, never above their ``keep`` quantile."""
    quantile = float(np.quantile(inside, 1.0 - keep))
    near = 1.0 - float(np.median(inside))
    # No stranger shown (one class, no negatives): an unrelated picture, cosine 0, stands for them.
    far = 1.0 - float(np.median(outside)) if len(outside) else 1.0
    midpoint = 1.0 - float(np.sqrt(max(near, 1e-6) * max(far, 1e-6)))
    if len(inside) * (1.0 - keep) >= 1.0 - 1e-9:
        return min(quantile, midpoint)
    return midpoint


def reference_thresholds(index: ClassIndex, keep: float) -> Floats:
    """Per class, the threshold of the cosine to its nearest reference (NaN: a class without any).

    A class with a single reference has no leave-one-out score of its own
    and takes the threshold of all the classes' scores pooled.
    """
    classes = len(index.classes)
    thresholds = np.full(classes, np.nan, dtype=np.float32)
    labels = index.reference_labels
    if not len(labels):
        return thresholds
    rows = sample_rows(labels, MAX_SAMPLES)
    similarity = index.reference_vectors[rows] @ index.reference_vectors.T
    similarity[np.arange(len(rows)), rows] = -np.inf  # nobody is their own neighbour
    truth = labels[rows]
    negatives = index.negative_vectors
    pooled_in: list[Floats] = []
    pooled_out: list[Floats] = []
    for label in range(classes):
        columns = labels == label
        if not columns.any():
            continue
        nearest = similarity[:, columns].max(axis=1)
        inside = nearest[(truth == label) & np.isfinite(nearest)]
        outside = nearest[truth != label]
        if len(negatives):
            outside = np.concatenate([outside, (negatives @ index.reference_vectors[columns].T).max(axis=1)])
        pooled_out.append(outside)
        if len(inside):
            pooled_in.append(inside)
            thresholds[label] = operating_point(inside, outside, keep)
    lonely = np.isnan(thresholds) & (index.reference_counts() > 0)
    if lonely.any() and pooled_in:
        thresholds[lonely] = operating_point(np.concatenate(pooled_in), np.concatenate(pooled_out), keep)
    return thresholds


def within_own_references(index: ClassIndex, thresholds: Floats) -> Floats:
    """``thresholds`` lowered, where needed, to each class's lowest leave-one-out reference score.

    For features trained on the references themselves (a fine-tuned checkpoint's): its training
    pictures sit closer to each other than new pictures of their class come, so thresholds from their
    medians held a tenth of the inbox's in-class pictures back; no reference the model was trained on
    is held by its own class's gate. Measured on the colour set: in-class held 0.10 -> 0.08, strangers
    kept out unchanged at 0.92.
    """
    labels = index.reference_labels
    similarity = index.reference_vectors @ index.reference_vectors.T
    np.fill_diagonal(similarity, -np.inf)
    lowered = thresholds.copy()
    for label in range(len(index.classes)):
        own = labels == label
        if own.sum() < 2 or np.isnan(lowered[label]):
            continue
        lowest = float(similarity[np.ix_(own, own)].max(axis=1).min())
        lowered[label] = min(float(lowered[label]), lowest)
    return lowered


def text_threshold(index: ClassIndex, keep: float) -> float | None:
    """The threshold of the cosine to a picture's class description, from the references; None without any."""
    labels = index.reference_labels
    if not len(labels):
        return None
    rows = sample_rows(labels, MAX_SAMPLES)
    cosine = index.reference_vectors[rows] @ index.text_vectors.T
    truth = labels[rows]
    inside = cosine[np.arange(len(rows)), truth]
    others = cosine.copy()
    others[np.arange(len(rows)), truth] = -np.inf
    outside = others.max(axis=1) if len(index.classes) > 1 else np.zeros(0, np.float32)
    if len(index.negative_vectors):
        outside = np.concatenate([outside, (index.negative_vectors @ index.text_vectors.T).max(axis=1)])
    return operating_point(inside, outside, keep)


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

    by_reference: bool  # reference and mixed modes: the reference rule, where a class has references
    class_thresholds: Floats  # per class; NaN for a class judged by another rule
    text_threshold: float | None = None
    label_scale: float = 1.0  # CLIP's temperature: negative labels compete with the classes as logits
    words: tuple[str, ...] = ()
    negative_labels: Vectors = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    @property
    def rule(self) -> str:
        """The rule most classes are judged by, as logged."""
        if self.by_reference and not np.isnan(self.class_thresholds).all():
            return "reference"
        if self.text_threshold is not None:
            return "text"
        return "negative labels" if self.words else "none"

    def judge(self, vectors: Vectors, labels: Labels, index: ClassIndex) -> list[Familiarity | None]:
        """Per picture (``labels``: the class each was given), how familiar it is; None: no rule applies."""
        found: list[Familiarity | None] = [None] * len(vectors)
        if not len(vectors):
            return found
        own = self._nearest_own(vectors, labels, index)
        negatives = index.negative_vectors
        nearest_negative = (vectors @ negatives.T).max(axis=1) if len(negatives) else None
        text = np.einsum("ij,ij->i", vectors, index.text_vectors[labels]) if index.text_vectors.size else None
        labelled = self._negative_label_share(vectors, index) if len(self.words) else None
        for row, label in enumerate(labels.tolist()):
            threshold = float(self.class_thresholds[label])
            if own is not None and np.isfinite(own[row]) and not np.isnan(threshold):
                judged = Familiarity("reference", float(own[row]), threshold, bool(own[row] >= threshold))
            elif text is not None and self.text_threshold is not None:
                score = float(text[row])
                judged = Familiarity("text", score, self.text_threshold, score >= self.text_threshold)
            elif labelled is not None:
                share = float(labelled[row])
                judged = Familiarity("negative labels", share, 0.5, share >= 0.5)
            else:
                continue
            if judged.known and nearest_negative is not None and own is not None and np.isfinite(own[row]):
                negative = float(nearest_negative[row])
                if negative >= own[row]:
                    judged = Familiarity("negative", negative, float(own[row]), False)
            found[row] = judged
        return found

    def _nearest_own(self, vectors: Vectors, labels: Labels, index: ClassIndex) -> Floats | None:
        """Each picture's cosine to the nearest reference of its class (-inf: the class has none)."""
        if not len(index.reference_labels):
            return None
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
            decision if familiar is None else replace(decision, familiar=familiar)
            for decision, familiar in zip(decisions, judged, strict=True)
        ]


def calibrate_gate(
    index: ClassIndex,
    *,
    by_reference: bool,
    keep: float,
    label_scale: float = 1.0,
    words: Sequence[str] = (),
    word_vectors: Vectors | None = None,
) -> Gate:
    """The gate of ``index``: reference thresholds (``by_reference``), the text threshold, negative labels.

    ``words`` and their ``word_vectors`` (the candidate negative labels) are
    only needed, and only used, when the dataset has no reference image.
    """
    has_references = len(index.reference_labels) > 0
    thresholds = (
        reference_thresholds(index, keep)
        if by_reference
        else np.full(len(index.classes), np.nan, dtype=np.float32)
    )
    chosen: tuple[str, ...] = ()
    label_vectors = np.zeros((0, 0), np.float32)
    if not has_references and word_vectors is not None and len(words):
        chosen, label_vectors = choose_negative_labels(words, word_vectors, index)
    return Gate(
        by_reference=by_reference,
        class_thresholds=thresholds,
        text_threshold=text_threshold(index, keep),
        label_scale=label_scale,
        words=chosen,
        negative_labels=label_vectors,
    )
