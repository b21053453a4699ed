"""watchdog glue: file-system events become hints, nothing more.

OS caveats handled here:

- An exception raised in a watchdog handler silently kills the observer's
  dispatch thread, after which no event is ever delivered again. Every
  handler therefore runs inside a catch-all, and the service checks
  :meth:`Watcher.is_alive` and restarts the observer if it died anyway.
- The kernel's inotify queue holds ``fs.inotify.max_queued_events`` (16,384
  by default) events; past that it drops events and sends IN_Q_OVERFLOW,
  which watchdog only logs (watchdog issue 654). We listen for that log
  record and answer it with a full rescan.
- A folder moved into the inbox brings its files without a per-file event,
  so a directory event asks for a rescan of that dataset.
- inotify does not see writes made by other machines on NFS/SMB mounts; the
  ``polling`` observer does (at the cost of a periodic listing).
- watchdog holds every IN_MOVED_FROM for 0.5 s to pair it with its
  IN_MOVED_TO, and its reader sleeps out that delay with the event at the
  head of its queue, holding back every event behind it. Uploaders (rsync,
  browsers, SMB clients) rename a temporary name into place, so each upload
  would wait half a second; worse, each file *clipsort* moves out of the
  inbox is an IN_MOVED_FROM that never pairs, so event delivery would be
  capped at one file per delay while the daemon works (a 20 ms delay
  measured 118 files/s on a GPU that sorts 495/s). clipsort needs no pairing:
  with ``generate_full_events`` an unpaired IN_MOVED_TO still arrives as a
  move (a finished file, unlike a create) and an unpaired IN_MOVED_FROM as a
  move out, which is ignored. So the delay is zero, and pairing is switched
  off altogether: watchdog pairs by scanning its whole pending queue for the
  cookie, twice per IN_MOVED_TO, so in a burst, when the queue is long, each
  move cost a scan of it (a third of the event reader's time, measured).
  Unpaired, a rename inside a watched folder arrives as two moves, out and in;
  a folder renamed inside the inbox is watched again under its new name
  (watchdog re-adds the watches of a folder moved in from an unknown place),
  and the handlers ask for a rescan of it.
- By default watchdog asks inotify for every event, opens and reads
  included, and turns each into one or more Python event objects (plus a
  "folder modified" event per move or create). Every file clipsort sorts
  is read once and moved twice, so the daemon would parse about ten events
  per file of its own making: at 2,000 files/s that is most of a core
  holding the GIL. Each handler therefore names the events it uses
  (``event_filter``), which also narrows the kernel's inotify mask: reads,
  per-write IN_MODIFY and folder-modified events are never delivered.
- watchdog's filter cannot ask for moves in without moves out (both are its
  one ``FileMovedEvent``), yet every file clipsort sorts leaves the inbox by
  a rename (an IN_MOVED_FROM there) and an upload renamed into place sends
  one too. Neither the handlers nor watchdog itself, with pairing off, use
  an IN_MOVED_FROM in the inbox or ``Dataset/``, so those watches leave it
  out of the kernel's mask (``_MovesInOnly``): half the events of a burst
  of uploads renamed into place. ``Clases/`` and the dataset folders keep
  it: a reference or a folder moved away changes what is sorted into what.
- inotify gives one watch per inode, so a folder swapped with another name
  (``renameat2(RENAME_EXCHANGE)``, or moved away and back) can leave
  watchdog's two maps of its watches (by descriptor, by path) disagreeing;
  removing such a watch then raised ``KeyError`` from watchdog's own
  bookkeeping, in its reader thread or in ``Observer.stop()``, which skipped
  the rest of the daemon's shutdown. :class:`_WatchGroup` forgets a watch
  whatever the maps say, and :meth:`Watcher.stop` never raises.
- Even narrowed so, a burst into an inbox costs the daemon an inotify record, a watchdog event
  object and a trip through two of its threads and the reactions thread per file, about a sixth
  of the daemon's own CPU per file (``bench.cpu_per_file``). So an inbox whose handler sees more
  than ``busy_events_per_second`` events in a second reports itself busy, drops its events from
  then on, and the reactions thread removes its watch (the kernel then queues nothing for it);
  the intake lists it instead, ten times a second, offering only the names it had not listed
  (set arithmetic over ``os.listdir``, in C), until a second passes with nothing new. Then the
  watch is made again and one full scan covers what came in between. A subfolder of a busy inbox
  is seen at that scan (its files arrive late, never lost). A listing cannot tell a finished file
  from one being written, so listed files wait the full settle time, unless the burst's events
  were all moves in and finished writes of final names (uploads renamed into place, temporary
  names aside): then they are taken as finished (``whole``). Measured on a 600-file burst renamed
  in with the near-free model: with every listed file settling, a third slower than on events;
  taken whole and listed ten times a second, the same rate (455 files/s against 437-474).
- Each file the placer files is an IN_MOVED_TO in its class folder, which the learner must hear
  of only to find it is clipsort's own (a person's moves among the class folders are what it
  learns from): in a burst, watchdog's three threads, the reactions thread and the learner spent
  about 0.1 ms per file on them. So a ``Dataset/`` whose handler sees more than
  ``busy_events_per_second`` events in a second reports itself busy too and drops its events; its
  watch is removed until none of its class folders' modification times has changed for a second
  (the supervisor looks twice a second, :meth:`Watcher.still_sorted`), then made again, and the
  learner looks at the files whose inode changed (``st_ctime``: a rename, a link or a new file
  sets it) since before the events were dropped (``QUEUED_SECONDS`` before, or the watch's
  start). A person's move during a burst is learnt when the burst ends, never lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import structlog
from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MOVED,
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.inotify import InotifyFullEmitter, InotifyObserver, InotifyWatchGroup
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, Mask, WatchDescriptor
from watchdog.observers.inotify_move_event_grouper import (
    GroupedInotifyEvent,
    InotifyMoveEventGrouper,
    PathedInotifyEvent,
)
from watchdog.observers.polling import PollingObserver

from clipsort.files import MAX_DEPTH, is_ignored
from clipsort.layout import REJECTED_DIR, REVIEW_DIR, SORTED_DIR, DatasetLayout
from clipsort.work import ALL_DATASETS, Hint

log = structlog.get_logger()

MOVE_PAIRING_SECONDS = 0.0


def _unpaired(_: InotifyMoveEventGrouper, event: PathedInotifyEvent) -> PathedInotifyEvent:
    """An IN_MOVED_TO as it came, never looked up in the pending queue (see the module docstring)."""
    return event


def _no_pending_source(_: InotifyMoveEventGrouper, cookie: int) -> None:
    """No queued IN_MOVED_FROM is ever matched to a move (see the module docstring)."""
    return None


PATCHED = ("delay", "_group_moved_to_event", "get_queued_moved_from_event")  # InotifyMoveEventGrouper's


def adjust_watchdog() -> list[str]:
    """Turn watchdog's move pairing off (see the module docstring); what it lacks of ``PATCHED``.

    Applied by :meth:`Watcher.start`, not on import: importing the watcher changes nothing. Where
    watchdog's internals differ (another version, another platform), pairing stays on: slower in a
    burst, as correct, and one warning says so. A test holds the pinned watchdog to having them all.
    """
    missing = [name for name in PATCHED if not hasattr(InotifyMoveEventGrouper, name)]
    if "delay" not in missing:
        InotifyMoveEventGrouper.delay = MOVE_PAIRING_SECONDS
    if "_group_moved_to_event" not in missing:
        setattr(InotifyMoveEventGrouper, "_group_moved_to_event", _unpaired)  # noqa: B010 (a method)
    if "get_queued_moved_from_event" not in missing:
        setattr(InotifyMoveEventGrouper, "get_queued_moved_from_event", _no_pending_source)  # noqa: B010
    # A folder renamed inside a watched tree is watched again under its new name (moves are
    # unpaired); watchdog warns that the folder's callback is replaced, by itself, which is meant.
    warnings.filterwarnings(
        "ignore", message="Callback with id .* already exists for watch", category=RuntimeWarning
    )
    if missing:
        log.warning("watchdog_unadjusted", missing=missing, effect="moves paired: slower in a burst")
    return missing


class _MovesInOnly(FileSystemEvent):
    """Never emitted: among a handler's events, it leaves IN_MOVED_FROM out of its watch's mask."""


class _WatchGroup(InotifyWatchGroup):
    """watchdog's watches of one scheduled folder, tolerant of a folder swapped under them.

    Its walks are iterative and stop at ``max_depth`` (watchdog's ``os.walk`` recursed: a chain
    of a thousand nested folders raised RecursionError in its reader thread, which then died and
    no event reached the daemon again), and an error while handling one event is logged and
    swallowed here rather than ending that thread: the rescans find what its events missed.
    """

    # The daemon's max_folder_depth, set by the one Watcher of the process: watchdog builds this
    # object itself (in _Emitter.on_thread_start) and takes no parameter for it.
    max_depth: ClassVar[int] = MAX_DEPTH

    def on_event(self, event: InotifyEvent) -> None:
        try:
            super().on_event(event)
        except Exception as exc:
            if not getattr(self, "failure", ""):  # once per watched folder: rescans take over
                self.failure = f"{type(exc).__name__}: {exc}"
                log.error("watch_event_failed", folder=os.fsdecode(self.path), error=self.failure)

    def _add_all_callbacks(self, path: bytes) -> None:
        self._add_callback(path)
        if self.is_recursive and os.path.isdir(path):
            for folder in _folders_below(path, self.max_depth):
                self._add_callback(folder)

    def _recursive_simulate(self, src_path: bytes) -> list[InotifyEvent]:
        events = []
        for root, folders, files in _walk(src_path, self.max_depth):
            wd_root = self._active_callbacks_by_path.get(root)
            if wd_root is None:
                continue  # not watched (yet): its own IN_CREATE will report its content
            events += [InotifyEvent(wd_root, _DIR_CREATED, 0, name) for name in folders]
            events += [InotifyEvent(wd_root, InotifyConstants.IN_CREATE, 0, name) for name in files]
        return events

    def _remove_watch_internally(self, wd: WatchDescriptor) -> None:
        """Forget watch ``wd``; the maps may already disagree about it (see the module docstring)."""
        path = self._active_callbacks_by_watch.pop(wd, None)
        if path is not None and self._active_callbacks_by_path.get(path) == wd:
            del self._active_callbacks_by_path[path]


_DIR_CREATED = Mask(InotifyConstants.IN_CREATE | InotifyConstants.IN_ISDIR)


def _walk(top: bytes, max_depth: int) -> Iterator[tuple[bytes, list[bytes], list[bytes]]]:
    """``os.walk`` without recursion or symlinks, at most ``max_depth`` folders down."""
    stack = [(top, 0)]
    while stack:
        here, depth = stack.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue
        folders = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
        files = [e.name for e in entries if not e.is_dir(follow_symlinks=False)]
        yield here, folders, files
        if depth < max_depth:
            stack.extend((os.path.join(here, name), depth + 1) for name in folders)


def _folders_below(top: bytes, max_depth: int) -> Iterator[bytes]:
    for root, folders, _ in _walk(top, max_depth):
        yield from (os.path.join(root, name) for name in folders)


class _Emitter(InotifyFullEmitter):
    """watchdog's emitter of unpaired moves, asking the kernel for moves in only where told to.

    A folder moved in makes watchdog walk it for synthetic "created" events with ``os.walk``, which
    recurses: a 1,000-deep chain raised RecursionError in this emitter's thread and ended it. The
    folder's own event is queued before that walk, and it asks for a rescan (which walks to
    ``max_folder_depth``), so such an error is logged once and the thread goes on.
    """

    def build_and_queue_event(self, event: GroupedInotifyEvent, *, full_events: bool = True) -> None:
        try:
            super().build_and_queue_event(event, full_events=full_events)
        except Exception as exc:
            if not getattr(self, "_said", False):
                self._said = True
                log.error("watch_event_failed", folder=self.watch.path, error=f"{type(exc).__name__}: {exc}")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = "clipsort-watch"

    def on_thread_start(self) -> None:
        # InotifyEmitter.on_thread_start with the tolerant group (watchdog 7.1 names no factory).
        self._inotify = _WatchGroup(
            self._inotify_fd,
            os.fsencode(self.watch.path),
            is_recursive=self.watch.is_recursive,
            event_mask=self.get_event_mask_from_filter(),
            follow_symlink=self.watch.follow_symlink,
        )

    def get_event_mask_from_filter(self) -> Mask:
        mask = super().get_event_mask_from_filter()
        if self._event_filter is not None and _MovesInOnly in self._event_filter:
            mask = Mask(mask & ~InotifyConstants.IN_MOVED_FROM)
        return mask


class _Observer(InotifyObserver):
    """watchdog's inotify observer (one reader for every watch) with :class:`_Emitter`."""

    def __init__(self) -> None:
        super().__init__(generate_full_events=True)
        # BaseObserver keeps the class it builds emitters from here; InotifyObserver offers no
        # parameter for it (watchdog 7.1).
        self._emitter_class = _Emitter
        self.name = "clipsort-observer"  # the runtime's threads are told apart by name
        self._inotify_fd.name = "clipsort-inotify"  # watchdog's one reader of every watch, started above


