"""Tests for classify.modes.finetuned's checkpoint cache and classify.checkpoints' pointers."""

from __future__ import annotations

from pathlib import Path

from clipsort.classify.checkpoints import CURRENT, current_checkpoint
from clipsort.classify.modes.finetuned import CheckpointCache
from tests.synthetic import tiny_vit


def test_the_cache_keeps_the_most_recent_and_shrinks_at_once(tmp_path: Path) -> None:
    """Three loaded, resized to one (a reload): only the last used stays, and it is not loaded again."""
    folders = [tiny_vit(tmp_path / f"ckpt{k}", seed=k) for k in range(3)]
    cache = CheckpointCache(3, "cpu")
    loaded = [cache.get(folder) for folder in folders]
    assert len(cache) == 3
    cache.get(folders[0])  # now the most recently used
    cache.resize(1)
    assert len(cache) == 1
    assert cache.get(folders[0]) is loaded[0], "kept, not loaded again"
    assert cache.get(folders[1]) is not loaded[1], "dropped, so loaded anew"
    assert len(cache) == 1


def test_the_current_pointer_names_a_published_folder_or_nothing(tmp_path: Path) -> None:
    """No pointer, a pointer to a missing folder, and a good one."""
    assert current_checkpoint(tmp_path) is None
    (tmp_path / CURRENT).write_text("gone\n")
    assert current_checkpoint(tmp_path) is None
    (tmp_path / "gone").mkdir()
    assert current_checkpoint(tmp_path) == tmp_path / "gone"
