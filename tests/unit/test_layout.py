"""Tests for clipsort.layout: finding datasets under the data root."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsort.errors import DatasetError, UnknownDatasetError
from clipsort.layout import discover, select


def test_discover_lists_folders_with_classes_or_inbox(tmp_path: Path) -> None:
    """Only real folders holding Clases/ or Images/ are datasets."""
    (tmp_path / "b" / "Images").mkdir(parents=True)
    (tmp_path / "a" / "Clases").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / ".clipsort" / "Images").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert [layout.name for layout in discover(tmp_path)] == ["a", "b"]


def test_unknown_dataset_lists_existing_ones(tmp_path: Path) -> None:
    """Naming a dataset that is not there says which ones are."""
    (tmp_path / "shoes" / "Clases").mkdir(parents=True)
    with pytest.raises(UnknownDatasetError, match=r"'hats'.*existing: shoes"):
        select(tmp_path, ["hats"])


def test_missing_root_is_a_dataset_error(tmp_path: Path) -> None:
    """A data root that does not exist is reported as such."""
    with pytest.raises(DatasetError, match="does not exist"):
        discover(tmp_path / "nowhere")