class WatchSink(Protocol):
    """Where the watcher sends what it saw."""

    def hint(self, hint: Hint) -> None: ...

    def request_rescan(self, dataset: str = ALL_DATASETS) -> None: ...

    def folders_changed(self) -> None:
        """A dataset's output folder came or went: watch what exists now (no inbox needs a scan)."""

    def placed(self, dataset: str, path: Path) -> None: ...

    def rescan_filed(self, dataset: str) -> None: ...

    def destination_changed(self, dataset: str) -> None: ...

    def classes_changed(self, dataset: str) -> None: ...

    def inbox_busy(self, dataset: str, whole: bool) -> None:
        """An inbox got more events in a second than ``busy_events_per_second``: list it instead.

        ``whole``: its events were moves in and finished writes only (files arriving whole).
        """

    def sorted_busy(self, dataset: str, since: float) -> None:
        """A ``Dataset/`` got more events in a second than ``busy_events_per_second`` (the placer
        filling it): stop watching it until it is still; ``since`` (epoch seconds) is when its
        events began to be dropped, so a scan of what changed since finds a person's moves."""


def _path(raw: str | bytes) -> Path:
    return Path(os.fsdecode(raw))


class _SafeHandler(FileSystemEventHandler):
    """Runs :meth:`handle` inside a catch-all (see the module docstring)."""

    # The only events delivered to :meth:`handle` (see the module docstring); every handler names them.
    events: ClassVar[tuple[type[FileSystemEvent], ...]]

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.handle(event)
        except Exception as exc:
            log.exception("watch_handler_failed", fs_event=repr(event), error=str(exc))

    def handle(self, event: FileSystemEvent) -> None:
        raise AssertionError("subclasses handle events")


