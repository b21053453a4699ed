"""Tests for clipsort.classify.unknown: the "none of these" gate's maths, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from clipsort.classify.modes.base import Decision, Familiarity
from clipsort.classify.review import ReviewPolicy
from clipsort.classify.unknown import (
    Gate,
    calibrate_gate,
    candidate_words,
    choose_negative_labels,
    operating_point,
    reference_thresholds,
    text_threshold,
)
from clipsort.encode.encoder import whole_words
from clipsort.encode.vectors import Vectors
from tests.helpers import hand_index, unit


def spread(centre: list[float], count: int, noise: float, seed: int) -> Vectors:
    """``count`` unit vectors scattered around ``centre``."""
    rng = np.random.default_rng(seed)
    rows = np.asarray(centre, dtype=np.float32) + noise * rng.standard_normal((count, len(centre)))
    scaled: Vectors = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return scaled


def test_operating_point_keeps_the_share_asked_for_and_stays_below_the_midpoint() -> None:
    """With enough scores at least ``keep`` pass and the threshold never exceeds the geometric midpoint."""
    inside = np.linspace(0.80, 0.99, 40, dtype=np.float32)
    alone = operating_point(inside, np.zeros(0, np.float32), 0.9)
    assert np.mean(inside >= alone) >= 0.9
    outside = np.full(10, 0.2, dtype=np.float32)
    assert np.mean(inside >= operating_point(inside, outside, 0.9)) >= 0.9
    capped = operating_point(np.full(40, 0.99, np.float32), outside, 0.95)
    # Distances 0.01 in, 0.8 out: the geometric midpoint is at distance 0.0894.
    assert capped == pytest.approx(1 - np.sqrt(0.01 * 0.8), abs=1e-5)


def test_with_a_handful_of_references_one_odd_one_does_not_open_the_class() -> None:
    """Four scores, one an outlier: the medians' midpoint, not the least score, sets the threshold."""
    inside = np.asarray([0.995, 0.994, 0.992, 0.62], dtype=np.float32)
    outside = np.full(4, 0.3, dtype=np.float32)
    threshold = operating_point(inside, outside, 0.95)
    assert threshold == pytest.approx(1 - np.sqrt((1 - 0.993) * 0.7), abs=1e-5)
    assert threshold > 0.9 > float(np.quantile(inside, 0.05))
    assert np.sum(inside >= threshold) == 3


def test_a_far_picture_is_unknown_and_a_near_one_is_known() -> None:
    """Reference rule: the cosine to the given class's nearest reference against its own threshold."""
    refs = np.concatenate([spread([1, 0, 0], 6, 0.05, 0), spread([0, 1, 0], 6, 0.05, 1)])
    index = hand_index(refs, [0] * 6 + [1] * 6, unit([1, 0, 0], [0, 1, 0]))
    gate = calibrate_gate(index, by_reference=True, keep=0.95)
    near, far = unit([0.99, 0.05, 0.0], [0.3, 0.3, 0.9])
    judged = gate.judge(np.stack([near, far]), np.asarray([0, 0]), index)
    assert judged[0] is not None and judged[0].basis == "reference" and judged[0].known
    assert judged[1] is not None and judged[1].basis == "reference" and not judged[1].known
    assert (
        np.mean([f is not None and f.known for f in gate.judge(refs, index.reference_labels, index)]) >= 0.95
    )


