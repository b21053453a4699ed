"""What the pages show, read from the journal, ``status.json``, the folders and the vector cache.

Nothing here needs the model: the "why" of a card (the nearest reference
images) comes from the vectors the daemon cached by content hash when it
classified the file and embedded the references. Every name a page shows is
a folder name that exists or a journal entry; requests name entries by id.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsort.classify.classindex import REFERENCE_IGNORE, class_folders
from clipsort.classify.scoring import nearest_other_agrees
from clipsort.encode.embedcache import EmbeddingCache
from clipsort.files import scan
from clipsort.layout import NEGATIVES_DIR, DatasetLayout, discover
from clipsort.service.status import Status, is_live, read_status
from clipsort.store.journal import Entry, Journal, Placement, State
from clipsort.store.recovery import holds

QUEUE_LIMIT = 500  # cards on the review page at once, least confident first
RECENT_LIMIT = 200
NEAREST = 3
HISTOGRAM_BINS = 10
# The recent page's status filter: where a decision put the file, or what became of it since.
PLACEMENT_FILTERS: dict[str, Placement] = {"sorted": "sorted", "review": "review"}
STATE_FILTERS: dict[str, State] = {"rejected": "rejected", "corrected": "corrected", "undone": "undone"}
STATUS_FILTERS = (*PLACEMENT_FILTERS, *STATE_FILTERS)


def confidence(entry: Entry) -> float:
    """The probability of an entry's likeliest class: the review queue's order, least first."""
    return entry.intent.top3[0][1] if entry.intent.top3 else 0.0


@dataclass(frozen=True)
class Reference:
    """A reference image, named by dataset, class and position in its sorted folder."""

    dataset: str
    label: str
    number: int
    similarity: float | None = None


@dataclass(frozen=True)
class Card:
    """One file in ``Review/`` as the review queue shows it."""

    entry: Entry
    present: bool  # still in Review/ with the bytes clipsort put there
    classes: tuple[str, ...]  # keys 1-9 file into these, in this order
    negatives: bool  # key 0 files into Clases/_none/
    nearest: tuple[Reference, ...] = ()
    # The same picture dropped more than once (the same content hash): one card, filed together.
    copies: tuple[int, ...] = ()

    @property
    def entries(self) -> tuple[int, ...]:
        """Every entry this card files: its own and its copies'."""
        return (self.entry.id, *self.copies)


@dataclass(frozen=True)
class DatasetSummary:
    """One dataset's counts for the overview."""

    name: str
    sorted_today: int
    in_review: int
    rejected: int
    corrections: int
    per_hour: float  # files handled in the last hour


@dataclass(frozen=True)
class ClassSummary:
    """One class on the classes page."""

    name: str
    references: tuple[Reference, ...]
    sorted: int
    corrected_in_use: int
    loo_accuracy: float | None  # leave-one-out 1-NN over the cached reference vectors
    histogram: tuple[int, ...]  # confidences of files sorted into it, HISTOGRAM_BINS bins over 0-1
    # The unknown gate as the running daemon calibrated it (status.json); None: no gate, no daemon.
    threshold: float | None = None
    references_kept: float | None = None  # of its references, each judged by the others
    unknown_held: float | None = None  # the knob it was calibrated with


@dataclass(frozen=True)
class Overview:
    running: bool
    status: Status | None
    datasets: tuple[DatasetSummary, ...]
    errors: tuple[Entry, ...]