# How long an event may wait in watchdog's queue before a handler sees it, at most, for the look
# after a busy Dataset/ (a burst's events queue for well under a second; the look reads a file's
# ctime, so a longer window only looks at more of clipsort's own files).
QUEUED_SECONDS = 30.0


class _Rate:
    """Events counted per second against ``limit``: :meth:`over` says when a second holds more."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: never over
        self._window = 0.0  # when the current second of counting began
        self.count = 0

    def over(self) -> bool:
        """Count one event; whether this second has had more than ``limit`` (then, and only then).
        With no limit nothing is counted (no clock read per event)."""
        if not self.limit:
            return False
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self.count = now, 0
        self.count += 1
        return self.count == self.limit + 1


class _InboxHandler(_SafeHandler):
    # A create is enough to start the settle clock: readiness then watches the
    # size itself, so one event per write (IN_MODIFY) would add nothing.
    events = (FileCreatedEvent, FileClosedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent, _MovesInOnly)

    def __init__(
        self, layout: DatasetLayout, sink: WatchSink, ignore: Sequence[str], busy_rate: int = 0
    ) -> None:
        self.layout = layout
        self.sink = sink
        self.ignore = ignore
        self.rate = _Rate(busy_rate)  # events in a second that make the inbox busy (0: never)
        self.busy = False  # reported busy: its events are dropped until its watch is removed
        self._written = 0  # of the second's events, files still being written (created, not closed)

    def handle(self, event: FileSystemEvent) -> None:
        if self.busy:
            return  # the intake lists this inbox now (see the module's caveats)
        if self.rate.limit:
            over = self.rate.over()
            # A created file that is not a temporary name is being written where it will stay.
            written = event.event_type == EVENT_TYPE_CREATED and not is_ignored(
                os.path.basename(os.fsdecode(event.src_path)), self.ignore
            )
            if self.rate.count == 1:  # a new second of counting
                self._written = 0
            self._written += written
            if over:
                self.busy = True
                # Only moves in and finished writes: its files arrive whole (uploads renamed into
                # place), so a listing may take them as finished ones too (see Readiness).
                self.sink.inbox_busy(self.layout.name, whole=not self._written)
                return
        if event.is_directory:
            self.sink.request_rescan(self.layout.name)
            return
        moved = event.event_type == EVENT_TYPE_MOVED
        if moved and not event.dest_path:
            return  # moved out of the inbox (each file clipsort sorts)
        path = _path(event.dest_path if moved else event.src_path)
        try:
            parts = path.relative_to(self.layout.inbox).parts
        except ValueError:
            return  # moved out of the inbox, when watchdog paired it with a move elsewhere
        if any(is_ignored(part, self.ignore) for part in parts):
            return  # a temporary name: its final rename will be seen
        closed = event.event_type in (EVENT_TYPE_CLOSED, EVENT_TYPE_MOVED)
        self.sink.hint(Hint(self.layout.name, path, "closed" if closed else "written"))


def _folder_times(folder: Path) -> tuple[int, ...]:
    """The modification times (ns) of ``folder`` and of the folders directly in it; () if it is gone."""
    try:
        with os.scandir(folder) as listing:
            inner = [
                entry.stat(follow_symlinks=False).st_mtime_ns
                for entry in listing
                if entry.is_dir(follow_symlinks=False)
            ]
        return (folder.lstat().st_mtime_ns, *sorted(inner))
    except OSError:
        return ()


def _arrival(event: FileSystemEvent) -> Path | None:
    """The file a finished write, a move or a hard link into the watched folder brought, if any.

    A hard link (``ln`` then ``rm``, as some file managers and sync tools move a file) sends only
    IN_CREATE, never a close after a write. By the time the event is handled the first name may
    be gone already (its link count back to 1: a busy machine lost such moves), so every created
    file that holds bytes is a hint; the learner decides from the journal, and a file still being
    written matches no decision (its close brings it again).
    """
    if event.is_directory:
        return None
    if event.event_type == EVENT_TYPE_CREATED:
        path = _path(event.src_path)
        try:
            return path if os.lstat(path).st_size > 0 else None
        except OSError:
            return None
    if event.event_type not in (EVENT_TYPE_MOVED, EVENT_TYPE_CLOSED):
        return None
    target = event.dest_path if event.event_type == EVENT_TYPE_MOVED else event.src_path
    return _path(target) if target else None


class _ClassesHandler(_SafeHandler):
    # Every change to the references, never the daemon's own reads of them.
    events = (
        FileCreatedEvent,
        FileClosedEvent,
        FileModifiedEvent,
        FileMovedEvent,
        FileDeletedEvent,
        DirCreatedEvent,
        DirMovedEvent,
        DirDeletedEvent,
    )

    def __init__(self, name: str, sink: WatchSink) -> None:
        self.name = name
        self.sink = sink

    def handle(self, event: FileSystemEvent) -> None:
        self.sink.classes_changed(self.name)
        if event.is_directory and event.event_type in (EVENT_TYPE_CREATED, EVENT_TYPE_MOVED):
            # A new folder (Clases/_none/ made to drag files into) is watched only once its
            # creation is seen; a file moved into it at once sends no event. One scan finds it.
            self.sink.rescan_filed(self.name)
        elif event.event_type in (EVENT_TYPE_MOVED, EVENT_TYPE_CREATED) and (arrived := _arrival(event)):
            self.sink.placed(self.name, arrived)  # maybe dragged (or linked) here from Review/ or Dataset/


class _SortedHandler(_SafeHandler):
    """``Dataset/``: files arriving in a class folder may be a person's corrections.

    A deletion there is what a person does to free a full disk, a folder's
    changed permissions what one does to a read-only one: files waiting for
    their back-off are then tried at once (``destination_changed``).
    """

    # DirModifiedEvent only widens the kernel's mask: watchdog (7.1) builds IN_ATTRIB into it
    # for DirModifiedEvent but for no attribute event, so DirAttribEvent alone never arrives.
    events = (
        FileCreatedEvent,  # a hard link's (see _arrival)
        FileClosedEvent,
        FileMovedEvent,
        FileDeletedEvent,
        DirCreatedEvent,
        DirMovedEvent,
        DirAttribEvent,
        DirModifiedEvent,
        _MovesInOnly,  # a file moved out of a class folder leaves nothing to learn or retry
    )

    def __init__(self, name: str, sink: WatchSink, busy_rate: int = 0) -> None:
        self.name = name
        self.sink = sink
        self.rate = _Rate(busy_rate)  # events in a second that make it busy (0: never)
        self.busy = False  # reported busy: its events are dropped until its watch is removed
        self.made = time.time()  # its watch reports what happens from about now (see handle)

    def handle(self, event: FileSystemEvent) -> None:
        if self.busy:
            return  # the placer is filling it: looked at once it is still (see the module's caveats)
        if self.rate.over():
            self.busy = True
            # From when the dropped events happened: not when they are handled, since watchdog
            # queues them (by far less than QUEUED_SECONDS), and never before the watch existed.
            self.sink.sorted_busy(self.name, since=max(self.made, time.time() - QUEUED_SECONDS))
            return
        if isinstance(event, DirModifiedEvent):
            return  # an entry in the folder changed: the file events tell which
        if isinstance(event, DirAttribEvent):
            self.sink.destination_changed(self.name)  # chmod, chown: perhaps writable again
        elif event.event_type == EVENT_TYPE_DELETED:
            # Not a hidden name: the mover's own temporaries (a cross-device copy that met a full
            # disk is deleted again) would otherwise reset the back-off on every failure.
            if not Path(os.fsdecode(event.src_path)).name.startswith("."):
                self.sink.destination_changed(self.name)
        elif event.is_directory:
            # inotify watches a new folder only once its creation is seen: a file moved
            # into it at once sends no event. The folder is watched by now, so one scan
            # finds what came before and events report what comes after.
            self.sink.rescan_filed(self.name)
        elif (arrived := _arrival(event)) is not None:
            self.sink.placed(self.name, arrived)


class _StructureHandler(_SafeHandler):
    """The data root and each dataset folder: new or removed datasets and sub-folders.

    A dataset, its ``Images/`` or its ``Clases/`` may come with files that sent no event of
    their own, so each inbox is scanned again. ``Dataset/``, ``Review/`` and ``Rejected/``
    (clipsort makes each with the first file it sends there) only change what is watched: with
    a backlog of 100,000 files, the first one sorted would otherwise list the inbox again.
    """

    events = (DirCreatedEvent, DirMovedEvent, DirDeletedEvent)
    OUTPUTS = frozenset({SORTED_DIR, REVIEW_DIR, REJECTED_DIR})

    def __init__(self, sink: WatchSink, *, in_dataset: bool) -> None:
        self.sink = sink
        self.in_dataset = in_dataset  # a dataset folder, not the root (where "Dataset" is a dataset)

    def handle(self, event: FileSystemEvent) -> None:
        # An unpaired move has its name in dest_path (moved in) or src_path (moved out).
        if self.in_dataset and _path(event.dest_path or event.src_path).name in self.OUTPUTS:
            self.sink.folders_changed()
        else:
            self.sink.request_rescan(ALL_DATASETS)


class _OverflowListener(logging.Handler):
    """Turns watchdog's "Inotify queue overflowed" log record into a full rescan."""

    def __init__(self, sink: WatchSink) -> None:
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            log.warning("inotify_overflow", action="full rescan")
            self.sink.request_rescan(ALL_DATASETS)


