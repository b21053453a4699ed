"""Reconciling the journal with the file system after a crash, before any new work.

What a ``kill -9`` or power cut can leave, and what is done about it:

- a ``.clipsort-*.tmp`` copy in a destination folder: the copy never got its
  name, so the original is still in the inbox; the temporary is deleted;
- a ``planned`` intent whose file is still in the inbox and nowhere else:
  the move never happened; the intent is ``cleared`` and the file is sorted
  afresh;
- a ``planned`` intent whose file is in its destination folder: the move
  happened but its outcome was not written; it is recorded as ``moved`` (or
  ``rejected``), and if the inbox still holds the same bytes (a ``link`` or
  cross-device copy cut off before its ``unlink``) that second copy is
  removed, so no file is in ``Images/`` and ``Dataset/`` at once.

A file in the destination counts as this intent's only if it bears a name
the mover could have given it, has the same size and content hash, and no
other journal entry claims it: a picture dropped twice is two files, and
stays two files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from clipsort.files import content_hash
from clipsort.layout import DatasetLayout
from clipsort.store.journal import Conclusion, Entry, Journal
from clipsort.store.mover import drop_second_copy, is_candidate, remove_temporaries

log = structlog.get_logger()


@dataclass(frozen=True)
class Recovered:
    """What reconciliation found and did."""

    completed: int = 0  # moves found done, journal brought up to date
    cleared: int = 0  # moves that never happened: the file waits in the inbox
    temporaries: int = 0  # half-written copies deleted


def holds(path: Path, entry: Entry) -> bool:
    """``path`` is a regular file with exactly the bytes ``entry`` recorded (never following a symlink).

    A file that could not be read when it was decided (empty, over the size
    cap, unreadable) has no recorded hash; its type and size are all there is
    to compare.
    """
    try:
        status = path.lstat()
        return (
            stat.S_ISREG(status.st_mode)
            and status.st_size == entry.intent.size
            and (not entry.intent.sha256 or content_hash(path) == entry.intent.sha256)
        )
    except OSError:
        return False


def _placed(entry: Entry, journal: Journal, listings: dict[Path, list[str]]) -> Path | None:
    """The file this intent put into its destination folder, if it got there.

    ``listings`` keeps each folder's names: a crash leaves a whole batch
    planned into the same few folders, and each is listed once.
    """
    if entry.intent.folder not in listings:
        try:
            listings[entry.intent.folder] = sorted(os.listdir(entry.intent.folder))
        except OSError:
            listings[entry.intent.folder] = []
    for name in listings[entry.intent.folder]:
        path = entry.intent.folder / name
        # Only names place() could have given it are read: a class folder may hold thousands.
        if is_candidate(name, entry.intent.source.name) and holds(path, entry):
            owner = journal.at(path)
            if owner is None or owner.id == entry.id:
                return path
    return None


def _folders(layout: DatasetLayout) -> list[Path]:
    """Every folder the mover may have been copying into."""
    return [layout.inbox, layout.review, layout.rejected, *layout.sorted_class_dirs()]


def recover(journal: Journal, layouts: Sequence[DatasetLayout]) -> Recovered:
    """Conclude every interrupted move; run before the scanner looks at any inbox."""
    temporaries = sum(
        len(remove_temporaries(folder, layout.root)) for layout in layouts for folder in _folders(layout)
    )
    roots = {layout.name: layout.root for layout in layouts}
    completed = cleared = 0
    listings: dict[Path, list[str]] = {}
    for entry in journal.planned():
        placed = _placed(entry, journal, listings)
        if placed is None:
            journal.conclude(
                [Conclusion(entry.id, "cleared", reason="interrupted before the move; left in the inbox")]
            )
            cleared += 1
            continue
        if holds(entry.intent.source, entry) and entry.intent.dataset in roots:
            drop_second_copy(entry.intent.source, placed, roots[entry.intent.dataset])
        journal.conclude(
            [Conclusion(entry.id, "rejected" if entry.intent.placement == "rejected" else "moved", placed)]
        )
        completed += 1
    found = Recovered(completed, cleared, temporaries)
    if found != Recovered():
        log.warning("recovered", completed=completed, cleared=cleared, temporaries=temporaries)
    return found
