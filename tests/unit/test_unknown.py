"""Tests for clipsort.classify.unknown: the "none of these" gate's maths, by hand."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from clipsort.classify.classindex import Labels
from clipsort.classify.modes.base import Decision, Familiarity
from clipsort.classify.review import ReviewPolicy
from clipsort.classify.unknown import (
    Floats,
    Gate,
    calibrate_gate,
    candidate_words,
    choose_negative_labels,
    midpoints,
    own_scores,
    reference_thresholds,
    student_quantile,
    text_threshold,
    threshold_at,
    thresholds_from_unseen,
)
from clipsort.encode.vectors import Vectors
from clipsort.encode.vocabulary import whole_words
from tests.helpers import hand_index, unit


def spread(centre: list[float], count: int, noise: float, seed: int) -> Vectors:
    """``count`` unit vectors scattered around ``centre``."""
    rng = np.random.default_rng(seed)
    rows = np.asarray(centre, dtype=np.float32) + noise * rng.standard_normal((count, len(centre)))
    scaled: Vectors = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return scaled


def scores_of(classes: list[list[float]]) -> tuple[Floats, Labels]:
    """Hand-written leave-one-out scores, one list per class, and their class labels."""
    scores = np.concatenate([np.asarray(c, dtype=np.float32) for c in classes])
    return scores, np.repeat(np.arange(len(classes)), [len(c) for c in classes]).astype(np.int64)


def test_a_normal_class_holds_about_the_share_asked_for() -> None:
    """Many scores, normally spread: about ``held`` of them fall below the threshold, at every setting."""
    rng = np.random.default_rng(0)
    scores, truth = scores_of([list(1.2 + 0.05 * rng.standard_normal(2000)) for _ in range(3)])
    for held in (0.02, 0.05, 0.1, 0.2):
        thresholds, pooled = threshold_at(scores, truth, 3, held)
        below = [np.mean(scores[truth == k] < thresholds[k]) for k in range(3)]
        assert all(abs(share - held) < 0.02 for share in below), (held, below)
        assert abs(np.mean(scores < pooled) - held) < 0.02


def test_with_a_handful_of_references_one_odd_one_does_not_open_the_class() -> None:
    """Eight scores, one an outlier: the pooled robust spread, not the least score, sets the threshold."""
    steady = [1.50, 1.52, 1.49, 1.51, 1.50, 1.53, 1.48, 1.51]
    scores, truth = scores_of([[*steady[:7], 0.90], steady, steady])
    thresholds, _ = threshold_at(scores, truth, 3, 0.05)
    assert thresholds[0] > 1.3 > 0.9 + 0.3 > float(np.quantile(scores[truth == 0], 0.05))
    assert np.sum(scores[truth == 0] < thresholds[0]) == 1  # only the odd one
    # The spread is pooled: the odd score moves its own class's location, not the others' thresholds.
    assert thresholds[1] == pytest.approx(thresholds[2]) and thresholds[1] > thresholds[0]


def test_a_class_with_many_scores_moves_toward_its_own_quantile() -> None:
    """Shrinkage: a class's own quantile weighs n / (n + 2 / held), the pooled estimate the rest."""
    rng = np.random.default_rng(1)
    few = list(1.2 + 0.02 * rng.standard_normal(8))
    many = list(1.2 + 0.10 * rng.standard_normal(400))  # wide: its own quantile sits far lower
    scores, truth = scores_of([few, many])
    thresholds, _ = threshold_at(scores, truth, 2, 0.05)
    own = float(np.quantile(many, 0.05))
    assert abs(thresholds[1] - own) < 0.02
    assert np.mean(np.asarray(many) < thresholds[1]) == pytest.approx(0.05, abs=0.02)


def test_a_far_picture_is_unknown_and_a_near_one_is_known() -> None:
    """The nearest same-class reference plus the description, against the class's own threshold."""
    refs = np.concatenate([spread([1, 0, 0], 6, 0.05, 0), spread([0, 1, 0], 6, 0.05, 1)])
    index = hand_index(refs, [0] * 6 + [1] * 6, unit([1, 0, 0], [0, 1, 0]))
    gate = calibrate_gate(index, held=0.05)
    near, far = unit([0.99, 0.05, 0.0], [0.3, 0.3, 0.9])
    judged = gate.judge(np.stack([near, far]), np.asarray([0, 0]), index)
    assert judged[0] is not None and judged[0].basis == "reference+description" and judged[0].known
    assert judged[1] is not None and judged[1].basis == "reference+description" and not judged[1].known
    score = float(np.max(refs[:6] @ near) + near @ index.text_vectors[0])
    assert judged[0].score == pytest.approx(score, abs=1e-5)
    assert (
        np.mean([f is not None and f.known for f in gate.judge(refs, index.reference_labels, index)]) >= 0.8
    )


