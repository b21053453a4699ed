"""Tests for clipsort.encode.embedcache: vectors by content hash and model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from clipsort.encode.embedcache import EmbeddingCache, text_key
from clipsort.files import content_hash


def test_vectors_round_trip_per_model(tmp_path: Path) -> None:
    """A stored vector comes back for the same model only."""
    cache = EmbeddingCache(tmp_path / "e.sqlite3")
    vector = np.arange(4, dtype=np.float32)
    cache.put("m1", {"k": vector})
    assert np.array_equal(cache.get("m1", ["k", "missing"])["k"], vector)
    assert cache.get("m2", ["k"]) == {}
    cache.close()
    assert np.array_equal(EmbeddingCache(tmp_path / "e.sqlite3").get("m1", ["k"])["k"], vector)


def test_file_key_follows_content_not_name(tmp_path: Path) -> None:
    """Same bytes under two names share a key; new bytes under the same name do not."""
    cache = EmbeddingCache(tmp_path / "e.sqlite3")
    (tmp_path / "a.png").write_bytes(b"one")
    (tmp_path / "b.png").write_bytes(b"one")
    assert (
        cache.file_key(tmp_path / "a.png")
        == cache.file_key(tmp_path / "b.png")
        == content_hash(tmp_path / "a.png")
    )
    (tmp_path / "a.png").write_bytes(b"two!")
    os.utime(tmp_path / "a.png", ns=(5, 5))
    assert cache.file_key(tmp_path / "a.png") != cache.file_key(tmp_path / "b.png")


def test_text_key_depends_on_templates() -> None:
    """Changing the prompt templates changes the cached description."""
    assert text_key("red", ["{}"]) != text_key("red", ["a photo of a {}."])
    assert text_key("red", ["{}"]) == text_key("red", ["{}"])
