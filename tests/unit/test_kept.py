"""Tests for tests.kept: folders made once, reused, and the unused ones of a name pruned."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from tests.kept import UNUSED_DAYS, kept_folder


def write(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")


def aged(folder: Path, days: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    then = time.time() - days * 86400
    os.utime(folder, (then, then))
    return folder


def test_a_new_folder_prunes_only_its_names_unused_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made once and reused; making a new key's folder removes the same name's long-unused folders
    and half-made leftovers, never a recent one, another name's, or the one it made."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    base = tmp_path / "kind"
    old = aged(base / "model-0123456789abcdef", UNUSED_DAYS + 1)
    recent = aged(base / "model-fedcba9876543210", UNUSED_DAYS - 1)
    other = aged(base / "model-big-0123456789abcdef", UNUSED_DAYS + 1)
    leftover = aged(base / ".making-x1y2", UNUSED_DAYS + 1)
    made: list[Path] = []

    def make(folder: Path) -> None:
        made.append(folder)
        write(folder)

    first = kept_folder("kind", "model", [b"v1"], make, packages=())
    assert len(made) == 1 and first.parent == base and first.name.startswith("model-")
    assert not old.exists() and not leftover.exists()
    assert recent.is_dir() and other.is_dir()
    aged(first, UNUSED_DAYS + 1)
    again = kept_folder("kind", "model", [b"v1"], make, packages=())
    assert again == first and len(made) == 1, "the same inputs reuse the folder"
    assert first.stat().st_mtime > time.time() - 60, "a use marks the folder used"
    second = kept_folder("kind", "model", [b"v2"], write, packages=())
    assert second != first and first.is_dir(), "used just now: kept"
    assert sorted(path.name for path in base.iterdir()) == sorted(
        [first.name, second.name, recent.name, other.name, ".model.lock"]
    )


def test_two_that_need_one_folder_at_once_make_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second caller that comes while the first is making the folder waits on the lock, then
    takes the first's folder: the model is trained once (as two pytest-xdist workers would)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    at_lock = threading.Event()
    locking = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if threading.current_thread().name == "second":
            at_lock.set()
        locking(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    made: list[Path] = []
    found: list[Path] = []
    second = threading.Thread(
        target=lambda: found.append(kept_folder("kind", "model", [b"v1"], make, packages=())), name="second"
    )

    def make(folder: Path) -> None:
        made.append(folder)
        second.start()
        assert at_lock.wait(30), "the second caller never reached the lock while the first made it"
        write(folder)

    first = kept_folder("kind", "model", [b"v1"], make, packages=())
    second.join(30)
    assert not second.is_alive() and found == [first] and len(made) == 1