def test_a_look_alike_near_one_odd_reference_is_held_by_the_description() -> None:
    """One reference of class 0 lies among class 1's pictures: a picture beside it is near a reference
    of class 0, but far from class 0's description, so the sum holds it where the reference alone
    would not."""
    odd = unit([0.1, 1, 0])
    refs = np.concatenate([spread([1, 0, 0], 7, 0.05, 0), odd, spread([0, 1, 0], 8, 0.05, 1)])
    index = hand_index(refs, [0] * 8 + [1] * 8, unit([1, 0, 0], [0, 1, 0]))
    gate = calibrate_gate(index, held=0.05)
    look_alike = unit([0.12, 1, 0.02])
    judged = gate.judge(look_alike, np.asarray([0]), index)[0]
    assert judged is not None and not judged.known
    bare = replace(index, text_vectors=np.zeros((2, 0), np.float32))  # no descriptions: features only
    alone = calibrate_gate(bare, held=0.05).judge(look_alike, np.asarray([0]), bare)[0]
    assert alone is not None and alone.basis == "reference" and alone.known


def test_a_class_with_one_reference_takes_the_pooled_threshold_and_one_without_none() -> None:
    """No leave-one-out score of its own: the pooled threshold, with its own description's part
    (from its one reference) in place of the pooled one; no reference at all: NaN (another rule)."""
    refs = np.concatenate([spread([1, 0, 0], 5, 0.05, 0), unit([0, 1, 0])])
    index = hand_index(refs, [0] * 5 + [1], unit([1, 0, 0], [0, 1, 0], [0, 0, 1]))
    thresholds = reference_thresholds(index, 0.05)
    assert np.isfinite(thresholds[0]) and np.isfinite(thresholds[1]) and np.isnan(thresholds[2])
    similarity = refs[:5] @ refs[:5].T
    np.fill_diagonal(similarity, -np.inf)
    text = refs[:5] @ index.text_vectors[0]
    own = similarity.max(axis=1) + text  # class 0's scores, the only ones
    pooled = threshold_at(own, np.zeros(5, np.int64), 3, 0.05)[1]
    assert thresholds[1] == pytest.approx(pooled - text.mean() + refs[5] @ index.text_vectors[1], abs=1e-5)


def test_a_class_without_references_is_judged_by_its_description() -> None:
    """The text rule's threshold comes from the references' cosines to their own descriptions."""
    refs = spread([1, 0, 0], 8, 0.05, 0)
    text = unit([0.9, 0.1, 0], [0, 0.3, 1])
    index = hand_index(refs, [0] * 8, text)
    gate = calibrate_gate(index, held=0.05)
    assert gate.text_threshold == pytest.approx(text_threshold(index, 0.05))
    like_text, unlike = unit([0, 0.3, 1], [1, 1, 0])
    judged = gate.judge(np.stack([like_text, unlike]), np.asarray([1, 1]), index)
    assert [f.basis if f else None for f in judged] == ["text", "text"]
    assert judged[0] is not None and judged[0].known
    assert judged[1] is not None and not judged[1].known


def test_more_held_means_higher_thresholds() -> None:
    """The knob: a larger share held raises every class's threshold (and so keeps more strangers out).

    The classes are look-alikes (near each other), so the cap toward the strangers does not bind.
    """
    refs = np.concatenate([spread([1, 0.6, 0], 8, 0.1, 0), spread([0.6, 1, 0], 8, 0.1, 1)])
    index = hand_index(refs, [0] * 8 + [1] * 8, unit([1, 0.6, 0], [0.6, 1, 0]))
    low, high = reference_thresholds(index, 0.02), reference_thresholds(index, 0.2)
    assert (high > low).all()


def test_far_strangers_cap_the_threshold_near_ones_do_not() -> None:
    """Two tight classes far apart: the cap between each class and the other sets the threshold,
    below the held-share one; the same classes with a look-alike between them keep theirs."""
    refs = np.concatenate([spread([1, 0, 0], 4, 0.1, 0), spread([0, 1, 0], 4, 0.1, 1)])
    index = hand_index(refs, [0] * 4 + [1] * 4, unit([1, 0, 0], [0, 1, 0]))
    scores = own_scores(index, np.arange(8))
    caps = midpoints(index, np.arange(8), scores)
    held_share, _ = threshold_at(scores, index.reference_labels, 2, 0.2)
    assert (caps < held_share).all()
    assert reference_thresholds(index, 0.2) == pytest.approx(caps)
    near = np.concatenate([refs, spread([0.9, 0.45, 0], 4, 0.01, 2)])  # strangers beside class 0
    shown = replace(index, negative_vectors=near[8:])
    assert midpoints(shown, np.arange(8), scores)[0] > caps[0]


