"""Tests for clipsort.store.recovery: what a crash left between intent and outcome is settled at start."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

from clipsort.layout import DatasetLayout
from clipsort.store.journal import Conclusion, Intent, Journal
from clipsort.store.recovery import Recovered, recover
from tests.helpers import tree


def planned(journal: Journal, layout: DatasetLayout, name: str, data: bytes) -> int:
    """An intent to move Images/<name> into Dataset/red, as deliver() writes it."""
    [entry] = journal.plan(
        [
            Intent(
                dataset=layout.name,
                source=layout.inbox / name,
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                mode="reference",
                model="tiny",
                label="red",
                top3=(("red", 0.9),),
                placement="sorted",
                folder=layout.class_dir("red"),
            )
        ]
    )
    return entry


def dataset(tmp_path: Path) -> DatasetLayout:
    layout = DatasetLayout(tmp_path / "rgb")
    layout.inbox.mkdir(parents=True)
    layout.class_dir("red").mkdir(parents=True)
    return layout


def test_a_move_that_never_happened_is_cleared_and_the_file_stays(tmp_path: Path) -> None:
    """Killed after the intent, before the rename: the file is still (only) in the inbox."""
    layout, journal = dataset(tmp_path), Journal(tmp_path)
    (layout.inbox / "a.jpg").write_bytes(b"A")
    entry = planned(journal, layout, "a.jpg", b"A")
    assert recover(journal, [layout]) == Recovered(cleared=1)
    assert journal.entries()[0].state == "cleared" and journal.entries()[0].id == entry
    assert tree(layout.root) == {"Images": ["a.jpg"]}


def test_a_move_whose_outcome_was_lost_is_recorded(tmp_path: Path) -> None:
    """Killed after the rename, before the outcome: the journal learns where the file went."""
    layout, journal = dataset(tmp_path), Journal(tmp_path)
    planned(journal, layout, "a.jpg", b"A")
    (layout.class_dir("red") / "a_1.jpg").write_bytes(b"A")
    (layout.class_dir("red") / "a.jpg").write_bytes(b"other")
    assert recover(journal, [layout]) == Recovered(completed=1)
    (entry,) = journal.entries()
    assert (entry.state, entry.destination) == ("moved", layout.class_dir("red") / "a_1.jpg")


def test_a_link_left_in_two_places_ends_up_in_one(tmp_path: Path) -> None:
    """Killed between link and unlink (file systems without renameat2): the inbox name goes."""
    layout, journal = dataset(tmp_path), Journal(tmp_path)
    (layout.inbox / "a.jpg").write_bytes(b"A")
    os.link(layout.inbox / "a.jpg", layout.class_dir("red") / "a.jpg")
    planned(journal, layout, "a.jpg", b"A")
    assert recover(journal, [layout]) == Recovered(completed=1)
    assert tree(layout.root) == {"Dataset/red": ["a.jpg"]}


def test_a_finished_cross_device_copy_loses_its_original(tmp_path: Path) -> None:
    """Killed after the copy got its name, before the source was unlinked: one copy remains."""
    layout, journal = dataset(tmp_path), Journal(tmp_path)
    (layout.inbox / "a.jpg").write_bytes(b"A")
    (layout.class_dir("red") / "a.jpg").write_bytes(b"A")  # a separate inode, as after a copy
    planned(journal, layout, "a.jpg", b"A")
    recover(journal, [layout])
    assert tree(layout.root) == {"Dataset/red": ["a.jpg"]}
    assert (layout.class_dir("red") / "a.jpg").read_bytes() == b"A"


def test_a_half_written_copy_is_deleted_and_the_original_kept(tmp_path: Path) -> None:
    """Killed during the copy: the temporary goes, the inbox file is sorted again."""
    layout, journal = dataset(tmp_path), Journal(tmp_path)
    (layout.inbox / "a.jpg").write_bytes(b"AAAA")
    (layout.class_dir("red") / f".clipsort-{uuid.uuid4().hex}.tmp").write_bytes(b"AA")
    planned(journal, layout, "a.jpg", b"AAAA")
    assert recover(journal, [layout]) == Recovered(cleared=1, temporaries=1)
    assert tree(layout.root) == {"Images": ["a.jpg"]}


def test_a_picture_dropped_twice_stays_two_files(tmp_path: Path) -> None:
    """The same bytes already sorted by an earlier decision do not count as this move's result."""
    layout, journal = dataset(tmp_path), Journal(tmp_path)
    first = planned(journal, layout, "a.jpg", b"A")
    (layout.class_dir("red") / "a.jpg").write_bytes(b"A")
    journal.conclude([Conclusion(first, "moved", layout.class_dir("red") / "a.jpg")])
    (layout.inbox / "a.jpg").write_bytes(b"A")
    planned(journal, layout, "a.jpg", b"A")
    assert recover(journal, [layout]) == Recovered(cleared=1)
    assert tree(layout.root) == {"Dataset/red": ["a.jpg"], "Images": ["a.jpg"]}
