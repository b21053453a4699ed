"""Tests for daemon.mover: no-clobber, no-loss moves and copies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon import mover
from daemon.mover import UnsafeDestination, candidate_name, place, preview, rename_noreplace, write_new
from tests.helpers import tree


def test_move_into_new_folder(tmp_path: Path) -> None:
    """The file moves, the folder is created, the bytes are the same."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"AAA")
    target = place(tmp_path / "in" / "a.jpg", tmp_path / "out" / "red", boundary=tmp_path)
    assert target == tmp_path / "out" / "red" / "a.jpg"
    assert tree(tmp_path) == {"out/red": ["a.jpg"]}
    assert target.read_bytes() == b"AAA"


def test_collisions_get_numbered_names_and_nothing_is_overwritten(tmp_path: Path) -> None:
    """Three files of the same name all survive with distinct names."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.jpg").write_bytes(b"old")
    for k in range(3):
        folder = tmp_path / f"in{k}"
        folder.mkdir()
        (folder / "a.jpg").write_bytes(f"new{k}".encode())
        place(folder / "a.jpg", out, boundary=tmp_path)
    assert tree(out) == {".": ["a.jpg", "a_1.jpg", "a_2.jpg", "a_3.jpg"]}
    assert (out / "a.jpg").read_bytes() == b"old"
    assert sorted((out / f"a_{k}.jpg").read_bytes() for k in (1, 2, 3)) == [b"new0", b"new1", b"new2"]


def test_rename_noreplace_refuses_existing_target(tmp_path: Path) -> None:
    """The primitive never replaces."""
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == b"a"
    assert (tmp_path / "b").read_bytes() == b"b"


def test_link_fallback_when_renameat2_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without renameat2 the link+unlink path is equally no-clobber."""
    monkeypatch.setattr(mover, "_renameat2", None)
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    rename_noreplace(tmp_path / "a", tmp_path / "c")
    assert tree(tmp_path) == {".": ["b", "c"]}


def test_copy_keeps_source(tmp_path: Path) -> None:
    """action = copy leaves the original where it was."""
    (tmp_path / "a.jpg").write_bytes(b"A")
    target = place(tmp_path / "a.jpg", tmp_path / "out", boundary=tmp_path, keep_source=True)
    assert (tmp_path / "a.jpg").read_bytes() == target.read_bytes() == b"A"


@pytest.mark.skipif(
    not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat("/tmp").st_dev,
    reason="needs /dev/shm on a different file system than /tmp",
)
def test_cross_filesystem_move(tmp_path: Path) -> None:
    """EXDEV: copied under a temporary name, renamed into place, then the source is removed."""
    source = Path("/dev/shm") / f"clipsort-test-{os.getpid()}.jpg"
    source.write_bytes(b"X" * 100_000)
    os.utime(source, ns=(1_000_000_000, 2_000_000_000))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / source.name).write_bytes(b"taken")
    try:
        target = place(source, tmp_path / "out", boundary=tmp_path)
    finally:
        source.unlink(missing_ok=True)
    assert target.name.endswith("_1.jpg")
    assert target.read_bytes() == b"X" * 100_000
    assert target.stat().st_mtime_ns == 2_000_000_000
    assert not source.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([source.name, target.name])


def test_destination_outside_boundary_is_refused(tmp_path: Path) -> None:
    """A class folder that is a symlink out of the dataset is never written through."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "ds" / "Dataset").mkdir(parents=True)
    (tmp_path / "ds" / "Dataset" / "red").symlink_to(outside)
    (tmp_path / "a.jpg").write_bytes(b"A")
    with pytest.raises(UnsafeDestination):
        place(tmp_path / "a.jpg", tmp_path / "ds" / "Dataset" / "red", boundary=tmp_path / "ds")
    assert (tmp_path / "a.jpg").exists()
    assert list(outside.iterdir()) == []


def test_candidate_names_stay_within_name_max() -> None:
    """A 255-byte name still gets a numbered, legal variant; multi-byte characters are not split."""
    long = "é" * 125 + ".jpg"  # 254 bytes
    second = candidate_name(long, 1)
    assert len(os.fsencode(second)) <= 255
    assert second.endswith("_1.jpg")
    assert candidate_name("noext", 2) == "noext_2"
    assert candidate_name(".hidden", 1) == ".hidden_1"


def test_preview_changes_nothing(tmp_path: Path) -> None:
    """Dry runs compute the name a move would get without touching anything."""
    (tmp_path / "a.jpg").write_bytes(b"A")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.jpg").write_bytes(b"B")
    assert preview(tmp_path / "a.jpg", tmp_path / "out") == tmp_path / "out" / "a_1.jpg"
    assert tree(tmp_path) == {".": ["a.jpg"], "out": ["a.jpg"]}


def test_write_new_never_overwrites(tmp_path: Path) -> None:
    """Creating a file that exists leaves it alone."""
    assert write_new(tmp_path / "c.toml", "one")
    assert not write_new(tmp_path / "c.toml", "two")
    assert (tmp_path / "c.toml").read_text() == "one"