class Watcher:
    """One observer watching the root, each dataset folder, its inbox and its classes."""

    def __init__(
        self,
        root: Path,
        sink: WatchSink,
        *,
        polling: bool,
        polling_seconds: float,
        ignore: Sequence[str],
        max_depth: int = MAX_DEPTH,
        busy_rate: int = 0,
    ) -> None:
        _WatchGroup.max_depth = max_depth
        self.busy_rate = busy_rate
        self.root = root
        self.sink = sink
        self.polling = polling
        self.polling_seconds = polling_seconds
        self.ignore = ignore
        self._watches: dict[Path, ObservedWatch] = {}
        self._failed: dict[Path, str] = {}  # folders that could not be watched, and why
        self._paused: set[Path] = set()  # busy inboxes and Dataset/ folders (see the module)
        # Per paused Dataset/: its folders' modification times last seen, when they last changed
        # (monotonic) and since when its events were dropped (epoch seconds, for a file's ctime).
        self._filling: dict[str, tuple[tuple[int, ...], float, float]] = {}
        self._lock = threading.RLock()  # sync() runs on the reactions thread, restart() on the main one
        self._observer = self._new_observer()
        self._overflow = _OverflowListener(sink)

    @property
    def observer(self) -> BaseObserver:
        """The watchdog observer running now (replaced by :meth:`restart`), for supervision."""
        return self._observer

    def _new_observer(self) -> BaseObserver:
        if self.polling:
            return PollingObserver(timeout=self.polling_seconds)
        return _Observer()

    def start(self) -> None:
        adjust_watchdog()
        with self._lock:
            logging.getLogger("watchdog.observers.inotify_c").addHandler(self._overflow)
            self._observer.start()
            self._schedule(self.root, _StructureHandler(self.sink, in_dataset=False), recursive=False)

    def stop(self) -> None:
        """Stop watching; never raises (an error in watchdog's teardown is logged, the rest goes on)."""
        with self._lock:
            logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._overflow)
            try:
                self._observer.stop()
                self._observer.join(timeout=5)
            except Exception as exc:
                log.error("watcher_stop_failed", error=f"{type(exc).__name__}: {exc}")
            self._watches.clear()

    def is_alive(self) -> bool:
        """The dispatch thread, every emitter thread and inotify's reader thread are running."""
        reader = getattr(self._observer, "_inotify_fd", None)  # watchdog's one reader of every watch
        return (
            self._observer.is_alive()
            and all(emitter.is_alive() for emitter in self._observer.emitters)
            and (reader is None or reader.is_alive())
        )

    def restart(self) -> None:
        """A fresh observer with the same folders (events in between are lost: rescan after)."""
        with self._lock:
            folders = list(self._watches)
            self.stop()
            self._observer = self._new_observer()
            self.start()
            self.sync([DatasetLayout(folder) for folder in folders if folder.parent == self.root])

    def sync(self, layouts: Sequence[DatasetLayout]) -> None:
        """Watch every part of ``layouts`` that exists; drop watches of folders that are gone."""
        with self._lock:
            for folder in [folder for folder in self._watches if folder != self.root and not folder.is_dir()]:
                self._unschedule(folder)
            for layout in layouts:
                self._schedule(layout.root, _StructureHandler(self.sink, in_dataset=True), recursive=False)
                self._schedule(layout.inbox, self._inbox_handler(layout), recursive=True)
                self._schedule(layout.classes, _ClassesHandler(layout.name, self.sink), recursive=True)
                self._schedule(layout.sorted, self._sorted_handler(layout), recursive=True)

    def pause_inbox(self, dataset: str) -> None:
        """Stop watching a busy inbox (the intake lists it meanwhile) until :meth:`resume_inbox`."""
        self._pause(DatasetLayout(self.root / dataset).inbox)

    def resume_inbox(self, dataset: str) -> None:
        """Watch a quiet inbox again (the caller then has it scanned once: files came meanwhile)."""
        layout = DatasetLayout(self.root / dataset)
        self._resume(layout.inbox, self._inbox_handler(layout))

    def _pause(self, folder: Path) -> None:
        """Drop ``folder``'s watch, and keep :meth:`sync` from making it again, until :meth:`_resume`."""
        with self._lock:
            self._paused.add(folder)
            if folder in self._watches:
                self._unschedule(folder)

    def _resume(self, folder: Path, handler: _SafeHandler) -> None:
        with self._lock:
            self._paused.discard(folder)
            self._schedule(folder, handler, recursive=True)

    def _inbox_handler(self, layout: DatasetLayout) -> _InboxHandler:
        return _InboxHandler(layout, self.sink, self.ignore, self.busy_rate)

    def pause_sorted(self, dataset: str, since: float) -> None:
        """Stop watching a ``Dataset/`` the placer is filling (its events dropped since ``since``,
        epoch seconds) until :meth:`still_sorted` finds it still."""
        with self._lock:
            self._filling[dataset] = ((), time.monotonic(), since)
            self._pause(DatasetLayout(self.root / dataset).sorted)

    def still_sorted(self, quiet: float = 1.0) -> list[tuple[str, float]]:
        """The paused ``Dataset/`` folders none of whose class folders changed for ``quiet`` seconds,
        each with the time its events were dropped from.

        A file moved into a class folder changes that folder's modification time, so this reads the
        times of ``Dataset/`` and the folders in it (a few dozen ``stat``s, whatever the files). The
        ones returned are no longer tracked here: the caller resumes them (:meth:`resume_sorted`).
        """
        now, found = time.monotonic(), []
        with self._lock:
            for dataset, (seen, changed, since) in list(self._filling.items()):
                times = _folder_times(DatasetLayout(self.root / dataset).sorted)
                if times != seen:
                    self._filling[dataset] = (times, now, since)
                elif now - changed >= quiet:
                    del self._filling[dataset]
                    found.append((dataset, since))
        return found

    def keep_paused(self, old: Watcher) -> None:
        """Carry ``old``'s paused ``Dataset/`` folders over (a reload replaces the watcher): each stays
        unwatched until :meth:`still_sorted` finds it still, and keeps the time its events were
        dropped from, so the look after it still covers a person's moves made meanwhile."""
        with old._lock:
            filling = dict(old._filling)
        with self._lock:
            for dataset, (_, changed, since) in filling.items():
                self._filling[dataset] = ((), changed, since)
                self._pause(DatasetLayout(self.root / dataset).sorted)

    def resume_sorted(self, dataset: str) -> None:
        """Watch a still ``Dataset/`` again (the caller has what arrived meanwhile looked at)."""
        layout = DatasetLayout(self.root / dataset)
        with self._lock:
            self._filling.pop(dataset, None)
            self._resume(layout.sorted, self._sorted_handler(layout))

    def _sorted_handler(self, layout: DatasetLayout) -> _SortedHandler:
        return _SortedHandler(layout.name, self.sink, self.busy_rate)

    def degraded(self) -> dict[str, str]:
        """Per dataset whose events are not (all) watched, why; rescans sort it meanwhile."""
        with self._lock:
            failed = dict(self._failed)
            for emitter in self._observer.emitters:
                group = getattr(emitter, "_inotify", None)
                if failure := getattr(group, "failure", ""):
                    failed[Path(emitter.watch.path)] = failure
        found: dict[str, str] = {}
        for folder, failure in failed.items():
            try:
                dataset = folder.relative_to(self.root).parts[0]
            except (ValueError, IndexError):
                continue  # the root itself: every dataset is looked at by the full rescans
            found.setdefault(dataset, f"{folder.name}/ not watched: {failure}")
        return found

    def watching(self, folder: Path) -> bool:
        """Whether events from ``folder`` are being reported."""
        with self._lock:
            return folder in self._watches

    def watched(self) -> set[Path]:
        """Every folder watched now (each has one emitter thread of watchdog's)."""
        with self._lock:
            return set(self._watches)

    def _schedule(self, folder: Path, handler: _SafeHandler, *, recursive: bool) -> None:
        if folder in self._watches or folder in self._paused or not folder.is_dir() or folder.is_symlink():
            return
        try:
            self._watches[folder] = self._observer.schedule(
                handler, str(folder), recursive=recursive, event_filter=list(handler.events)
            )
        except Exception as exc:  # the inotify watch limit (max_user_watches), or a folder's shape
            failure = f"{type(exc).__name__}: {exc}"
            log.error("watch_failed", folder=str(folder), error=failure, action="rescans")
            self._failed[folder] = failure

    def _unschedule(self, folder: Path) -> None:
        self._failed.pop(folder, None)
        watch = self._watches.pop(folder)
        # watchdog may already have dropped the watch of a deleted folder.
        with contextlib.suppress(KeyError, OSError):
            self._observer.unschedule(watch)
