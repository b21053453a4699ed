"""Learning from corrections: a sorted file a person moves to another class teaches clipsort within a second.

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

import functools
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import structlog

from clipsort.classify.classindex import Example
from clipsort.classify.targets import Corrected
from clipsort.config import Mailbox, Settings
from clipsort.encode.embedcache import EmbeddingCache
from clipsort.encode.embeddings import Embedder
from clipsort.files import is_ignored, scan
from clipsort.layout import DatasetLayout
from clipsort.store.journal import Correction, Journal
from clipsort.store.mover import is_candidate
from clipsort.work import Signature, drain

log = structlog.get_logger()

ARRIVALS_PER_ROUND = 4096
# A round takes the arrivals of this long after its first one. A burst's sorted files arrive one
# by one; a round each cost the journal's queries once per file (a fifth of the daemon's CPU
# beside the decoders, measured), and most of them are recorded as clipsort's own by the time
# the round looks. Learning a correction stays well within a second.
ROUND_LINGER_SECONDS = 0.1
IN_FLIGHT_SECONDS = 60.0  # how long an arrival whose bytes are still being placed is looked at again


def filed_under(layout: DatasetLayout, path: Path) -> tuple[str, bool] | None:
    """The class a file at ``path`` is filed under, and whether as a reference (``Clases/``)."""
    folder = path.parent
    if folder.parent == layout.sorted:
        return folder.name, False
    if folder.parent == layout.classes:
        return folder.name, True
    return None


def _own(paths: Sequence[Path], journal: Journal) -> set[Path]:
    """Those of ``paths`` that clipsort itself put there.

    Every file clipsort moves into a class folder is an arrival too. It is
    recognised from the journal, never read again: by its outcome (one query
    for all the paths) or, while its outcome is not written yet, by name from
    its batch's intents (one query per folder).
    """
    settled = journal.destinations(paths)
    waiting = [path for path in paths if path not in settled]
    intents = {folder: journal.planned_into(folder) for folder in {path.parent for path in waiting}}
    in_flight = {
        path
        for path in waiting
        if any(is_candidate(path.name, entry.intent.source.name) for entry in intents[path.parent])
    }
    return settled | in_flight


def observe(
    paths: Sequence[Path],
    layout: DatasetLayout,
    journal: Journal,
    embedder: Embedder,
    settings: Settings,
    in_flight: list[Path] | None = None,
) -> list[Correction]:
    """Record the corrections that files arriving at ``paths`` stand for.

    A file whose bytes clipsort is still placing (its journal entry only planned) cannot be told
    yet: it is added to ``in_flight`` to be looked at again once the placer has settled it.
    """
    cache = embedder.cache
    if cache is None:
        return []
    filed = {
        path: where
        for path in paths
        if (where := filed_under(layout, path)) is not None
        and not is_ignored(path.name, settings.ignore_patterns)
    }
    own = _own(list(filed), journal)
    found = (
        _judge(path, label, reference, layout, journal, cache, settings, in_flight)
        for path, (label, reference) in filed.items()
        if path not in own
    )
    return [correction for correction in found if correction is not None]


def _judge(
    path: Path,
    label: str,
    reference: bool,
    layout: DatasetLayout,
    journal: Journal,
    cache: EmbeddingCache,
    settings: Settings,
    in_flight: list[Path] | None = None,
) -> Correction | None:
    """The correction a file clipsort did not put at ``path`` stands for, if it is one."""
    signature = Signature.of(path)
    if signature is None:
        return None  # gone, or not a regular file
    if not (settings.learn_from_dataset or journal.decided_size(layout.name, signature.size)):
        return None  # no decision was about a file this size: not read (the start-up scan meets many)
    try:
        digest = cache.file_key(path)
    except OSError:
        return None
    entry = journal.latest(layout.name, digest)
    if entry is None:
        if reference or not settings.learn_from_dataset:
            return None  # the person's own picture, not an answer to a decision
    elif entry.state == "planned":
        # The same bytes in flight: clipsort's own move, or a person's just after it, before the
        # placer recorded where it put them. Which one is told once that is recorded.
        if in_flight is not None:
            in_flight.append(path)
        return None
    elif entry.state == "moved" and entry.intent.placement == "sorted" and entry.intent.label == label:
        return None  # renamed or copied within the class clipsort chose
    elif entry.state == "corrected" and entry.destination == path:
        return None  # this very answer is recorded already (a rescan meets it again)
    found = journal.correct(entry, layout.name, digest, path, label)
    log.info(
        "correction_recorded",
        dataset=layout.name,
        file=str(path),
        was=None if entry is None else (entry.intent.label or entry.intent.placement),
        now=label,
    )
    return found


def corrected_from(journal: Journal) -> Corrected:
    """The journal's corrected examples, as the classify stage asks for them (see :func:`examples`)."""
    return functools.partial(examples, journal)


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
    known = embedder.cache.get(embedder.clip.identity, [c.sha256 for c in chosen]) if embedder.cache else {}
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

    def __init__(self, settings: Settings, journal: Journal, embedder: Embedder) -> None:
        self._setup = Mailbox((settings, embedder))
        self._journal = journal
        self._arrivals: queue.Queue[tuple[str, Path | None]] = queue.Queue(maxsize=10_000)
        self._in_flight: dict[tuple[str, Path], float] = {}  # arrivals to look at again: first seen
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="clipsort-learner", daemon=True)

    @property
    def settings(self) -> Settings:
        """The settings of this round (taken between rounds, on the learner's thread)."""
        return self._setup.current[0]

    @property
    def embedder(self) -> Embedder:
        """The embedder of this round: the model and decode limits in force."""
        return self._setup.current[1]

    def reconfigure(self, settings: Settings, embedder: Embedder) -> None:
        """Hand over reloaded settings and the embedder made with them; used from the next round."""
        self._setup.post((settings, embedder))

    def offer(self, dataset: str, path: Path) -> None:
        """A file arrived in a class folder (handed on by the daemon's reactions thread); never blocks."""
        try:
            self._arrivals.put_nowait((dataset, path))
        except queue.Full:
            log.warning("learner_full", file=str(path))

    def scan(self, dataset: str) -> None:
        """Look at every file in ``Dataset/`` and ``Clases/``: arrivals before the watch or while down."""
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
            self._setup.take()
            # Whatever queued up meanwhile is looked up together: a burst of sorted
            # files costs a few journal queries, not two per file.
            arrivals = drain(self._arrivals, 0.2, ARRIVALS_PER_ROUND, linger=ROUND_LINGER_SECONDS)
            by_dataset: dict[str, list[Path | None]] = {}
            for dataset, path in [*arrivals, *self._in_flight]:  # those in flight: once a round
                by_dataset.setdefault(dataset, []).append(path)
            for dataset, paths in by_dataset.items():
                self._learn(dataset, paths)

    def _learn(self, dataset: str, arrived: list[Path | None]) -> None:
        """Look at the files that ``arrived`` in ``dataset`` (None: everything in Dataset/ and Clases/)."""
        layout = DatasetLayout(self.settings.root / dataset)
        paths = [path for path in arrived if path is not None]
        if None in arrived:
            paths += scan(layout.sorted, self.settings.ignore_patterns)
            paths += scan(layout.classes, self.settings.ignore_patterns)
        in_flight: list[Path] = []
        try:
            # What is recorded reaches the classifier through the journal (Worker._follow_corrections).
            observe(paths, layout, self._journal, self.embedder, self.settings, in_flight)
        except Exception as exc:  # one odd file must not end learning for good
            log.exception("learner_failed", dataset=dataset, error=str(exc))
        now = time.monotonic()
        seen = {path: self._in_flight.pop((dataset, path), now) for path in paths}
        for path in in_flight:
            # A placer stuck longer than this left its batch planned; recovery settles it at start.
            if now - seen[path] < IN_FLIGHT_SECONDS:
                self._in_flight[(dataset, path)] = seen[path]
