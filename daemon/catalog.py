"""The live class index of every dataset, and how a dataset becomes a classification target.

In the daemon the catalog is rebuilt on the worker thread (the one thread
that owns the model) between batches. A rebuild never mutates the mapping a
batch is using: it builds a new one and swaps the reference, so every batch
is classified entirely with the old classes or entirely with the new.
Changes under ``Clases/`` are debounced: each event pushes the dataset's
deadline back, and the rebuild runs once the folder has been quiet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import structlog

from daemon.calibration import Calibration, calibrate
from daemon.classifiers import Classifier, make_classifier
from daemon.classifiers.finetuned import CheckpointCache, FinetunedClassifier
from daemon.classindex import ClassIndex, build_class_index
from daemon.config import DatasetSettings, Settings
from daemon.corrections import examples
from daemon.embedcache import EmbeddingCache
from daemon.embeddings import Embedder
from daemon.encoder import Encoder
from daemon.errors import ModelLoadError, NoClassesError
from daemon.images import DecodeLimits
from daemon.journal import Journal
from daemon.layout import DatasetLayout, is_dataset
from daemon.pipeline import Target
from daemon.review import ReviewPolicy
from daemon.training import checkpoints_of, current_checkpoint

log = structlog.get_logger()


def decode_limits(settings: Settings) -> DecodeLimits:
    """What an inbox or reference file may be, as configured."""
    return DecodeLimits(tuple(settings.image_formats), settings.max_pixels, int(settings.max_file_mb * 2**20))


def make_encoder(settings: Settings) -> Encoder:
    """The configured model on the configured device, in the configured precision."""
    return Encoder(settings.model, settings.device, settings.text_model, settings.precision)


def make_embedder(settings: Settings, encoder: Encoder, cache: EmbeddingCache | None = None) -> Embedder:
    """The embedder with the configured decoding limits."""
    return Embedder(encoder, decode_limits(settings), cache)


def finetuned_target(
    layout: DatasetLayout, settings: Settings, index: ClassIndex, checkpoints: CheckpointCache
) -> Target:
    """A target classifying with the dataset's current fine-tuned checkpoint."""
    path = current_checkpoint(checkpoints_of(settings.state_path, layout.name))
    if path is None:
        raise NoClassesError(
            f"dataset {layout.name!r} has no fine-tuned checkpoint yet: run `clipsort train -d {layout.name}`"
        )
    classifier = FinetunedClassifier(checkpoints.get(path))
    if set(classifier.classes) != set(index.classes):
        log.warning(
            "checkpoint_classes_differ",
            dataset=layout.name,
            checkpoint=str(path),
            checkpoint_classes=list(classifier.classes),
            class_folders=list(index.classes),
        )
    own = settings.for_dataset(layout.name)
    review = ReviewPolicy(min_confidence=_number(own.min_confidence), min_margin=own.min_margin)
    return Target(layout=layout, settings=own, index=index, classifier=classifier, review=review)


def choose_classifier(
    own: DatasetSettings, index: ClassIndex, logit_scale: float
) -> tuple[Classifier, Calibration | None]:
    """The classifier of ``own.mode`` on ``index``, calibrated by leave-one-out where anything is auto."""
    calibration = None
    auto_weights = own.mode == "mixed" and "auto" in (own.alpha, own.beta)
    if auto_weights or own.min_confidence == "auto":
        calibration = calibrate(
            index,
            logit_scale,
            mode=make_classifier(own).name,
            alpha=_number(own.alpha),
            beta=_number(own.beta),
            keep=own.auto_keep if own.min_confidence == "auto" else None,
        )
    # A calibration carries explicit numbers through unchanged and fills in "auto".
    if calibration is not None:
        alpha, beta = calibration.alpha, calibration.beta
    else:
        alpha, beta = _number(own.alpha) or 0.0, _number(own.beta) or 1.0
    return make_classifier(own, alpha, beta), calibration


def make_target(
    layout: DatasetLayout,
    settings: Settings,
    embedder: Embedder,
    checkpoints: CheckpointCache | None = None,
    journal: Journal | None = None,
) -> Target:
    """Index a dataset's classes (with its corrected examples), calibrate what is ``auto``, check the mode."""
    own = settings.for_dataset(layout.name)
    learned = examples(journal, layout, embedder, settings) if journal is not None else []
    index = build_class_index(layout, embedder, own.prompt_templates, own.descriptions, learned)
    if own.mode == "finetuned":
        cache = checkpoints or CheckpointCache(settings.checkpoints_loaded, embedder.encoder.device)
        return finetuned_target(layout, settings, index, cache)
    classifier, calibration = choose_classifier(own, index, embedder.encoder.logit_scale)
    if calibration is not None:
        log.info(
            "calibrated",
            dataset=layout.name,
            alpha=calibration.alpha,
            beta=calibration.beta,
            visual_weight=round(calibration.visual_weight, 4),
            references=calibration.samples,
            loo_accuracy={mode: round(value, 4) for mode, value in calibration.accuracy.items()},
            min_confidence=calibration.min_confidence,
        )
    classifier.check(index)
    threshold = calibration.min_confidence if calibration is not None else None
    minimum = threshold if own.min_confidence == "auto" else _number(own.min_confidence)
    review = ReviewPolicy(min_confidence=minimum, min_margin=own.min_margin)
    return Target(
        layout=layout,
        settings=own,
        index=index,
        classifier=classifier,
        review=review,
        calibration=calibration,
    )


