"""Tests for clipsort.classify.modes: the max/avg/text maths and decisions, by hand."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from clipsort.classify.classindex import ClassIndex
from clipsort.classify.modes import MODES, decide, make_classifier, needs_clip
from clipsort.classify.modes import mode as declared_mode
from clipsort.classify.modes.mixed import MixedClassifier
from clipsort.classify.modes.reference import ReferenceClassifier
from clipsort.classify.modes.text import TextClassifier
from clipsort.classify.review import ReviewPolicy
from clipsort.config import DatasetSettings, Mode, load_settings
from clipsort.errors import NoClassesError
from tests.helpers import unit

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
    reference_weights=np.ones(4, dtype=np.float32),
    corrected=np.zeros(4, dtype=np.bool_),
)
QUERY = unit([1, 0])


def test_max_takes_the_single_most_similar_reference() -> None:
    """max: a's best reference (cos 1.0) beats b's best (cos 0.8)."""
    scores = ReferenceClassifier("max").scores(QUERY, INDEX)
    assert scores[0, :2] == pytest.approx([1.0, 0.8])
    assert scores[0, 2] == -np.inf
    assert decide(scores, INDEX.classes, 10.0)[0].label == "a"


def test_avg_takes_the_best_mean_over_references() -> None:
    """avg: a's mean is (1 + -1)/2 = 0, b's is (0.8 + 0.6)/2 = 0.7, so b wins."""
    scores = ReferenceClassifier("avg").scores(QUERY, INDEX)
    assert scores[0, :2] == pytest.approx([0.0, 0.7])
    decision = decide(scores, INDEX.classes, 10.0)[0]
    assert (decision.label, decision.runner_up) == ("b", "a")
    assert decision.similarity == pytest.approx(0.7)
    # softmax(10 * [0, 0.7, -inf]) = [1, e^7, 0] / (1 + e^7)
    assert decision.score == pytest.approx(np.exp(7) / (1 + np.exp(7)))
    assert decision.runner_up_score == pytest.approx(1 / (1 + np.exp(7)))
    assert [label for label, _ in decision.top] == ["b", "a"]
    assert [score for _, score in decision.top] == pytest.approx([decision.score, 0.000911], abs=1e-6)


def test_text_scores_are_cosines_to_descriptions() -> None:
    """text: cos to (1,0), (0,1) and the diagonal."""
    scores = TextClassifier().scores(QUERY, INDEX)
    assert scores[0] == pytest.approx([1.0, 0.0, np.sqrt(0.5)])


def test_decide_breaks_ties_towards_the_earlier_class_and_skips_impossible_runner_up() -> None:
    """Equal scores pick the first class; a -inf runner-up is reported as none."""
    decisions = decide(np.array([[0.5, 0.5], [0.9, -np.inf]], dtype=np.float32), ("x", "y"), 100.0)
    assert [d.label for d in decisions] == ["x", "x"]
    assert decisions[0].runner_up == "y"
    assert decisions[1].runner_up is None
    assert decisions[0].score == pytest.approx(0.5)
    assert decisions[1].score == pytest.approx(1.0)
    assert decisions[1].top == (("x", 1.0),)


def test_mixed_is_text_plus_alpha_times_mean_affinity() -> None:
    """mixed = cos(text) + alpha * mean_j exp(-beta (1 - cos(ref_j))), by hand."""
    scores = MixedClassifier(alpha=2.0, beta=1.0).scores(QUERY, INDEX)
    cache_a = (np.exp(0.0) + np.exp(-2.0)) / 2  # cos 1 and cos -1
    cache_b = (np.exp(-0.2) + np.exp(-0.4)) / 2  # cos 0.8 and cos 0.6
    assert scores[0] == pytest.approx([1.0 + 2 * cache_a, 0.0 + 2 * cache_b, np.sqrt(0.5)], abs=1e-5)
    assert MixedClassifier(alpha=0.0, beta=1.0).scores(QUERY, INDEX)[0] == pytest.approx(
        TextClassifier().scores(QUERY, INDEX)[0]
    )


def test_review_policy_holds_back_uncertain_decisions() -> None:
    """Below min_confidence or min_margin a decision is held back with the reason; off by default."""
    [sure, torn] = decide(np.array([[0.9, 0.1], [0.5, 0.49]], dtype=np.float32), ("x", "y"), 10.0)
    assert ReviewPolicy().hold_back(torn) is None
    assert ReviewPolicy(min_confidence=0.9).hold_back(sure) is None
    unsure = ReviewPolicy(min_confidence=0.9).hold_back(torn)
    assert unsure is not None and unsure.reason == "uncertain" and "confidence" in unsure.detail
    close = ReviewPolicy(min_margin=0.2).hold_back(torn)
    assert close is not None and close.reason == "uncertain" and "margin" in close.detail


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
        reference_weights=np.zeros(0, dtype=np.float32),
        corrected=np.zeros(0, dtype=np.bool_),
    )
    with pytest.raises(NoClassesError, match="no reference images"):
        ReferenceClassifier().check(empty)
    TextClassifier().check(empty)


def test_make_classifier_follows_mode() -> None:
    """The configured mode picks the classifier."""
    base = load_settings(None, {"aggregate": "avg"}).for_dataset("d").model_dump()
    for mode, name in (("text", "text"), ("reference", "reference-avg"), ("mixed", "mixed")):
        assert make_classifier(DatasetSettings(**(base | {"mode": mode}))).name == name


def test_the_mode_registry_declares_every_mode_the_settings_allow() -> None:
    """Every mode a config may name is declared once; what needs CLIP agrees with the settings' view."""
    assert set(MODES) == set(get_args(Mode))
    for name, declared in MODES.items():
        settings = load_settings(None, {"mode": name})
        assert needs_clip(settings) == (declared.model == "clip"), name
        assert (declared.build is None) == (declared.model == "checkpoint"), name
    assert declared_mode("reference-max") is MODES["reference"]
    mixed = load_settings(None, {"mode": "mixed"}).for_dataset("any")
    assert isinstance(make_classifier(mixed), MixedClassifier)
    with pytest.raises(ValueError, match="checkpoint"):
        make_classifier(load_settings(None, {"mode": "finetuned"}).for_dataset("any"))