def test_a_class_with_one_reference_takes_the_pooled_threshold_and_one_without_none() -> None:
    """No leave-one-out score of its own: the pooled one; no reference at all: NaN (another rule)."""
    refs = np.concatenate([spread([1, 0, 0], 5, 0.05, 0), unit([0, 1, 0])])
    index = hand_index(refs, [0] * 5 + [1], unit([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    thresholds = reference_thresholds(index, 0.95)
    assert np.isfinite(thresholds[0]) and np.isfinite(thresholds[1]) and np.isnan(thresholds[2])
    similarity = refs @ refs.T
    np.fill_diagonal(similarity, -np.inf)
    inside = similarity[:5, :5].max(axis=1)  # class 0's leave-one-out scores, the only ones there are
    outside = np.concatenate([similarity[5:, :5].max(axis=1), similarity[:5, 5]])
    assert thresholds[1] == pytest.approx(operating_point(inside, outside, 0.95), abs=1e-6)


def test_mixed_mode_judges_a_class_without_references_by_its_description() -> None:
    """The text rule's threshold comes from the references' cosines to their own descriptions."""
    refs = spread([1, 0, 0], 8, 0.05, 0)
    text = unit([0.9, 0.1, 0], [0, 0.3, 1])
    index = hand_index(refs, [0] * 8, text)
    gate = calibrate_gate(index, by_reference=True, keep=0.95)
    assert gate.text_threshold == pytest.approx(text_threshold(index, 0.95))
    like_text, unlike = unit([0, 0.3, 1], [1, 1, 0])
    judged = gate.judge(np.stack([like_text, unlike]), np.asarray([1, 1]), index)
    assert [f.basis if f else None for f in judged] == ["text", "text"]
    assert judged[0] is not None and judged[0].known
    assert judged[1] is not None and not judged[1].known


def test_text_mode_uses_the_text_rule_even_for_classes_with_references() -> None:
    """MCM: the raw cosine to the class description, not the references, decides in text mode."""
    refs = np.concatenate([spread([1, 0, 0], 6, 0.05, 0), spread([0, 1, 0], 6, 0.05, 1)])
    index = hand_index(refs, [0] * 6 + [1] * 6, unit([1, 0, 0], [0, 1, 0]))
    gate = calibrate_gate(index, by_reference=False, keep=0.95)
    judged = gate.judge(refs[:2], np.asarray([0, 0]), index)
    assert all(f is not None and f.basis == "text" and f.known for f in judged)
    assert gate.rule == "text"


def test_a_picture_nearer_a_negative_than_its_class_is_unknown() -> None:
    """Clases/_none/: as close to a negative as to the class's nearest reference means none of these."""
    refs = spread([1, 0, 0], 6, 0.02, 0)
    negatives = spread([0.8, 0.6, 0], 4, 0.02, 1)
    index = hand_index(refs, [0] * 6, unit([1, 0, 0]), negatives=negatives)
    gate = Gate(by_reference=True, class_thresholds=np.asarray([0.0], np.float32))  # every picture passes
    like_negative, like_class = unit([0.8, 0.6, 0.0], [1.0, 0.02, 0.0])
    judged = gate.judge(np.stack([like_negative, like_class]), np.asarray([0, 0]), index)
    assert judged[0] is not None and judged[0].basis == "negative" and not judged[0].known
    assert judged[1] is not None and judged[1].basis == "reference" and judged[1].known


def test_negatives_nearer_a_class_place_its_threshold_higher() -> None:
    """Negatives count among the strangers that place a class's threshold; unrelated ones change nothing.

    With no stranger at all (one class, no negatives) an unrelated picture at
    cosine 0 stands in, so negatives at right angles to the class agree with it.
    """
    refs = spread([1, 0, 0], 6, 0.05, 0)

    def threshold(negative_centre: list[float]) -> float:
        negatives = spread(negative_centre, 6, 0.02, 2)
        return float(
            reference_thresholds(hand_index(refs, [0] * 6, unit([1, 0, 0]), negatives=negatives), 0.95)[0]
        )

    alone = float(reference_thresholds(hand_index(refs, [0] * 6, unit([1, 0, 0])), 0.95)[0])
    assert threshold([0, 0, 1]) == pytest.approx(alone, abs=0.005)
    assert threshold([0, 0, 1]) < threshold([0.9, 0.43, 0])


def test_negative_labels_are_the_words_farthest_from_every_class_and_never_a_class_word() -> None:
    """NegLabel's choice: the class's own words are excluded, the farthest quarter kept."""
    index = hand_index(
        np.zeros((0, 3), np.float32), [], unit([1, 0, 0], [0, 1, 0]), descriptions=("red", "a blue")
    )
    words = ("red", "blue", "crimson", "navy", "tree", "cloud", "stone", "river")
    vectors = unit(
        [1, 0, 0],
        [0, 1, 0],
        [0.9, 0.1, 0],
        [0.1, 0.9, 0],
        [0, 0, 1],
        [0, 0.1, 1],
        [0.1, 0, 1],
        [0.5, 0.5, 0.7],
    )
    chosen, chosen_vectors = choose_negative_labels(words, vectors, index)
    assert "red" not in chosen and "blue" not in chosen
    assert set(chosen) <= {"tree", "cloud", "stone"} and len(chosen) == round(0.25 * 6)
    assert chosen_vectors.shape == (len(chosen), 3)


def test_without_references_the_negative_labels_decide() -> None:
    """A text-only dataset: unknown when the negative labels together outweigh the classes."""
    index = hand_index(np.zeros((0, 3), np.float32), [], unit([1, 0, 0], [0, 1, 0]))
    words = ("tree", "cloud")
    gate = calibrate_gate(
        index,
        by_reference=False,
        keep=0.95,
        label_scale=10.0,
        words=words,
        word_vectors=unit([0, 0, 1], [0, 0.2, 1]),
    )
    assert gate.rule == "negative labels" and gate.text_threshold is None
    judged = gate.judge(unit([1, 0, 0.1], [0.1, 0, 1]), np.asarray([0, 0]), index)
    assert judged[0] is not None and judged[0].known and judged[0].basis == "negative labels"
    assert judged[1] is not None and not judged[1].known


def test_candidate_words_are_an_even_fixed_sample_of_the_vocabulary() -> None:
    """The same words every time, spread over the whole vocabulary."""
    vocabulary = tuple(f"w{k:05d}" for k in range(10_000))
    picked = candidate_words(vocabulary, 100)
    assert len(picked) == 100 and picked == candidate_words(vocabulary, 100)
    assert picked[0] == "w00000" and picked[-1] == "w09999"
    assert candidate_words(("a", "b"), 100) == ("a", "b")


def test_whole_words_reads_bpe_wordpiece_and_sentencepiece_vocabularies() -> None:
    """Word ends in BPE, word starts in WordPiece and SentencePiece; pieces and short tokens dropped."""
    assert whole_words(["photo</w>", "pho", "gree", "green</w>", "a</w>", "3d</w>"]) == ("green", "photo")
    assert whole_words(["##ing", "play", "Tree", "ok"]) == ("play", "tree")
    assert whole_words(["\u2581river", "\u2581ab", "er"]) == ("river",)


def test_unknown_is_held_before_uncertain_and_each_says_why() -> None:
    """Review reasons: unknown from the gate first, then uncertain from the softmax thresholds."""
    decision = Decision("red", 0.55, "blue", 0.45, 0.4, (("red", 0.55), ("blue", 0.45)))
    policy = ReviewPolicy(min_confidence=0.6)
    stranger = Decision(**{**vars(decision), "familiar": Familiarity("reference", 0.41, 0.85, False)})
    held = policy.hold_back(stranger)
    assert held is not None and held.reason == "unknown" and held.detail == "reference 0.410 < 0.850"
    unsure = policy.hold_back(
        Decision(**{**vars(decision), "familiar": Familiarity("reference", 0.9, 0.85, True)})
    )
    assert unsure is not None and unsure.reason == "uncertain" and "confidence" in unsure.detail
    assert ReviewPolicy().hold_back(decision) is None