def _number(value: object) -> float | None:
    """A configured number, or None for "auto" and unset."""
    return float(value) if isinstance(value, int | float) else None


class Catalog:
    """Targets by dataset name, rebuilt on request after a debounce delay."""

    def __init__(
        self,
        settings: Settings,
        on_available: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        journal: Journal | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self._on_available = on_available
        self._clock = clock
        self._targets: Mapping[str, Target] = {}
        self._due: dict[str, float] = {}
        self._waiting: set[str] = set()
        self._lock = threading.Lock()
        self.checkpoints = CheckpointCache(settings.checkpoints_loaded, "cpu")
        self._seen_checkpoints: set[Path] = set()

    def snapshot(self) -> Mapping[str, Target]:
        """The current targets; never mutated afterwards, so safe to use for a whole batch."""
        return self._targets

    def waiting(self) -> set[str]:
        """Datasets that have files but no usable classes yet."""
        with self._lock:
            return set(self._waiting)

    def request(self, names: Iterable[str], delay: float) -> None:
        """Rebuild ``names`` once ``delay`` seconds pass without another request for them."""
        deadline = self._clock() + delay
        with self._lock:
            for name in names:
                self._due[name] = deadline

    def drop(self, name: str) -> None:
        """Forget a dataset whose folder is gone."""
        with self._lock:
            self._due.pop(name, None)
            self._waiting.discard(name)
        self._targets = {key: value for key, value in self._targets.items() if key != name}

    def watch_checkpoints(self) -> None:
        """Load every newly published checkpoint in the background, then ask for the swap.

        The state folder is not watched (the daemon writes to it itself), so the
        worker polls the small ``current`` pointer files between batches. Loading
        happens on a thread of its own, so classification goes on meanwhile; the
        swap itself is a cheap rebuild on the worker thread between two batches.
        """
        for name, target in self._targets.items():
            if not isinstance(target.classifier, FinetunedClassifier):
                continue
            published = current_checkpoint(checkpoints_of(self.settings.state_path, name))
            if published is None or published == target.classifier.checkpoint.path:
                continue
            with self._lock:
                if published in self._seen_checkpoints:
                    continue  # loading, or rejected already: a new publication has a new path
                self._seen_checkpoints.add(published)
            threading.Thread(
                target=self._preload, args=(name, published), name="clipsort-checkpoint", daemon=True
            ).start()

    def _preload(self, name: str, path: Path) -> None:
        try:
            self.checkpoints.get(path)
        except ModelLoadError as exc:  # a broken checkpoint: the one in use stays
            log.error("checkpoint_rejected", dataset=name, error=str(exc), kept="previous classifier")
            return
        self.request([name], 0.0)

    def rebuild_due(self, embedder: Embedder) -> None:
        """Rebuild every dataset whose debounce delay has passed (worker thread)."""
        now = self._clock()
        with self._lock:
            names = sorted(name for name, deadline in self._due.items() if deadline <= now)
            for name in names:
                del self._due[name]
        for name in names:
            self._rebuild(name, embedder)

    def rebuild_all(self, embedder: Embedder) -> None:
        """Rebuild every known dataset now (start-up, new model, new settings)."""
        with self._lock:
            names = sorted(set(self._due) | set(self._targets) | self._waiting)
            self._due.clear()
        for name in names:
            self._rebuild(name, embedder)

    def _rebuild(self, name: str, embedder: Embedder) -> None:
        layout = DatasetLayout(self.settings.root / name)
        if not is_dataset(layout.root):
            self.drop(name)
            return
        before = embedder.encoded_references
        self.checkpoints.device = embedder.encoder.device
        try:
            target = make_target(layout, self.settings, embedder, self.checkpoints, self.journal)
        except NoClassesError as exc:
            self._targets = {key: value for key, value in self._targets.items() if key != name}
            with self._lock:
                first = name not in self._waiting
                self._waiting.add(name)
            if first:
                log.warning("dataset_waiting_for_classes", dataset=name, reason=str(exc))
            return
        except OSError as exc:
            log.error("classes_unreadable", dataset=name, error=str(exc))
            return
        except ModelLoadError as exc:  # a broken checkpoint: the one in use stays
            log.error("checkpoint_rejected", dataset=name, error=str(exc), kept="previous classifier")
            return
        was_available = name in self._targets
        self._targets = {**self._targets, name: target}
        with self._lock:
            self._waiting.discard(name)
        log.info(
            "classes_loaded",
            dataset=name,
            classes=list(target.classes),
            checkpoint=str(target.classifier.checkpoint.path)
            if isinstance(target.classifier, FinetunedClassifier)
            else None,
            references=len(target.index.reference_paths),
            newly_embedded=embedder.encoded_references - before,
            mode=target.classifier.name,
        )
        if not was_available:
            self._on_available(name)
