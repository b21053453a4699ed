"""What the watcher and the components report, as typed events handled on one thread.

watchdog's threads (its reader and one dispatcher per observer) and the intake's and
catalog's callbacks never call into the learner, the catalog, the intake or the worker's
policy themselves: each report becomes one of the events below on a queue, and the
daemon's reactions thread (``clipsort-reactions``) takes them in order and makes the calls.
So a slow reaction (a dataset's watches made, a journal read) never holds up watchdog's
reader, whose kernel queue overflows when it is not read, and every reaction runs on one
thread that owns them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from clipsort.layout import DatasetLayout
from clipsort.work import ALL_DATASETS, Hint

log = structlog.get_logger()


@dataclass(frozen=True)
class Hinted:
    """A path in an inbox may be ready."""

    hint: Hint


@dataclass(frozen=True)
class RescanAsked:
    """An inbox (or, ``ALL_DATASETS``, every inbox) may hold files no event announced."""

    dataset: str = ALL_DATASETS


@dataclass(frozen=True)
class FoldersChanged:
    """A dataset's output folder came or went: watch what exists now."""


@dataclass(frozen=True)
class Placed:
    """A file arrived in a class folder: perhaps a person's correction."""

    dataset: str
    path: Path


@dataclass(frozen=True)
class FiledRescan:
    """Look at every file in ``Dataset/`` and ``Clases/`` (a folder moved in, a watch made)."""

    dataset: str


@dataclass(frozen=True)
class DestinationChanged:
    """Files were deleted or permissions changed under ``Dataset/``: a fault may have cleared."""

    dataset: str


@dataclass(frozen=True)
class ClassesChanged:
    """Something under ``Clases/`` changed: rebuild that dataset's classes after the debounce."""

    dataset: str


@dataclass(frozen=True)
class InboxBusy:
    """An inbox got a burst of events: stop watching it, and have the intake list it instead.

    ``whole``: the burst's files arrived whole (moved in, or closed after writing).
    """

    dataset: str
    whole: bool


@dataclass(frozen=True)
class InboxQuiet:
    """A busy inbox is quiet again (the intake's listings found nothing new): watch it, rescan it."""

    dataset: str


@dataclass(frozen=True)
class DatasetsFound:
    """The intake listed the data root: these datasets exist now (the intake's thread reports).

    ``handled`` is set once the reaction ran: the intake waits for it, so the watches of a new
    folder exist before the intake lists it (a file dropped in between is then not missed).
    """

    layouts: tuple[DatasetLayout, ...]
    handled: threading.Event = field(default_factory=threading.Event, compare=False)


@dataclass(frozen=True)
class _Stop:
    """Ends the reactions thread once what was queued before it is handled."""


@dataclass(frozen=True)
class SortedBusy:
    """The placer is filling a ``Dataset/``: its watch is dropped until it is still (see the watcher).

    ``since``: epoch seconds from which its events were dropped."""

    dataset: str
    since: float


@dataclass(frozen=True)
class SortedStill:
    """A busy ``Dataset/`` is still again: watch it, and look at what arrived since ``since``."""

    dataset: str
    since: float


WatchEvent = (
    Hinted
    | RescanAsked
    | FoldersChanged
    | Placed
    | FiledRescan
    | DestinationChanged
    | ClassesChanged
    | InboxBusy
    | InboxQuiet
    | SortedBusy
    | SortedStill
    | DatasetsFound
)


class Reactions:
    """The queue of events and the one thread that handles them, in order."""

    def __init__(self, handle: Callable[[WatchEvent], None]) -> None:
        self._handle = handle
        self._events: queue.SimpleQueue[WatchEvent | _Stop] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="clipsort-reactions", daemon=True)

    def put(self, event: WatchEvent) -> None:
        """Queue ``event`` (any thread); never blocks."""
        self._events.put(event)

    # The watcher's sink (clipsort.ingest.watcher.WatchSink): each call is one event.
    def hint(self, hint: Hint) -> None:
        self.put(Hinted(hint))

    def request_rescan(self, dataset: str = ALL_DATASETS) -> None:
        self.put(RescanAsked(dataset))

    def folders_changed(self) -> None:
        self.put(FoldersChanged())

    def placed(self, dataset: str, path: Path) -> None:
        self.put(Placed(dataset, path))

    def rescan_filed(self, dataset: str) -> None:
        self.put(FiledRescan(dataset))

    def destination_changed(self, dataset: str) -> None:
        self.put(DestinationChanged(dataset))

    def classes_changed(self, dataset: str) -> None:
        self.put(ClassesChanged(dataset))

    def inbox_busy(self, dataset: str, whole: bool) -> None:
        self.put(InboxBusy(dataset, whole))

    def sorted_busy(self, dataset: str, since: float) -> None:
        self.put(SortedBusy(dataset, since))

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Handle what was queued, then end the thread."""
        if self.thread.is_alive():
            self._events.put(_Stop())
            self.thread.join(timeout)

    def _run(self) -> None:
        while not isinstance(event := self._events.get(), _Stop):
            try:
                self._handle(event)
            except Exception as exc:  # one failing reaction must not end the others for good
                log.exception("reaction_failed", event=type(event).__name__, error=str(exc))
            finally:
                if isinstance(event, DatasetsFound):
                    event.handled.set()
