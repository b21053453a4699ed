"""The intake thread: hints in, settled jobs out, and the rescans that catch what events miss.

Watchdog handlers only call :meth:`Intake.hint` (a non-blocking put). A
bounded hint queue that fills up does not block or grow: the dataset is
marked for a rescan instead. The scanner is the source of truth; it runs at
start, every ``rescan_seconds`` (with jitter, so many daemons on one NAS do
not scan in step), when the watcher reports an inotify queue overflow, and
when room frees up after an overflow of our own capacity.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from clipsort.config import Mailbox, Settings
from clipsort.files import is_ignored, scan
from clipsort.ingest.readiness import Readiness
from clipsort.ingest.sidecars import is_sidecar, pictures_of, split
from clipsort.ingest.workqueue import FairQueue
from clipsort.layout import DatasetLayout, discover
from clipsort.work import ALL_DATASETS, Hint, HintKind, Job, drain

log = structlog.get_logger()

HINTS_PER_TICK = 2048
BUSY_LIST_SECONDS = 0.1  # how often a busy inbox is listed (see clipsort.ingest.watcher)
BUSY_QUIET_SECONDS = 1.0  # a busy inbox listed with nothing new this long is watched again
SIDECARS_REMEMBERED = 10_000  # orphaned sidecars whose line was said
TICK = 0.1
# After close-after-write or a rename into the inbox the writer is done; a short
# second look confirms the size held still (a writer that reopens to append is
# then caught by the truncation check and retried, see worker.py).
SETTLE_AFTER_CLOSE = 0.05


@dataclass
class _Listing:
    """A busy inbox's last listing (the names offered), when it is due again, and since when quiet."""

    names: frozenset[str]
    due: float
    quiet_since: float
    kind: HintKind  # what a listed file is taken as: "closed" when the burst's files arrive whole


def _folders_among(folder: Path, names: Sequence[str]) -> set[str]:
    """Which of ``names`` in ``folder`` are folders (not symlinks to one): from the listing's entry
    types, with no ``stat`` per name."""
    wanted = set(names)
    try:
        with os.scandir(folder) as entries:
            return {e.name for e in entries if e.name in wanted and e.is_dir(follow_symlinks=False)}
    except OSError:
        return set()


class Sortable(Protocol):
    """The datasets that can be sorted now (the classify stage's catalog is one)."""

    def layouts(self) -> Mapping[str, DatasetLayout]:
        """Name -> folders of every dataset that has classes."""


