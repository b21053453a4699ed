"""Leave-one-out over a dataset's reference images: mode accuracies, alpha and beta, thresholds.

Every reference image is classified by the others (its own row removed from
the index), which tells, without any labelled test set, how well each mode
works on these classes, which mixed-mode weights work best, and what
probability a correctly classified picture usually reaches. Pure maths:
vectors in, numbers out. At most ``MAX_SAMPLES`` references are used, a
fixed stratified choice, so a 10,000-image class index calibrates in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from clipsort.classify.classindex import ClassIndex
from clipsort.classify.scoring import Scores, affinity, class_means, probabilities

ALPHAS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
BETAS = (1.0, 2.0, 4.0, 8.0)
MAX_SAMPLES = 2000


@dataclass(frozen=True)
class Calibration:
    """What leave-one-out found for one dataset."""

    alpha: float
    beta: float
    samples: int
    accuracy: dict[str, float] = field(default_factory=dict)  # mode name -> leave-one-out accuracy
    min_confidence: float | None = None  # the auto threshold, when asked for
    visual_weight: float = 0.0  # share of the mixed scores' spread that comes from the pictures


@dataclass(frozen=True)
class LeaveOneOut:
    """Per mode, the score matrix of each sampled reference against the others."""

    truth: npt.NDArray[np.int64]
    scores: dict[str, Scores]


def sample_rows(labels: npt.NDArray[np.int64], limit: int) -> npt.NDArray[np.int64]:
    """All rows, or a fixed stratified subset of ``limit`` rows."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(0)
    picked = [
        rng.permutation(np.flatnonzero(labels == c))[: max(1, round(limit * np.mean(labels == c)))]
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(picked))


def leave_one_out(index: ClassIndex, betas: tuple[float, ...] = BETAS) -> LeaveOneOut:
    """Scores of every mode (and every beta of the cache term) with each sample's own row removed."""
    rows = sample_rows(index.reference_labels, MAX_SAMPLES)
    queries = index.reference_vectors[rows]
    truth = index.reference_labels[rows]
    classes = len(index.classes)
    similarity = queries @ index.reference_vectors.T
    own = (np.arange(len(rows)), rows)
    weights = index.reference_weights
    counts = np.bincount(index.reference_labels, weights=weights, minlength=classes).astype(np.float32)
    others = np.tile(counts, (len(rows), 1))
    others[np.arange(len(rows)), truth] -= weights[rows]  # each sample's own class loses its own weight

    def mean_without_self(values: npt.NDArray[np.float32]) -> Scores:
        sums = class_means(values, index.reference_labels, classes, weights) * counts
        sums[np.arange(len(rows)), truth] -= values[own] * weights[rows]
        result: Scores = np.divide(sums, others, out=np.zeros_like(sums), where=others > 0)
        return result

    masked = similarity.copy()
    masked[own] = -np.inf
    best = np.full((len(rows), classes), -np.inf, dtype=np.float32)
    for label in range(classes):
        columns = masked[:, index.reference_labels == label]
        if columns.shape[1]:
            best[:, label] = columns.max(axis=1)
    average = np.where(others > 1e-6, mean_without_self(similarity), -np.inf).astype(np.float32)
    scores: dict[str, Scores] = {
        "text": queries @ index.text_vectors.T,
        "reference-max": best,
        "reference-avg": average,
    }
    for beta in betas:
        scores[f"cache@{beta}"] = mean_without_self(affinity(similarity, beta))
    return LeaveOneOut(truth=truth, scores=scores)


def accuracy(scores: Scores, truth: npt.NDArray[np.int64]) -> float:
    """Share of rows whose best column is the true class."""
    return float(np.mean(np.argmax(scores, axis=1) == truth)) if len(truth) else 0.0


def mixed_scores(loo: LeaveOneOut, alpha: float, beta: float) -> Scores:
    """Leave-one-out scores of mixed mode at (alpha, beta)."""
    return loo.scores["text"] + alpha * loo.scores[f"cache@{beta}"]


def calibrate(
    index: ClassIndex,
    logit_scale: float,
    *,
    mode: str,
    alpha: float | None = None,
    beta: float | None = None,
    keep: float | None = None,
) -> Calibration:
    """Leave-one-out accuracy of every mode; alpha/beta where not given; the auto threshold for ``mode``.

    Alpha and beta maximise leave-one-out accuracy, then the true class's mean
    log-probability (a proper scoring rule, so the probabilities stay honest);
    remaining ties go to the smaller alpha. Because alpha is on the text's
    scale, how much the pictures actually decide is reported apart, as
    ``visual_weight``: the cache term's share of the spread of the scores.
    ``mode`` is a classifier name (``text``, ``reference-max``, ``reference-avg``,
    ``mixed``); with ``keep`` the result carries the probability threshold
    that keeps that share of its correctly classified references.
    """
    if len(index.reference_labels) == 0:
        return Calibration(alpha=alpha or 0.0, beta=beta or BETAS[0], samples=0)
    loo = leave_one_out(index, BETAS if beta is None else (beta,))
    rows = np.arange(len(loo.truth))
    best: tuple[float, float, float, float] | None = None
    for b in BETAS if beta is None else (beta,):
        for a in ALPHAS if alpha is None else (alpha,):
            scores = mixed_scores(loo, a, b)
            log_prob = float(np.mean(np.log(probabilities(scores, logit_scale)[rows, loo.truth] + 1e-12)))
            key = (accuracy(scores, loo.truth), log_prob, -a, -b)
            if best is None or key > best:
                best = key
    assert best is not None
    chosen_alpha, chosen_beta = -best[2], -best[3]
    text_spread = float(np.mean(np.std(loo.scores["text"], axis=1)))
    cache_spread = chosen_alpha * float(np.mean(np.std(loo.scores[f"cache@{chosen_beta}"], axis=1)))
    by_mode = {name: loo.scores[name] for name in ("text", "reference-max", "reference-avg")}
    by_mode["mixed"] = mixed_scores(loo, chosen_alpha, chosen_beta)
    threshold = None
    if keep is not None:
        threshold = confidence_threshold(by_mode[mode], loo.truth, logit_scale, keep)
    return Calibration(
        alpha=chosen_alpha,
        beta=chosen_beta,
        samples=len(loo.truth),
        accuracy={name: accuracy(scores, loo.truth) for name, scores in by_mode.items()},
        min_confidence=threshold,
        visual_weight=cache_spread / (text_spread + cache_spread) if text_spread + cache_spread else 0.0,
    )


def confidence_threshold(
    scores: Scores, truth: npt.NDArray[np.int64], logit_scale: float, keep: float
) -> float | None:
    """The probability that ``keep`` of the correctly classified samples reach; None if none is correct."""
    probs = probabilities(scores, logit_scale)
    correct = np.argmax(scores, axis=1) == truth
    if not correct.any():
        return None
    return float(np.quantile(probs.max(axis=1)[correct], 1.0 - keep))
