"""What the review page does: the moves a person would make by hand, and taking them back.

Filing a card is :func:`clipsort.store.undo.undo` with a class: the mover moves
the file (never overwriting, never following a symlink, relative to the
dataset's own folders) and the journal records a correction, exactly what a
hand move into ``Dataset/<class>/`` becomes, so the daemon learns from it the
same way. Key 0 files into ``Clases/_none/``, the unknown gate's negatives.
Actions are serialised: a double submit finds the file already filed and
says so instead of failing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from clipsort.errors import ActionError, GoneError, JournalError
from clipsort.layout import NEGATIVES_DIR
from clipsort.store.journal import Correction
from clipsort.store.mover import place
from clipsort.store.recovery import holds
from clipsort.store.undo import follow_sidecars, undo
from clipsort.web.views import Library


def http_status(error: ActionError) -> int:
    """The HTTP status of a refused action: 404 for what is gone, else 400 (the errors stay HTTP-free)."""
    return 404 if isinstance(error, GoneError) else 400


@dataclass(frozen=True)
class Done:
    """What one action did to one entry (``error``: the HTTP status of a refusal, 0 when done)."""

    entry_id: int
    note: str
    error: int = 0


class Actions:
    """The page's actions on one library, with its own undo stack of whole actions."""

    def __init__(self, library: Library) -> None:
        self.library = library
        self._lock = threading.Lock()
        self._done: list[list[Correction]] = []  # one list per action: undo takes all its files back

    def file(self, entry_ids: Sequence[int], label: str) -> list[Done]:
        """File each entry's file into class ``label`` (or ``_none``) as a correction: one action.

        An entry that cannot be filed is reported on its own and the others are still filed.
        """
        with self._lock:
            done: list[Done] = []
            action: list[Correction] = []
            for entry_id in entry_ids:
                try:
                    result, correction = self._file(entry_id, label)
                except ActionError as exc:
                    done.append(Done(entry_id, str(exc), http_status(exc)))
                    continue
                done.append(result)
                if correction is not None:
                    action.append(correction)
            if action:
                self._done.append(action)
            return done

    def _file(self, entry_id: int, label: str) -> tuple[Done, Correction | None]:
        journal = self.library.journal
        entry = journal.by_id(entry_id)
        if entry is None:
            raise GoneError(f"no decision {entry_id} in the journal")
        layout = self.library.layout(entry.intent.dataset)
        if layout is None:
            raise GoneError(f"dataset {entry.intent.dataset!r} no longer exists")
        negatives = label == NEGATIVES_DIR and self.library.has_negatives(layout)
        if label not in self.library.classes(layout) and not negatives:
            raise ActionError(f"dataset {layout.name!r} has no class {label!r}")
        folder = layout.negatives if negatives else layout.class_dir(label)
        if (
            entry.state == "corrected"
            and entry.destination is not None
            and entry.destination.parent == folder
        ):
            return Done(entry_id, f"already in {label}"), None  # a double submit
        try:
            undone = undo(entry, journal, self.library.root, to_class=label)
        except (JournalError, OSError) as exc:
            raise ActionError(str(exc)) from None
        if undone.path is None:
            raise GoneError("the file was moved or changed since; nothing was done")
        correction = self._newest_correction(entry_id, layout.name)
        assert correction is not None  # undo() just recorded it
        return Done(entry_id, f"filed into {label}"), correction

    def undo_last(self) -> list[Done]:
        """Take back the newest action of this page that is still standing: every file it moved."""
        with self._lock:
            if not self._done:
                raise ActionError("nothing to undo")
            return [self._reverted(correction) for correction in reversed(self._done.pop())]

    def revert(self, entry_id: int) -> Done:
        """Take back the newest correction of one entry (the recent page's undo)."""
        with self._lock:
            entry = self.library.journal.by_id(entry_id)
            if entry is None:
                raise GoneError(f"no decision {entry_id} in the journal")
            newest = self._newest_correction(entry_id, entry.intent.dataset)
            if newest is None:
                raise ActionError("this decision has no correction to undo")
            remaining = [[c for c in action if c.id != newest.id] for action in self._done]
            self._done = [action for action in remaining if action]
            return self._revert(newest)

    def _newest_correction(self, entry_id: int, dataset: str) -> Correction | None:
        mine = [c for c in self.library.journal.corrections(dataset=dataset) if c.decision == entry_id]
        return mine[-1] if mine else None

    def _reverted(self, correction: Correction) -> Done:
        """:meth:`_revert`, a refusal reported on its entry rather than raised (the action's others go on)."""
        try:
            return self._revert(correction)
        except ActionError as exc:
            return Done(correction.decision or 0, str(exc), http_status(exc))

    def _revert(self, correction: Correction) -> Done:
        journal = self.library.journal
        entry = None if correction.decision is None else journal.by_id(correction.decision)
        layout = self.library.layout(correction.dataset)
        if entry is None or layout is None:
            raise GoneError("the decision or its dataset is gone; nothing was undone")
        if not holds(correction.path, entry):
            raise GoneError(f"{correction.path.name} is no longer where it was filed; nothing was undone")
        try:
            back = place(correction.path, entry.intent.folder, boundary=layout.root)
        except OSError as exc:
            raise ActionError(f"cannot move {correction.path.name} back: {exc}") from None
        journal.uncorrect(correction, back)
        follow_sidecars(entry, correction.path.name, back, journal, layout, "moved")
        return Done(entry.id, f"back in {entry.intent.folder.name}")
