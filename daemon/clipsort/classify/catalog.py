"""The live class index of every dataset: targets rebuilt on request, swapped whole, debounced.

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

from clipsort.classify.checkpoints import checkpoints_of, current_checkpoint
from clipsort.classify.modes import mode
from clipsort.classify.modes.finetuned import CheckpointCache
from clipsort.classify.targets import Corrected, Target, make_target
from clipsort.config import Settings
from clipsort.encode.embeddings import Embedder
from clipsort.encode.encoder import resolve_device
from clipsort.errors import ModelLoadError, NoClassesError
from clipsort.layout import DatasetLayout, is_dataset

log = structlog.get_logger()


class Catalog:
    """Targets by dataset name, rebuilt on request after a debounce delay."""

    def __init__(
        self,
        settings: Settings,
        on_available: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        corrected: Corrected | None = None,
    ) -> None:
        self.settings = settings
        self.corrected = corrected
        self._on_available = on_available
        self._clock = clock
        self._targets: Mapping[str, Target] = {}
        self._due: dict[str, float] = {}
        self._waiting: set[str] = set()
        self._lock = threading.Lock()
        self.checkpoints = CheckpointCache(settings.checkpoints_loaded, resolve_device(settings.device))
        self._seen_checkpoints: set[Path] = set()

    def reconfigure(self, settings: Settings) -> None:
        """Apply reloaded settings, on the worker's thread (which rebuilds the catalog): the checkpoint
        cache's size now, classes and modes at the rebuild."""
        self.settings = settings
        self.checkpoints.resize(settings.checkpoints_loaded)

    def snapshot(self) -> Mapping[str, Target]:
        """The current targets; never mutated afterwards, so safe to use for a whole batch."""
        return self._targets

    def layouts(self) -> Mapping[str, DatasetLayout]:
        """The folders of the datasets that can be sorted now (those with classes)."""
        return {name: target.layout for name, target in self._targets.items()}

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
            if mode(target.settings.mode).model != "checkpoint":
                continue
            published = current_checkpoint(checkpoints_of(self.settings.state_path, name))
            if published is None or str(published) == target.classifier.decided_by:
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
        # Checkpoints run where the CLIP model does (it may have fallen back); without one, as configured.
        encoder = embedder.encoder
        self.checkpoints.device = encoder.device if encoder else resolve_device(self.settings.device)
        try:
            target = make_target(layout, self.settings, embedder, self.checkpoints, self.corrected)
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
            checkpoint=target.classifier.decided_by,
            references=len(target.index.reference_paths),
            newly_embedded=embedder.encoded_references - before,
            mode=target.classifier.name,
        )
        if not was_available:
            self._on_available(name)
