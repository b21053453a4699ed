"""Tests for daemon.classifiers: the max/avg/text maths and decisions, by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.classifiers import decide, make_classifier
from daemon.classifiers.reference import ReferenceClassifier
from daemon.classifiers.text import TextClassifier
from daemon.classindex import ClassIndex
from daemon.config import DatasetSettings
from daemon.errors import NoClassesError


def unit(*rows: list[float]) -> np.ndarray:
    array = np.asarray(rows, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


# Three classes in 2-D. Class "a" has two references, one close to the query
# and one far; class "b" has two moderately close ones; class "c" is text-only.
INDEX = ClassIndex(
    dataset="d",
    classes=("a", "b", "c"),
    descriptions=("a", "b", "c"),
    text_vectors=unit([1, 0], [0, 1], [1, 1]),
    reference_vectors=unit([1, 0], [-1, 0], [0.8, 0.6], [0.6, 0.8]),
    reference_labels=np.array([0, 0, 1, 1]),
    reference_paths=tuple(Path(f"r{k}") for k in range(4)),
)
QUERY = unit([1, 0])


def test_max_takes_the_single_most_similar_reference() -> None:
    """max: a's best reference (cos 1.0) beats b's best (cos 0.8)."""
    scores = ReferenceClassifier("max").scores(QUERY, INDEX)
    assert scores[0, :2] == pytest.approx([1.0, 0.8])
    assert scores[0, 2] == -np.inf
    assert decide(scores, INDEX.classes)[0].label == "a"


def test_avg_takes_the_best_mean_over_references() -> None:
    """avg: a's mean is (1 + -1)/2 = 0, b's is (0.8 + 0.6)/2 = 0.7, so b wins."""
    scores = ReferenceClassifier("avg").scores(QUERY, INDEX)
    assert scores[0, :2] == pytest.approx([0.0, 0.7])
    decision = decide(scores, INDEX.classes)[0]
    assert (decision.label, decision.runner_up) == ("b", "a")
    assert decision.score == pytest.approx(0.7)


def test_text_scores_are_cosines_to_descriptions() -> None:
    """text: cos to (1,0), (0,1) and the diagonal."""
    scores = TextClassifier().scores(QUERY, INDEX)
    assert scores[0] == pytest.approx([1.0, 0.0, np.sqrt(0.5)])


def test_decide_breaks_ties_towards_the_earlier_class_and_skips_impossible_runner_up() -> None:
    """Equal scores pick the first class; a -inf runner-up is reported as none."""
    decisions = decide(np.array([[0.5, 0.5], [0.9, -np.inf]], dtype=np.float32), ("x", "y"))
    assert [d.label for d in decisions] == ["x", "x"]
    assert decisions[0].runner_up == "y"
    assert decisions[1].runner_up is None


def test_reference_mode_needs_references() -> None:
    """A dataset with only text-only classes cannot be sorted by reference."""
    empty = ClassIndex(
        dataset="d",
        classes=("a",),
        descriptions=("a",),
        text_vectors=unit([1, 0]),
        reference_vectors=np.zeros((0, 2), dtype=np.float32),
        reference_labels=np.zeros(0, dtype=np.int64),
        reference_paths=(),
    )
    with pytest.raises(NoClassesError, match="no reference images"):
        ReferenceClassifier().check(empty)
    TextClassifier().check(empty)


def test_make_classifier_follows_mode() -> None:
    """The configured mode picks the classifier."""
    base = {"aggregate": "avg", "prompt_templates": ("{}",), "action": "move"}
    assert make_classifier(DatasetSettings(mode="text", **base)).name == "text"
    assert make_classifier(DatasetSettings(mode="reference", **base)).name == "reference-avg"
