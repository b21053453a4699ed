"""``clipsort history`` and ``clipsort undo``: reading the journal and taking moves back.

Undo moves a file from where clipsort put it back into its dataset's
``Images/`` under its original name (numbered if that name is taken), or
with a class into ``Dataset/<class>/``, which records a correction. A file
that is no longer where clipsort put it, or whose bytes changed, is left
alone and reported: undo never touches what it did not place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipsort.errors import JournalError
from clipsort.ingest.sidecars import renamed
from clipsort.layout import NEGATIVES_DIR, DatasetLayout
from clipsort.store.journal import Conclusion, Entry, Journal, State
from clipsort.store.mover import place, preview
from clipsort.store.recovery import holds

UNDOABLE: tuple[State, ...] = ("moved", "rejected")
# --last, --since and a bare undo take back what was filed (a class or Review/); a file in
# Rejected/ is taken back only when named, since the daemon would reject it again.
UNDONE_BY_DEFAULT: tuple[State, ...] = ("moved",)


def choose(
    journal: Journal,
    *,
    dataset: str | None,
    last: int | None,
    since: float | None,
    file: Path | None,
) -> list[Entry]:
    """The decisions an undo request names, newest first."""
    if file is not None:
        entry = journal.at(file.absolute())  # the journal holds absolute paths (load_settings)
        if entry is None or entry.state not in UNDOABLE:
            raise JournalError(f"clipsort did not put {str(file)!r} where it is now; nothing to undo")
        return [entry]
    found = journal.entries(dataset=dataset, since=since, states=UNDONE_BY_DEFAULT, last=last)
    if not found:
        raise JournalError("the journal has no moved file matching that; nothing to undo")
    return found[::-1]


@dataclass(frozen=True)
class Undone:
    """What undo did with one decision."""

    entry: Entry
    path: Path | None  # where the file is now; None when it was left alone
    note: str


def undo(entry: Entry, journal: Journal, root: Path, to_class: str | None) -> Undone:
    """Move one file back to the inbox, or (``to_class``) into the right class as a correction."""
    if entry.destination is None or not holds(entry.destination, entry):
        return Undone(entry, None, f"left alone: no longer at {entry.destination} as clipsort put it")
    layout = DatasetLayout(root / entry.intent.dataset)
    if to_class is None:
        path = place(entry.destination, layout.inbox, boundary=layout.root, name=entry.intent.source.name)
        journal.conclude([Conclusion(entry.id, "undone", path)])
        follow_sidecars(entry, entry.destination.name, path, journal, layout, "undone")
        return Undone(entry, path, "back in the inbox")
    plain = to_class not in ("", ".", "..") and "/" not in to_class
    if not plain or not ((layout.classes / to_class).is_dir() or layout.class_dir(to_class).is_dir()):
        raise JournalError(f"dataset {layout.name!r} has no class {to_class!r}")
    # "None of these" is no class folder: such a file joins the unknown gate's negatives.
    folder = layout.negatives if to_class == NEGATIVES_DIR else layout.class_dir(to_class)
    # The correction is journalled before the move: the daemon's learner, seeing the file
    # arrive, must find the answer already there, or it would record the move a second time.
    expected = preview(entry.destination, folder)
    correction = journal.correct(entry, layout.name, entry.intent.sha256, expected, to_class)
    try:
        path = place(entry.destination, folder, boundary=layout.root, name=expected.name)
    except BaseException:
        journal.uncorrect(correction, entry.destination)
        raise
    if path != expected:  # the name was taken meanwhile and the file got a number
        journal.uncorrect(correction, entry.destination)
        journal.correct(entry, layout.name, entry.intent.sha256, path, to_class)
    follow_sidecars(entry, entry.destination.name, path, journal, layout, "moved")
    return Undone(entry, path, f"corrected: {entry.intent.label} -> {to_class}")


def follow_sidecars(
    entry: Entry, was: str, path: Path, journal: Journal, layout: DatasetLayout, state: State
) -> None:
    """Move the sidecars that travelled with ``entry``'s picture (named ``was``) beside it at ``path``."""
    for sidecar in journal.sidecars_of(entry):
        if sidecar.state != "moved" or sidecar.destination is None or not holds(sidecar.destination, sidecar):
            continue  # moved or changed by someone since: never touched
        name = renamed(sidecar.destination.name, was, path.name)
        moved = place(sidecar.destination, path.parent, boundary=layout.root, name=name)
        journal.conclude([Conclusion(sidecar.id, state, moved)])
