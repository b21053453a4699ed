"""Learning from corrections: a sorted file a person moves to another class teaches clipsort at once.

Folders are the whole interface. When a file clipsort placed (in a class
folder or ``Review/``) turns up in ``Dataset/<B>/``, the journal gets a
correction (the decision, the new class, the time), and from then on the
file counts as evidence for ``B`` in reference and mixed modes: its vector,
cached by content hash when it was classified, joins ``B``'s references as
a *corrected example* (kept apart from ``Clases/``, weighted by
``correction_weight``, the newest ``max_corrections_per_class`` per class).
Nothing is trained and nothing is re-encoded.

A file dragged from ``Review/`` into ``Clases/<B>/`` is journalled as a
correction too, but it is a reference image from then on, so it is not also
a corrected example. A file deleted from ``Dataset/`` or moved out of the
data root is not a correction (only arrivals are looked at), and a file
clipsort never sorted is ignored unless ``learn_from_dataset`` is on.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import structlog

from daemon.classindex import Example
from daemon.config import Settings
from daemon.embeddings import Embedder
from daemon.journal import Correction, Journal
from daemon.layout import DatasetLayout
from daemon.mover import is_candidate
from daemon.readiness import Signature
from daemon.scanner import is_ignored, scan

log = structlog.get_logger()


def filed_under(layout: DatasetLayout, path: Path) -> tuple[str, bool] | None:
    """The class a file at ``path`` is filed under, and whether as a reference (``Clases/``)."""
    folder = path.parent
    if folder.parent == layout.sorted:
        return folder.name, False
    if folder.parent == layout.classes:
        return folder.name, True
    return None


def _in_flight(path: Path, journal: Journal) -> bool:
    """A move of clipsort's own that put ``path`` there, its outcome not journalled yet.

    Every file clipsort moves into a class folder is an arrival too; it is
    recognised by name from the batch's intents, so it is never read again.
    """
    return any(is_candidate(path.name, e.intent.source.name) for e in journal.planned_into(path.parent))


def observe(
    path: Path, layout: DatasetLayout, journal: Journal, embedder: Embedder, settings: Settings
) -> Correction | None:
    """Record the correction a file arriving at ``path`` stands for, if it is one."""
    filed = filed_under(layout, path)
    if filed is None or embedder.cache is None or is_ignored(path.name, settings.ignore_patterns):
        return None
    label, reference = filed
    if journal.at(path) is not None or _in_flight(path, journal):
        return None  # clipsort put it there itself
    signature = Signature.of(path)
    if signature is None:
        return None  # gone, or not a regular file
    if not (settings.learn_from_dataset or journal.decided_size(layout.name, signature.size)):
        return None  # no decision was about a file this size: not read (the start-up scan meets many)
    try:
        digest = embedder.cache.file_key(path)
    except OSError:
        return None
    entry = journal.latest(layout.name, digest)
    if entry is None:
        if reference or not settings.learn_from_dataset:
            return None  # the person's own picture, not an answer to a decision
    elif entry.state == "planned":
        return None  # the same bytes in flight to another folder: not a person's answer
    elif entry.state == "moved" and entry.intent.placement == "sorted" and entry.intent.label == label:
        return None  # renamed or copied within the class clipsort chose
    found = journal.correct(entry, layout.name, digest, path, label)
    log.info(
        "correction_recorded",
        dataset=layout.name,
        file=str(path),
        was=None if entry is None else (entry.intent.label or entry.intent.placement),
        now=label,
    )
    return found


def examples(
    journal: Journal, layout: DatasetLayout, embedder: Embedder, settings: Settings
) -> list[Example]:
    """The corrected examples of a dataset, newest first, at most ``max_corrections_per_class`` a class.

    Vectors come from the cache by content hash; only a file whose vector
    is not there (the model changed since) is read and encoded again.
    """
    taken: Counter[str] = Counter()
    seen: set[str] = set()
    chosen: list[Correction] = []
    for correction in reversed(journal.corrections(dataset=layout.name)):
        if correction.sha256 in seen or correction.path.is_relative_to(layout.classes):
            continue  # a later answer for the same file wins; Clases/ files are references already
        seen.add(correction.sha256)
        if taken[correction.new_label] < settings.max_corrections_per_class:
            taken[correction.new_label] += 1
            chosen.append(correction)
    known = (
        embedder.cache.get(embedder.encoder.identity, [c.sha256 for c in chosen]) if embedder.cache else {}
    )
    missing = [c.path for c in chosen if c.sha256 not in known]
    if missing:
        vectors, kept = embedder.images(missing)
        known |= {
            c.sha256: v for c in chosen for path, v in zip(kept, vectors, strict=True) if c.path == path
        }
    return [
        Example(c.new_label, known[c.sha256], settings.correction_weight, c.path)
        for c in chosen
        if c.sha256 in known
    ]


class Learner:
    """The daemon's thread that turns arrivals in class folders into corrections."""

    def __init__(
        self, settings: Settings, journal: Journal, embedder: Embedder, on_corrected: Callable[[str], None]
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self._journal = journal
        self._on_corrected = on_corrected
        self._arrivals: queue.Queue[tuple[str, Path | None]] = queue.Queue(maxsize=10_000)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="clipsort-learner", daemon=True)

    def offer(self, dataset: str, path: Path) -> None:
        """A file arrived in a class folder (watchdog threads); never blocks."""
        try:
            self._arrivals.put_nowait((dataset, path))
        except queue.Full:
            log.warning("learner_full", file=str(path))

    def scan(self, dataset: str) -> None:
        """Look at every file in ``Dataset/<class>/``: arrivals before the watch or while down."""
        try:
            self._arrivals.put_nowait((dataset, None))
        except queue.Full:
            log.warning("learner_full", dataset=dataset)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                dataset, path = self._arrivals.get(timeout=0.2)
            except queue.Empty:
                continue
            layout = DatasetLayout(self.settings.root / dataset)
            paths = [path] if path is not None else list(scan(layout.sorted, self.settings.ignore_patterns))
            try:
                found = [p for p in paths if observe(p, layout, self._journal, self.embedder, self.settings)]
            except Exception as exc:  # one odd file must not end learning for good
                log.exception("learner_failed", dataset=dataset, error=str(exc))
                continue
            if found:
                self._on_corrected(dataset)
