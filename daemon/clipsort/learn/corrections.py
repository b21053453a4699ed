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
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import structlog

from clipsort.classify.classindex import Example
from clipsort.classify.targets import Corrected
from clipsort.config import Settings
from clipsort.encode.embedcache import EmbeddingCache
from clipsort.encode.embeddings import Embedder
from clipsort.files import is_ignored
from clipsort.layout import DatasetLayout
from clipsort.store.journal import Correction, Journal
from clipsort.store.mover import is_candidate
from clipsort.work import Signature

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
    concluded = journal.destinations(paths)
    waiting = [path for path in paths if path not in concluded]
    intents = {folder: journal.planned_into(folder) for folder in {path.parent for path in waiting}}
    in_flight = {
        path
        for path in waiting
        if any(is_candidate(path.name, entry.intent.source.name) for entry in intents[path.parent])
    }
    return concluded | in_flight


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
    yet: it is added to ``in_flight`` to be looked at again once the placer has concluded its entry.
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
