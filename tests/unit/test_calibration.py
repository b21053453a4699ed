"""Tests for clipsort.classify.calibration: leave-one-out by hand and the choice of weights."""

from __future__ import annotations

import numpy as np
import pytest

from clipsort.classify.calibration import accuracy, calibrate, confidence_threshold, leave_one_out
from clipsort.classify.scoring import nearest_other_agrees
from tests.helpers import hand_index as index
from tests.helpers import unit


def test_leave_one_out_never_sees_the_sample_itself() -> None:
    """A reference identical to itself must not vote for itself: its nearest *other* reference decides."""
    refs = unit([1, 0], [0.9, 0.1], [0, 1], [0.95, 0.05])
    # r3 is labelled class 1 but sits among class 0. With itself counted every
    # reference would be right (cos 1 with itself); left out, each is judged by
    # its nearest other reference: r0 and r1 by r3, r2 by r1, r3 by r0. All wrong.
    loo = leave_one_out(index(refs, [0, 0, 1, 1], unit([1, 0], [0, 1])))
    assert loo.scores["reference-max"][3, 1] == pytest.approx(float(refs[3] @ refs[2]))
    assert np.argmax(loo.scores["reference-max"], axis=1).tolist() == [1, 1, 0, 0]
    assert accuracy(loo.scores["reference-max"], loo.truth) == 0.0
    # class 1 of sample 2 has one other reference (r3); its mean excludes r2 itself
    assert loo.scores["reference-avg"][2, 1] == pytest.approx(float(refs[2] @ refs[3]), abs=1e-6)


def test_single_reference_class_has_nothing_left_in_leave_one_out() -> None:
    """With its only reference held out, a class cannot be chosen by the reference modes."""
    loo = leave_one_out(index(unit([1, 0], [0, 1], [0.1, 1]), [0, 1, 1], unit([1, 0], [0, 1])))
    assert loo.scores["reference-max"][0, 0] == -np.inf
    assert loo.scores["reference-avg"][0, 0] == -np.inf


def test_opaque_names_get_more_visual_weight_than_informative_ones() -> None:
    """Same pictures; text that points the right way vs text that says nothing."""
    rng = np.random.default_rng(0)
    centres = unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    refs = np.concatenate([centres[c] + 0.05 * rng.standard_normal((6, 3)) for c in range(3)]).astype(
        np.float32
    )
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    labels = [c for c in range(3) for _ in range(6)]
    informative = calibrate(index(refs, labels, centres), 100.0, mode="mixed")
    opaque = calibrate(index(refs, labels, unit([1, 1, 1], [1, 1, 1.01], [1.01, 1, 1])), 100.0, mode="mixed")
    assert opaque.accuracy["text"] < informative.accuracy["text"]
    assert opaque.visual_weight > informative.visual_weight
    assert opaque.accuracy["mixed"] == 1.0


def test_explicit_weights_are_kept_and_no_references_means_text_only() -> None:
    """Numbers in the config are not second-guessed; without references alpha is 0."""
    refs = unit([1, 0], [0, 1])
    assert calibrate(index(refs, [0, 1], refs), 100.0, mode="mixed", alpha=0.5, beta=3.0).alpha == 0.5
    empty = index(np.zeros((0, 2), np.float32), [], refs)
    assert calibrate(empty, 100.0, mode="mixed").alpha == 0.0


def test_confidence_threshold_keeps_the_asked_share_of_correct_samples() -> None:
    """keep=0.75 of four correct samples: the threshold is the lower quartile of their top probabilities."""
    scores = np.array([[0.9, 0.0], [0.5, 0.0], [0.3, 0.0], [0.1, 0.0], [0.0, 0.9]], dtype=np.float32)
    truth = np.array([0, 0, 0, 0, 0])
    threshold = confidence_threshold(scores, truth, 10.0, keep=0.75)
    tops = 1 / (1 + np.exp(-10 * np.array([0.9, 0.5, 0.3, 0.1])))
    assert threshold == pytest.approx(np.quantile(tops, 0.25))
    assert confidence_threshold(scores[4:], truth[4:], 10.0, keep=0.9) is None


def test_nearest_other_agrees_leaves_each_row_out() -> None:
    """Each row is judged by its nearest *other* row, never by itself."""
    vectors = unit([1, 0], [0.9, 0.1], [0, 1], [0.2, 0.8], [0.85, 0.15])
    labels = np.asarray(["a", "a", "b", "b", "b"])
    # Row 4 (a b) lies among the a's: it and row 1 (an a) are each other's nearest, both wrong;
    # row 0's nearest is row 1, and rows 2 and 3 are each other's.
    assert nearest_other_agrees(vectors, labels).tolist() == [True, False, True, True, False]
