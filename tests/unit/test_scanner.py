"""Tests for clipsort.files: which files are candidates."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from clipsort.files import changed_since, is_ignored, scan
from tests.helpers import remove_deep
from tests.waiting import wait_until


def test_scan_recurses_and_skips_temporary_hidden_links_and_fifos(tmp_path: Path) -> None:
    """Regular files only: no temp names, dotfiles, symlinks or FIFOs."""
    names = [
        "a.jpg",
        "sub/b.png",
        ".hidden.jpg",
        "c.jpg.part",
        "d.tmp",
        "e.crdownload",
        "~$f.jpg",
        "g.partial",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.jpg").write_bytes(b"x")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "a.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    found = [path.relative_to(tmp_path).as_posix() for path in scan(tmp_path)]
    assert found == ["a.jpg", "sub/b.png"]


def test_custom_ignore_patterns() -> None:
    """The pattern list is the caller's."""
    assert is_ignored("x.lock", ["*.lock"])
    assert not is_ignored("x.jpg", ["*.lock"])


def test_scan_of_missing_folder_is_empty(tmp_path: Path) -> None:
    """A folder that vanished yields nothing rather than failing."""
    assert list(scan(tmp_path / "gone")) == []


def test_a_chain_deeper_than_the_limit_is_left_alone_without_recursion(tmp_path: Path) -> None:
    """2,000 nested folders: the files within max_depth are found, the rest left alone, no RecursionError."""
    bottom = tmp_path
    for _ in range(2000):
        bottom = bottom / "d"
        bottom.mkdir()
    (tmp_path / "d" / "top.png").write_bytes(b"x")
    (bottom / "deep.png").write_bytes(b"x")
    try:
        found = [path.name for path in scan(tmp_path, max_depth=32)]
        assert found == ["top.png"]
        assert [path.name for path in scan(tmp_path / "d", max_depth=5000)] == ["top.png", "deep.png"]
    finally:
        remove_deep(tmp_path / "d")


@given(
    st.text(alphabet="ab.~$*?[]!\n", max_size=8),
    st.lists(st.text(alphabet="ab.~$*?[]!", min_size=1, max_size=5), max_size=4),
)
def test_ignoring_by_one_expression_agrees_with_fnmatch_pattern_by_pattern(
    name: str, patterns: list[str]
) -> None:
    assert is_ignored(name, patterns) == any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def test_files_known_by_path_and_inode_are_left_out_and_a_replaced_one_is_not(tmp_path: Path) -> None:
    """``known`` (what readiness tracks) leaves out the very files, at any depth; a file that
    replaced a known one under its name has another inode and is found."""
    for name in ["a.jpg", "b.jpg", "sub/c.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    known = frozenset(
        (str(tmp_path / name), (tmp_path / name).stat().st_ino) for name in ["a.jpg", "b.jpg", "sub/c.jpg"]
    )
    (tmp_path / "new.jpg").write_bytes(b"y")
    (tmp_path / "new.jpg").rename(tmp_path / "b.jpg")
    found = scan(tmp_path, known=known)
    assert [path.relative_to(tmp_path).as_posix() for path in found] == ["b.jpg"]


def test_changed_since_keeps_what_was_moved_or_made_there_after_the_time(tmp_path: Path) -> None:
    """What a busy Dataset/'s look after a burst keeps (``st_ctime``): a file renamed in or written
    after the time, not one untouched since before it, nor one gone meanwhile."""
    folder, elsewhere = tmp_path / "red", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    untouched, moving, gone = folder / "before.jpg", elsewhere / "moved.jpg", folder / "gone.jpg"
    for path in (untouched, moving, gone):
        path.write_bytes(b"x")
    since = max(path.lstat().st_ctime for path in (untouched, moving, gone)) + 0.05
    probe = tmp_path / "probe"

    def stamped_after() -> bool:
        """Whether a write now gets a ctime past ``since``: the kernel's file-time clock moves in ticks."""
        probe.write_bytes(b"x")
        return probe.lstat().st_ctime > since + 0.01

    wait_until(stamped_after, timeout=10)
    os.rename(moving, folder / "moved.jpg")
    (folder / "new.jpg").write_bytes(b"x")
    gone.unlink()
    paths = [untouched, folder / "moved.jpg", folder / "new.jpg", gone]
    assert changed_since(paths, since) == [folder / "moved.jpg", folder / "new.jpg"]
