"""Tests for clipsort.classify.classindex: classes from folders, references and text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsort.classify.classindex import build_class_index, describe
from clipsort.decode.images import DecodeLimits
from clipsort.encode.embeddings import Embedder
from clipsort.encode.encoder import Encoder
from clipsort.errors import NoClassesError
from clipsort.layout import DatasetLayout
from tests.synthetic import make_dataset


@pytest.fixture
def embedder(encoder: Encoder) -> Embedder:
    return Embedder(encoder, DecodeLimits(("PNG", "JPEG"), 10**8, 2**30))


def test_classes_references_and_text_only_classes(tmp_path: Path, embedder: Embedder) -> None:
    """Folders are classes; their images references; an empty folder is a text-only class."""
    root = tmp_path / "ds"
    make_dataset(root, {"red": "red", "blue": "blue"}, references=3)
    (root / "Clases" / "dark_green").mkdir()
    (root / "Clases" / "red" / "broken.png").write_bytes(b"not a png")
    (root / "Clases" / ".hidden").mkdir()
    index = build_class_index(DatasetLayout(root), embedder, ["a photo of a {}."])
    assert index.classes == ("blue", "dark_green", "red")
    assert index.descriptions == ("blue", "dark green", "red")
    assert index.reference_counts().tolist() == [3, 0, 3]
    assert index.text_vectors.shape == (3, embedder.clip.dimension)
    assert np.linalg.norm(index.text_vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-5)


def test_no_class_folders_is_an_error(tmp_path: Path, embedder: Embedder) -> None:
    """A dataset without class folders says where to create them."""
    (tmp_path / "ds" / "Clases").mkdir(parents=True)
    with pytest.raises(NoClassesError, match="create one folder per class"):
        build_class_index(DatasetLayout(tmp_path / "ds"), embedder, ["{}"])


def test_prompt_ensemble_is_the_normalised_mean(embedder: Embedder) -> None:
    """A description's vector is the renormalised mean over its templates (CLIP's ensembling)."""
    templates = ["a photo of a {}.", "{}"]
    ensemble = embedder.descriptions(["red"], templates)[0]
    single = embedder.clip.encode_texts([t.format("red") for t in templates])
    expected = single.mean(axis=0) / np.linalg.norm(single.mean(axis=0))
    assert ensemble == pytest.approx(expected, abs=1e-5)


def test_describe_reads_separators_as_spaces() -> None:
    """Folder names like golden_retriever read as words."""
    assert describe("golden_retriever") == "golden retriever"
    assert describe("t-shirt") == "t shirt"
    assert describe("vestido") == "vestido"