class Intake:
    """Owns readiness; feeds the fair queue."""

    def __init__(
        self,
        settings: Settings,
        catalog: Sortable,
        work: FairQueue,
        on_datasets: Callable[[list[DatasetLayout]], None],
        on_quiet: Callable[[str], None] = lambda dataset: None,
    ) -> None:
        self._settings = Mailbox(settings)
        self.readiness = Readiness(
            settle=settings.settle_seconds,
            settle_closed=min(settings.settle_seconds, SETTLE_AFTER_CLOSE),
            capacity=settings.queue_capacity,
        )
        self._catalog = catalog
        self._work = work
        self._on_datasets = on_datasets
        self._on_quiet = on_quiet  # a busy inbox is quiet again: watch it (then rescan it)
        self._busy_asked: dict[str, bool] = {}  # under _lock: inboxes reported busy (whole?), not listed
        self._busy: dict[str, _Listing] = {}  # the intake thread's: inboxes listed, not watched
        self._hints: queue.Queue[Hint] = queue.Queue(maxsize=4 * settings.queue_capacity)
        self._requested: set[str] = {ALL_DATASETS}
        self._resync = False  # look for folders to watch, scanning no inbox
        self._overflowed: set[str] = set()
        self._waiting_sidecars: set[Path] = set()  # orphaned sidecars already logged (once each)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_full = 0.0
        self.scans = 0
        self.thread = threading.Thread(target=self._run, name="clipsort-intake", daemon=True)

    @property
    def settings(self) -> Settings:
        """The settings this round works with (taken at the top of each tick)."""
        return self._settings.current

    def reconfigure(self, settings: Settings) -> None:
        """Hand over reloaded settings; the intake's thread applies them at its next tick."""
        self._settings.post(settings)

    def _apply(self, settings: Settings) -> None:
        """On the intake's thread: readiness timings, capacity, the hint queue's bound, rescans."""
        self.readiness.reconfigure(
            settle=settings.settle_seconds,
            settle_closed=min(settings.settle_seconds, SETTLE_AFTER_CLOSE),
            capacity=settings.queue_capacity,
        )
        # queue.Queue reads maxsize on every put, under its lock: a new bound holds from the next hint.
        self._hints.maxsize = 4 * settings.queue_capacity

    # --- called from other threads -------------------------------------------------
    def hint(self, hint: Hint) -> None:
        """A path that may be ready (watchdog threads); never blocks."""
        try:
            self._hints.put_nowait(hint)
        except queue.Full:
            self.request_rescan(hint.dataset)

    def request_rescan(self, dataset: str = ALL_DATASETS) -> None:
        """Rescan one dataset's inbox, or (``ALL_DATASETS``) every dataset and look for new ones."""
        with self._lock:
            self._requested.add(dataset)

    def list_busy(self, dataset: str, whole: bool) -> None:
        """List ``dataset``'s inbox until it is quiet: its watch is gone (a burst; see the watcher).

        ``whole``: the burst's events said its files arrive whole (renamed in): a listed file is
        then taken as a closed one is (``settle_closed``, not ``settle_seconds``). Measured with a
        600-file burst renamed in, a listing's full settle time cut the burst's rate by a third.
        A file that was not whole after all fails the readiness check or decodes incomplete, and
        waits: a retry, never a loss.
        """
        with self._lock:
            self._busy_asked[dataset] = whole

    def request_sync(self) -> None:
        """Look for datasets and folders to watch (and those gone), scanning no inbox."""
        with self._lock:
            self._resync = True

    def expedite(self, dataset: str) -> None:
        """Try ``dataset``'s files that wait after a failure now, not after their back-off."""
        if self.readiness.expedite(dataset):
            log.info("retries_expedited", dataset=dataset)

    def release(self, *jobs: Job) -> None:
        self.readiness.release(*jobs)

    def retry(self, job: Job, delay: float) -> None:
        self.readiness.retry(job, delay)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    def _sidecar(self, path: Path) -> None:
        """Say once that a sidecar waits for a picture that is not in its folder (it is never rejected)."""
        if path in self._waiting_sidecars or pictures_of(path, self.settings.sidecar_suffixes):
            return
        if len(self._waiting_sidecars) >= SIDECARS_REMEMBERED:
            self._waiting_sidecars.clear()  # at worst one line more for each: memory stays bounded
        self._waiting_sidecars.add(path)
        log.info("sidecar_waiting", file=str(path), reason="its picture is not in the inbox")

    # --- the intake thread ---------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # a bug here must not end intake for good
                log.exception("intake_failed", error=str(exc))
                time.sleep(TICK)

    def _tick(self) -> None:
        posted = self._settings.take()
        if posted is not None:
            self._apply(posted)
        due = self.readiness.next_due()
        wait = TICK if due is None else min(TICK, max(0.0, due - time.monotonic()))
        hints = drain(self._hints, wait, HINTS_PER_TICK)
        sortable = self._catalog.layouts()
        linked = {name for name, layout in sortable.items() if hints and layout.inbox.is_symlink()}
        for hint in hints:
            if hint.dataset in linked:  # an inbox that is a symlink is never followed (see scan)
                continue
            if is_sidecar(hint.path.name, self.settings.sidecar_suffixes):
                self._sidecar(hint.path)  # never a job: it moves with its picture
                continue
            if hint.dataset in sortable and not self.readiness.offer(hint):
                self._overflowed.add(hint.dataset)
        self._list_busy(sortable)
        ready = self.readiness.ready()
        if ready:
            self._work.put(ready)
        self._rescan_if_due()

    def _list_busy(self, sortable: Mapping[str, DatasetLayout]) -> None:
        """List each busy inbox that is due; one quiet for ``BUSY_QUIET_SECONDS`` is watched again."""
        with self._lock:
            asked, self._busy_asked = self._busy_asked, {}
        now = time.monotonic()
        for name in asked.keys() - self._busy.keys():
            self._busy[name] = _Listing(frozenset(), now, now, "closed" if asked[name] else "scanned")
            log.info("inbox_busy", dataset=name, whole=asked[name], action="listed until quiet, not watched")
        for name, listing in list(self._busy.items()):
            if now < listing.due:
                continue
            layout = sortable.get(name)
            if layout is not None and self._list_new(layout, listing):
                listing.quiet_since = now
            elif layout is None or now - listing.quiet_since >= BUSY_QUIET_SECONDS:
                del self._busy[name]
                log.info("inbox_quiet", dataset=name, action="watched again")
                self._on_quiet(name)
                continue
            listing.due = now + BUSY_LIST_SECONDS

    def _list_new(self, layout: DatasetLayout, listing: _Listing) -> bool:
        """Offer the files of a busy inbox not listed before; whether there were any.

        The listing and the set difference run in C, so a long inbox costs little per round; only
        new names take the per-file path (a folder among them asks for a full scan of the inbox).
        """
        try:
            names = frozenset(os.listdir(layout.inbox)) if not layout.inbox.is_symlink() else frozenset()
        except OSError:
            names = frozenset()
        fresh = sorted(names - listing.names)
        listing.names = names
        settings = self.settings
        folders = _folders_among(layout.inbox, fresh) if fresh else set()
        for position, name in enumerate(fresh):
            if is_ignored(name, settings.ignore_patterns):
                continue
            path = layout.inbox / name
            if name in folders:
                self.request_rescan(layout.name)  # its files: the scanner walks folders
            elif is_sidecar(name, settings.sidecar_suffixes):
                self._sidecar(path)
            elif not self.readiness.offer(Hint(layout.name, path, listing.kind)):
                # The rest stays "new" to the next rounds, which offer it as room frees: no full
                # scan is asked for (listing a long inbox in Python again after every overflow).
                listing.names = names - frozenset(fresh[position:])
                break
        return bool(fresh)

    def _rescan_if_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now >= self._next_full:
                self._requested.add(ALL_DATASETS)
                jitter = random.uniform(0.9, 1.1)  # spreads load; not security-relevant
                self._next_full = now + self.settings.rescan_seconds * jitter
            if self._overflowed and len(self.readiness) < self.settings.queue_capacity // 2:
                self._requested |= self._overflowed
                self._overflowed.clear()
            requested, self._requested = self._requested, set()
            resync, self._resync = self._resync, False
        if ALL_DATASETS in requested or resync:
            layouts = discover(self.settings.root)
            self._on_datasets(layouts)
            if ALL_DATASETS in requested:
                requested = {layout.name for layout in layouts}
        if not requested:
            return
        sortable = self._catalog.layouts()
        for name in sorted(requested):
            if name in sortable:
                self.readiness.expedite(name)  # a rescan is a fresh look: so is a retry
                try:
                    self._scan(sortable[name])
                except Exception as exc:  # one dataset's failure must not cost the others their scan
                    log.error("scan_failed", dataset=name, error=f"{type(exc).__name__}: {exc}")
        self.scans += 1

    def _scan(self, layout: DatasetLayout) -> None:
        inodes: dict[Path, int] = {}
        # What readiness or the worker already has is left out: offering it again changes nothing.
        known = self.readiness.tracked()
        files, sidecars = split(
            scan(
                layout.inbox,
                self.settings.ignore_patterns,
                self.settings.max_folder_depth,
                inodes=inodes,
                known=known,
            ),
            self.settings.sidecar_suffixes,
        )
        for path in sidecars:
            self._sidecar(path)
        for path in files:
            if not self.readiness.offer(Hint(layout.name, path, inode=inodes[path])):
                self._overflowed.add(layout.name)
                log.info("intake_full", dataset=layout.name, capacity=self.settings.queue_capacity)
                return
