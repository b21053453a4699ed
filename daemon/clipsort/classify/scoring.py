"""The scoring maths the modes, calibration and the unknown gate share: arrays in, arrays out.

Pure NumPy: nothing here knows a mode, a file or a model.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from clipsort.classify.classindex import Labels

Scores = npt.NDArray[np.float32]  # one row per picture, one column per class


def probabilities(scores: Scores, logit_scale: float) -> Scores:
    """Softmax of ``logit_scale * scores`` per row; ``-inf`` scores get probability 0."""
    logits = logit_scale * scores.astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    result: Scores = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    return result


def class_means(
    values: npt.NDArray[np.float32],
    labels: Labels,
    classes: int,
    weights: npt.NDArray[np.float32] | None = None,
) -> Scores:
    """Per row, the (weighted) mean of ``values`` over each class's columns (0 where a class has none)."""
    onehot = np.zeros((len(labels), classes), dtype=np.float32)
    onehot[np.arange(len(labels)), labels] = 1.0 if weights is None else weights
    counts = onehot.sum(axis=0)
    sums = values @ onehot
    means: Scores = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return means


def affinity(similarity: npt.NDArray[np.float32], beta: float) -> npt.NDArray[np.float32]:
    """Tip-Adapter's sharpened affinity: 1 for an identical picture, falling with beta."""
    result: npt.NDArray[np.float32] = np.exp(-beta * (1.0 - similarity)).astype(np.float32)
    return result


def nearest_other_agrees(
    vectors: npt.NDArray[np.float32], labels: npt.NDArray[np.generic]
) -> npt.NDArray[np.bool_]:
    """Leave-one-out 1-NN: per row, whether its most similar *other* row has the same label.

    Its mean over a class's rows is what the reference-max mode would get right of them with each
    left out; the review page shows it per class. (Calibration reaches the same figure from the
    per-class score matrix it builds for every mode, which it needs for more than this.)
    """
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    agrees: npt.NDArray[np.bool_] = labels[similarity.argmax(axis=1)] == labels
    return agrees