def test_student_quantile_is_wider_than_the_normal_for_few_scores() -> None:
    """Few degrees of freedom widen the bound; many give the normal quantile."""
    assert student_quantile(0.05, 6) == pytest.approx(-1.943, abs=0.01)  # tables: t(0.05, 6) = -1.943
    assert student_quantile(0.05, 1000) == pytest.approx(-1.645, abs=0.005)
    assert student_quantile(0.05, 3) < student_quantile(0.05, 30) < -1.64


def test_references_a_checkpoint_never_saw_lower_its_thresholds() -> None:
    """Trained references sit tight; the unseen ones score lower, and the thresholds follow them down,
    never up."""
    tight = np.concatenate([spread([1, 0, 0], 8, 0.02, 0), spread([0, 1, 0], 8, 0.02, 1)])
    loose = np.concatenate([spread([1, 0, 0], 3, 0.3, 2), spread([0, 1, 0], 3, 0.3, 3)])
    refs = np.concatenate([tight, loose])
    labels = [0] * 8 + [1] * 8 + [0] * 3 + [1] * 3
    index = hand_index(refs, labels, unit([1, 0, 0], [0, 1, 0]))
    unseen = np.asarray([False] * 16 + [True] * 6)
    lowered = thresholds_from_unseen(index, unseen, 0.05)
    assert lowered is not None and (lowered < reference_thresholds(index, 0.05)).all()
    high = np.concatenate([tight, spread([1, 0, 0], 3, 0.001, 4), spread([0, 1, 0], 3, 0.001, 5)])
    scoring_high = hand_index(high, labels, index.text_vectors)  # the unseen ones at the centre
    raised = thresholds_from_unseen(scoring_high, unseen, 0.05)
    assert raised is not None and (raised <= reference_thresholds(scoring_high, 0.05)).all()
    assert thresholds_from_unseen(index, np.zeros(22, np.bool_), 0.05) is None


def test_a_picture_nearer_a_negative_than_its_class_is_unknown() -> None:
    """Clases/_none/: as close to a negative as to the class's nearest reference means none of these."""
    refs = spread([1, 0, 0], 6, 0.02, 0)
    negatives = spread([0.8, 0.6, 0], 4, 0.02, 1)
    index = hand_index(refs, [0] * 6, unit([1, 0, 0]), negatives=negatives)
    gate = Gate(class_thresholds=np.asarray([0.0], np.float32))  # every picture passes the threshold
    like_negative, like_class = unit([0.8, 0.6, 0.0], [1.0, 0.02, 0.0])
    judged = gate.judge(np.stack([like_negative, like_class]), np.asarray([0, 0]), index)
    assert judged[0] is not None and judged[0].basis == "negative" and not judged[0].known
    assert judged[1] is not None and judged[1].basis == "reference+description" and judged[1].known


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
        held=0.05,
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


def test_a_picture_filed_by_hand_into_a_class_moves_its_threshold() -> None:
    """A correction joins its class's references: that class's threshold moves down, the other's
    less, and a picture like the corrections, held before, comes far nearer its threshold (the
    pooled robust spread keeps two odd references from opening the class at once: more do)."""
    refs = np.concatenate([spread([1, 0.5, 0], 8, 0.05, 0), spread([0.5, 1, 0], 8, 0.05, 1)])
    text = unit([1, 0.5, 0], [0.5, 1, 0])
    before = hand_index(refs, [0] * 8 + [1] * 8, text)
    held = unit([1, 0.5, 0.5])  # a picture of class 0 unlike its references
    first = calibrate_gate(before, held=0.07).judge(held, np.asarray([0]), before)[0]
    assert first is not None and not first.known
    corrected = spread([1, 0.5, 0.5], 2, 0.02, 2)  # two such pictures a person filed into class 0
    after = hand_index(np.concatenate([refs, corrected]), [0] * 8 + [1] * 8 + [0, 0], text)
    after = replace(after, corrected=np.asarray([False] * 16 + [True] * 2))
    moved = reference_thresholds(after, 0.07) - reference_thresholds(before, 0.07)
    assert moved[0] < -0.01 and abs(moved[1]) < abs(moved[0])
    second = calibrate_gate(after, held=0.07).judge(held, np.asarray([0]), after)[0]
    assert second is not None
    assert second.score - second.threshold > first.score - first.threshold + 0.05