@dataclass
class Library:
    """The folders and state one page server reads."""

    root: Path
    state: Path
    journal: Journal
    cache: EmbeddingCache
    max_corrections_per_class: int

    # --- datasets and classes --------------------------------------------------------
    def layouts(self) -> dict[str, DatasetLayout]:
        return {layout.name: layout for layout in discover(self.root)}

    def layout(self, dataset: str) -> DatasetLayout | None:
        """The dataset of that name, if it (still) exists."""
        return self.layouts().get(dataset)

    @staticmethod
    def classes(layout: DatasetLayout) -> tuple[str, ...]:
        return tuple(folder.name for folder in class_folders(layout))

    @staticmethod
    def has_negatives(layout: DatasetLayout) -> bool:
        return layout.negatives.is_dir() and not layout.negatives.is_symlink()

    @staticmethod
    def reference_files(layout: DatasetLayout, label: str) -> list[Path]:
        """The reference images of ``label`` (or ``_none``) in the order their numbers name them."""
        folder = layout.negatives if label == NEGATIVES_DIR else layout.classes / label
        if folder.is_symlink() or not folder.is_dir():
            return []
        return sorted(scan(folder, REFERENCE_IGNORE))

    def reference_path(self, dataset: str, label: str, number: int) -> Path | None:
        """The file a :class:`Reference` names, only if dataset and class exist as folders."""
        layout = self.layout(dataset)
        if layout is None or (label not in self.classes(layout) and label != NEGATIVES_DIR):
            return None
        files = self.reference_files(layout, label)
        return files[number] if 0 <= number < len(files) else None

    # --- the review queue ------------------------------------------------------------
    def queue(self, dataset: str | None = None) -> list[Card]:
        """Files clipsort put in ``Review/``, least confident first."""
        layouts = self.layouts()
        held = [
            e
            for e in self.journal.entries(dataset=dataset, states=("moved",))
            if e.intent.placement == "review" and e.intent.dataset in layouts
        ]
        held.sort(key=lambda entry: (confidence(entry), entry.id))
        alike: dict[tuple[str, str], list[Entry]] = {}
        for entry in held:  # one card per picture: copies of it (its content hash) join the first
            alike.setdefault((entry.intent.dataset, entry.intent.sha256 or str(entry.id)), []).append(entry)
        cards = []
        for group in list(alike.values())[:QUEUE_LIMIT]:  # checking a file reads it: only the cards shown
            entry = group[0]
            layout = layouts[entry.intent.dataset]
            present = entry.destination is not None and holds(entry.destination, entry)
            nearest = self.nearest(layout, entry) if present else ()
            copies = tuple(other.id for other in group[1:])
            cards.append(
                Card(entry, present, self.classes(layout), self.has_negatives(layout), nearest, copies)
            )
        return cards

    def card(self, entry_id: int) -> Card | None:
        entry = self.journal.by_id(entry_id)
        if entry is None:
            return None
        layout = self.layout(entry.intent.dataset)
        if layout is None:
            return None
        present = entry.destination is not None and holds(entry.destination, entry)
        return Card(entry, present, self.classes(layout), self.has_negatives(layout))

    def nearest(self, layout: DatasetLayout, entry: Entry) -> tuple[Reference, ...]:
        """The references most like the file, by the vectors cached when it was classified."""
        models = self.cache.models_of(entry.intent.sha256) if entry.intent.sha256 else []
        if not models:
            return ()
        model = models[0]
        own = self.cache.get(model, [entry.intent.sha256])[entry.intent.sha256]
        named: list[tuple[Reference, str]] = []
        for label in self.classes(layout):
            for number, path in enumerate(self.reference_files(layout, label)):
                try:
                    named.append((Reference(layout.name, label, number), self.cache.file_key(path)))
                except OSError:
                    continue
        found = self.cache.get(model, [key for _, key in named])
        scored = [
            (float(np.dot(own, found[key])), reference)
            for reference, key in named
            if key in found and found[key].shape == own.shape
        ]
        scored.sort(key=lambda pair: -pair[0])
        return tuple(
            Reference(r.dataset, r.label, r.number, round(score, 3)) for score, r in scored[:NEAREST]
        )

    # --- recent decisions ------------------------------------------------------------
    def recent(
        self,
        *,
        dataset: str | None = None,
        label: str | None = None,
        state: str | None = None,
        since: float | None = None,
        before: int | None = None,
    ) -> list[Entry]:
        """The newest decisions (older than entry ``before``: the next page), newest first.

        Filtered in the journal's own query. ``state`` is a placement (``sorted``, ``review``) or a
        journal state (``rejected``, ``corrected``, ``undone``), as the page's filter lists them.
        """
        if state is not None and state not in STATUS_FILTERS:
            return []
        placement = PLACEMENT_FILTERS.get(state) if state else None
        states = (STATE_FILTERS[state],) if state in STATE_FILTERS else ()
        found = self.journal.entries(
            dataset=dataset,
            since=since,
            label=label,
            placement=placement,
            states=states,
            last=RECENT_LIMIT,
            before=before,
        )
        return found[::-1]

    def corrected(self, entries: list[Entry]) -> set[int]:
        """Which of ``entries`` have a correction standing (one forgotten since no longer counts)."""
        ids = {entry.id for entry in entries if entry.state == "corrected"}
        return {c.decision for c in self.journal.corrections() if c.decision in ids}

    # --- overview --------------------------------------------------------------------
    def overview(self, now: float | None = None) -> Overview:
        now = time.time() if now is None else now
        status = read_status(self.state)
        midnight = time.mktime((*time.localtime(now)[:3], 0, 0, 0, 0, 0, -1))
        summaries = []
        for name, layout in sorted(self.layouts().items()):
            today = self.journal.entries(dataset=name, since=midnight)
            hour = [e for e in today if e.created >= now - 3600]
            summaries.append(
                DatasetSummary(
                    name,
                    sum(
                        1
                        for e in today
                        if e.intent.placement == "sorted" and e.state in ("moved", "corrected")
                    ),
                    sum(1 for _ in scan(layout.review)) if layout.review.is_dir() else 0,
                    sum(1 for e in today if e.state == "rejected"),
                    len(self.journal.corrections(dataset=name)),
                    float(len(hour)),
                )
            )
        errors = self.journal.entries(states=("rejected",), last=10)[::-1]
        return Overview(status is not None and is_live(status, now), status, tuple(summaries), tuple(errors))

    # --- classes ---------------------------------------------------------------------
    def class_summaries(self, layout: DatasetLayout) -> list[ClassSummary]:
        """Per class: references, counts, corrections in use, leave-one-out accuracy, confidences."""
        entries = self.journal.entries(dataset=layout.name)
        sorted_into = Counter(e.intent.label for e in entries if e.intent.placement == "sorted")
        confidences: dict[str, list[float]] = {}
        for e in entries:
            if e.intent.placement == "sorted" and e.intent.label and e.intent.top3:
                confidences.setdefault(e.intent.label, []).append(confidence(e))
        corrected = Counter(c.new_label for c in self.journal.corrections(dataset=layout.name))
        accuracy = self._leave_one_out(layout)
        status = read_status(self.state)
        running = status.datasets.get(layout.name) if status is not None else None
        gate = running.gate if running is not None else {}
        summaries = []
        for label in self.classes(layout):
            files = self.reference_files(layout, label)
            counts, _ = np.histogram(confidences.get(label, []), bins=HISTOGRAM_BINS, range=(0.0, 1.0))
            summaries.append(
                ClassSummary(
                    label,
                    tuple(Reference(layout.name, label, n) for n in range(len(files))),
                    sorted_into[label],
                    min(corrected[label], self.max_corrections_per_class),
                    accuracy.get(label),
                    tuple(int(c) for c in counts),
                    gate[label]["threshold"] if label in gate else None,
                    gate[label]["kept"] if label in gate else None,
                    running.unknown_held if running is not None else None,
                )
            )
        return summaries

    def _leave_one_out(self, layout: DatasetLayout) -> dict[str, float]:
        """Per class, the share of its references whose nearest other reference is of the same class."""
        keys: list[tuple[str, str]] = []
        for label in self.classes(layout):
            for path in self.reference_files(layout, label):
                try:
                    keys.append((label, self.cache.file_key(path)))
                except OSError:
                    continue
        if len(keys) < 2:
            return {}
        for model in self.cache.models_of(keys[0][1]):
            found = self.cache.get(model, [key for _, key in keys])
            usable = [(label, found[key]) for label, key in keys if key in found]
            if len(usable) < 2:
                continue
            labels = np.asarray([label for label, _ in usable])
            right = nearest_other_agrees(np.stack([vector for _, vector in usable]), labels)
            return {str(label): float(right[labels == label].mean()) for label in np.unique(labels)}
        return {}
