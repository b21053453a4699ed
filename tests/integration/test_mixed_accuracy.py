"""Integration: mixed embeddings, descriptions, text_model and Review/ with the tiny trained CLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsort.classify.targets import make_target
from clipsort.config import load_settings
from clipsort.encode.encoder import Encoder
from clipsort.encode.factory import make_embedder
from clipsort.layout import DatasetLayout
from tests.helpers import accuracy, held_out, sort_all
from tests.synthetic import draw, grid, make_dataset, random_clip, save

# Three classes named by what the tiny model learned, two whose names mean nothing to it.
HALF_OPAQUE = {"red": "red", "green": "green", "blue": "blue", "lote-3": "yellow", "class_07": "purple"}


def test_mixed_is_at_least_as_good_as_the_better_single_mode(data_root: Path, encoder: Encoder) -> None:
    """On held-out pictures, mixed >= max(text, reference) - 2 points, with opaque class names."""
    make_dataset(data_root / "half", HALF_OPAQUE, references=4, seed=5)
    truth = held_out(data_root / "half", HALF_OPAQUE)
    scores = {
        mode: accuracy(sort_all(data_root, encoder, mode=mode), truth)
        for mode in ("text", "reference", "mixed")
    }
    assert scores["text"] <= 0.9, "the opaque names must really confuse the text mode"
    assert scores["mixed"] >= max(scores["text"], scores["reference"]) - 0.02, scores


def test_auto_calibration_weighs_pictures_more_when_names_are_opaque(
    data_root: Path, encoder: Encoder
) -> None:
    """Same pictures, informative vs meaningless folder names: the visual weight chosen rises."""
    colors = ["red", "green", "blue", "yellow", "purple"]
    make_dataset(data_root / "named", {c: c for c in colors}, references=4, seed=5)
    make_dataset(data_root / "opaque", {f"c{k}": c for k, c in enumerate(colors)}, references=4, seed=5)
    settings = load_settings(None, {"root": data_root, "mode": "mixed"})
    embedder = make_embedder(settings, encoder)
    named = make_target(DatasetLayout(data_root / "named"), settings, embedder)
    opaque = make_target(DatasetLayout(data_root / "opaque"), settings, embedder)
    assert named.calibration is not None and opaque.calibration is not None
    assert opaque.calibration.visual_weight > named.calibration.visual_weight
    assert opaque.calibration.accuracy["text"] < named.calibration.accuracy["text"]


@pytest.mark.parametrize("threshold", [0.9, "auto"])
def test_min_confidence_sends_exactly_the_unsure_pictures_to_review(
    data_root: Path, encoder: Encoder, threshold: float | str
) -> None:
    """Every picture whose best probability is under the threshold goes to Review/, no other does.

    The unknown gate is off: this is the softmax thresholds' rule alone. Line
    patterns (no colour, no shape) ride along: the softmax says which class is
    likeliest, never "none of them", so where they land depends on the model
    and the test claims nothing about them beyond the rule. Of the
    30 pictures of the classes at most 6 are held back (``auto`` keeps 95% of
    the correctly classified references by design, and unseen pictures stray
    further than references do from each other; the tiny model holds back 4
    at auto) and at least 90% of those filed are filed right (measured: all
    but one, a small red triangle on a large teal background that the tiny
    model calls blue at 0.95; a confident mistake no confidence threshold
    catches).
    """
    classes = {"red": "red", "green": "green", "blue": "blue"}
    make_dataset(data_root / "rgb", classes, references=8, seed=5)
    truth = held_out(data_root / "rgb", classes)
    for k in range(10):
        save(grid(np.random.default_rng(k)), data_root / "rgb" / "Images" / f"lines-{k}.png")
    outcomes = sort_all(data_root, encoder, min_confidence=threshold, unknown_gate=False)
    settings = load_settings(None, {"root": data_root, "min_confidence": threshold, "unknown_gate": False})
    target = make_target(DatasetLayout(data_root / "rgb"), settings, make_embedder(settings, encoder))
    cut = target.review.min_confidence
    assert cut is not None and threshold in ("auto", cut)
    unsure = {o.source.name for o in outcomes if o.decision is not None and o.decision.score < cut}
    review = {o.source.name for o in outcomes if o.status == "review"}
    assert review == unsure
    assert len(review & truth.keys()) <= 6, sorted(review & truth.keys())
    filed = [o for o in outcomes if o.status == "sorted" and o.source.name in truth]
    assert filed
    assert (
        np.mean([o.decision is not None and o.decision.label == truth[o.source.name] for o in filed]) >= 0.9
    )
    for held in (o for o in outcomes if o.status == "review"):
        assert held.destination.parent == data_root / "rgb" / "Review"
        assert held.reason == "uncertain" and held.detail is not None and "confidence" in held.detail
        assert held.decision is not None and len(held.decision.top) == 3


def test_description_file_and_config_table_override_the_folder_name(
    data_root: Path, encoder: Encoder
) -> None:
    """Text mode: a folder called 'xyz' whose description.txt says 'red' gets the red pictures."""
    root = data_root / "ds"
    make_dataset(root, {"xyz": "red", "abc": "blue", "green": "green"}, references=0)
    (root / "Clases" / "xyz" / "description.txt").write_text("red\n")
    (Path("config.toml")).write_text('[datasets.ds.descriptions]\nabc = "blue"\n')
    truth = held_out(root, {"xyz": "red", "abc": "blue", "green": "green"}, per_class=5)
    outcomes = sort_all(data_root, encoder, mode="text")
    assert accuracy(outcomes, truth) >= 0.9
    settings = load_settings(None, {"mode": "text"})
    target = make_target(DatasetLayout(root), settings, make_embedder(settings, encoder))
    assert target.index.descriptions == ("blue", "green", "red")
    assert target.index.reference_counts().tolist() == [0, 0, 0], "description.txt is not a reference image"


def test_text_model_encodes_the_text(tiny_model: Path, tmp_path: Path) -> None:
    """With text_model, texts come from the second model and images from the first."""
    second = random_clip(tmp_path / "text-model", small=True)
    both = Encoder(str(tiny_model), "cpu", text_model=str(second))
    alone = Encoder(str(tiny_model), "cpu")
    texts = ["a photo of a red.", "blue"]
    # Here, not at the top: every pytest-xdist worker imports each module to collect it, and
    # sentence-transformers costs about 2.5 s of CPU beyond transformers, for this one test.
    from sentence_transformers import SentenceTransformer  # noqa: PLC0415

    expected = SentenceTransformer(str(second), device="cpu").encode(texts, normalize_embeddings=True)
    assert both.encode_texts(texts) == pytest.approx(expected, abs=1e-5)
    assert not np.allclose(both.encode_texts(texts), alone.encode_texts(texts), atol=1e-3)
    picture = [draw(np.random.default_rng(0), "red")]
    assert both.encode_images(picture) == pytest.approx(alone.encode_images(picture), abs=1e-6)
    assert both.text_identity != alone.text_identity
