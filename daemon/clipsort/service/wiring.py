"""``clipsort run``: the long-running daemon, wiring the parts together.

Data flows one way: watcher (hints) and rescans (truth) -> intake/readiness
-> fair queue -> worker (model, class indexes) -> mover -> log and metrics.
The main thread only supervises: signals, observer health, the status file,
systemd notifications. It never runs the model itself (see :func:`on_own_thread`).

Signals: SIGTERM/SIGINT stop taking new work, finish the batch in flight and
exit 0 within ``shutdown_seconds``; files not yet moved simply stay in the
inbox. SIGHUP reloads the configuration (and the model if it changed); a bad
new configuration is logged and the old one stays in force.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import TypeVar

import structlog

from clipsort import __version__
from clipsort.classify.catalog import Catalog
from clipsort.classify.modes import needs_clip
from clipsort.config import Settings, find_config_file, load_settings
from clipsort.decode.decodeprocesses import reclaim_slots
from clipsort.encode.embedcache import EMBEDDINGS_DB, EmbeddingCache
from clipsort.encode.embeddings import Embedder
from clipsort.encode.encoder import Encoder, model_cpu_seconds, resolve_device
from clipsort.encode.factory import make_embedder, make_encoder
from clipsort.errors import ConfigError
from clipsort.heap import Frozen, freeze_survivors, give_back_freed_memory
from clipsort.ingest.intake import Intake
from clipsort.ingest.watcher import Watcher
from clipsort.ingest.workqueue import FairQueue
from clipsort.layout import DatasetLayout, discover, require_data_root, warn_unknown_tables
from clipsort.learn.corrections import corrected_from
from clipsort.logs import configure_logging
from clipsort.service.housekeeping import sweep
from clipsort.service.learner import Learner
from clipsort.service.metrics import Metrics
from clipsort.service.reactions import (
    ClassesChanged,
    DatasetsFound,
    DestinationChanged,
    FiledRescan,
    FoldersChanged,
    Hinted,
    InboxBusy,
    InboxQuiet,
    Placed,
    Reactions,
    RescanAsked,
    SortedBusy,
    SortedStill,
    WatchEvent,
)
from clipsort.service.sdnotify import notify, reloading, watchdog_interval
from clipsort.service.status import DatasetStatus, Status, write_status
from clipsort.signals import SignalFlag
from clipsort.sort.worker import Worker
from clipsort.store.instance import InstanceLock, refuse_if_served
from clipsort.store.journal import Journal
from clipsort.store.mover import make_state_dir
from clipsort.store.recovery import recover
from clipsort.work import ALL_DATASETS

log = structlog.get_logger()
NO_CLIP = "none (every dataset is classified by its checkpoint)"
# Opened or bound once at start (the journal and caches, the metrics socket): a reload that changes
# them logs `reload_needs_restart` and keeps the old values. Every other setting reaches its owner.
RESTART_ONLY = ("state_dir", "metrics_port", "metrics_address")
WATCHER_SETTINGS = (
    "root",
    "observer",
    "polling_seconds",
    "ignore_patterns",
    "max_folder_depth",
    "busy_events_per_second",
)

HEALTH_TICK = 0.5
REACTION_WAIT = 5.0  # the intake's longest wait for the datasets it found to be watched
T = TypeVar("T")


def on_own_thread(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` on a thread that ends when it returns; its result or its exception.

    Why: PyTorch's CPU build runs operators on GNU OpenMP, which keeps a pool of
    threads for every thread that has run a parallel operator, for as long as
    that thread lives. Once a process holds more such threads than CPUs,
    libgomp stops spinning at its barriers and sleeps instead, and every
    operator then pays for waking its threads. With the main thread's pool
    alive beside the worker's (the model was loaded and the class indexes first
    built on the main thread), the daemon sorted 640x480 JPEGs at a median 80
    images/s instead of 96 on 2 CPUs (four alternating runs). A thread that ends
    takes its pool with it, so loading the model and the first encoding run on
    threads of their own, and the worker is the one long-lived thread that
    runs the model.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="clipsort-model") as pool:
        return pool.submit(function, *args).result()


def check_daemon_settings(settings: Settings) -> None:
    """Options the daemon cannot honour."""
    names = ["(global)", *settings.datasets]
    copying = [name for name in names if settings.for_dataset(name).action == "copy"]
    if copying:
        raise ConfigError(
            f'action = "copy" is for one-shot `clipsort sort` only ({", ".join(copying)}): '
            "the daemon must empty the inbox, so it moves files"
        )


class Service:
    """The running daemon: :meth:`start` it, :meth:`serve` until asked to stop, :meth:`stop` it.

    Constructing one only checks the settings: :meth:`start` binds the metrics port (before the
    slow model load, so a taken port fails at once), loads the model, opens the state folder and
    starts every thread. ``docs/explanation/runtime.md`` draws the threads, queues and locks.
    """

    encoder: Encoder | None
    lock: InstanceLock
    cache: EmbeddingCache
    journal: Journal
    embedder: Embedder
    work: FairQueue
    catalog: Catalog
    learner: Learner
    intake: Intake
    watcher: Watcher
    worker: Worker

    def __init__(self, settings: Settings, config_file: Path | None, flags: dict[str, object]) -> None:
        check_daemon_settings(settings)
        self.settings = settings  # the main thread's snapshot; components get theirs by reconfigure
        self.config_file = config_file
        self.flags = flags  # command-line values outrank the file on every reload too
        self.started = time.time()
        self.state_bytes = 0
        self._status_failure = ""  # the last error writing status.json, logged once
        self._frozen: Frozen | None = None  # start()'s freeze, until the first housekeeping round reports it
        self.metrics = Metrics()
        self.metrics.model_cpu.set_function(model_cpu_seconds)
        self.reactions = Reactions(self._react)
        self._stop = SignalFlag()  # set by signal handlers: see clipsort.signals on why not an Event
        self._reload = SignalFlag()
        self._known: set[str] = set()
        self._learning: set[Path] = set()
        self._running = False

    def start(self) -> None:
        """Bind the metrics port, load the model, open the state, start every thread; then READY=1."""
        settings = self.settings
        if settings.metrics_port is not None:  # first: a taken port fails before the model loads
            self.metrics.serve(settings.metrics_address, settings.metrics_port)
        refuse_if_served(settings.state_path, settings.root, "run")  # before the slow model load
        # The model before the state folder: a daemon that cannot start leaves no state folder behind.
        # None when every dataset is fine-tuned; a reload that asks for a CLIP mode loads it then.
        self.encoder = on_own_thread(make_encoder, settings) if needs_clip(settings) else None
        make_state_dir(settings.state_path)
        self.lock = InstanceLock(settings.state_path)
        self.lock.acquire()  # held until the process ends: one daemon per state folder
        self.cache = EmbeddingCache(settings.state_path / EMBEDDINGS_DB)
        self.journal = Journal(settings.state_path)
        self.embedder = make_embedder(settings, self.encoder, self.cache)
        self.work = FairQueue()
        self.catalog = Catalog(
            settings,
            on_available=lambda name: self.reactions.put(RescanAsked(name)),
            corrected=corrected_from(self.journal),
        )
        self.learner = Learner(settings, self.journal, self.embedder)
        self.intake = Intake(
            settings,
            self.catalog,
            self.work,
            on_datasets=self._report_datasets,
            on_quiet=lambda dataset: self.reactions.put(InboxQuiet(dataset)),
        )
        self.watcher = self._new_watcher(settings)
        self.worker = Worker(
            settings,
            self.embedder,
            self.catalog,
            self.intake,
            self.work,
            self.metrics,
            self.journal,
            on_placed=self.learner.placed,
        )
        self._running = True
        layouts = discover(settings.root)
        recover(self.journal, layouts)  # before any inbox is scanned
        self._known = {layout.name for layout in layouts}
        self.catalog.request(self._known, 0.0)
        on_own_thread(self.catalog.rebuild_due, self.embedder)  # classes ready before the first file is read
        # Start-up's objects out of the collector's way before the threads that handle files start
        # (only the metrics server's waits on its socket): the full collection (0.1-0.2 s with the
        # GIL held) stalls no file now, where at the first housekeeping round it fell on the first
        # files after READY=1 (bench/README.md, issue 37). That round reports this freeze rather
        # than collecting everything again.
        self._frozen = freeze_survivors()
        self.reactions.start()
        self.watcher.start()
        self.watcher.sync(layouts)
        self.learner.start()
        self.intake.start()  # its first tick scans the backlog
        self.worker.start()
        self._write_status("running")
        notify("READY=1", f"STATUS={self._summary()}")
        log.info("daemon_ready", root=str(settings.root), datasets=sorted(self._known), pid=os.getpid())

    def serve(self) -> int:
        """Supervise until :meth:`request_stop` (or SIGTERM/SIGINT); the process exit code."""
        return self._supervise()

    def request_stop(self) -> None:
        """Ask :meth:`serve` to return (any thread; what the signal handlers do)."""
        self._stop.set()

    def run(self) -> int:
        """The daemon's whole life on the main thread: signals, start, serve, stop; the exit code."""
        self._install_signals()
        self.start()
        try:
            return self.serve()
        finally:
            self.stop()

    def _new_watcher(self, settings: Settings) -> Watcher:
        return Watcher(
            settings.root,
            self.reactions,
            polling=settings.observer == "polling",
            polling_seconds=settings.polling_seconds,
            ignore=settings.ignore_patterns,
            max_depth=settings.max_folder_depth,
            busy_rate=settings.busy_events_per_second,
        )

    # --- reactions: on the reactions thread, one event at a time -------------------
    def _react(self, event: WatchEvent) -> None:
        """What each report from the watcher or a component leads to (see clipsort.service.reactions)."""
        match event:
            case Hinted(hint):
                self.intake.hint(hint)
            case RescanAsked(dataset):
                self.intake.request_rescan(dataset)
            case FoldersChanged():
                self.intake.request_sync()
            case ClassesChanged(dataset):
                self.catalog.request([dataset], self.settings.class_debounce_seconds)
            case Placed(dataset, path):
                self.learner.offer(dataset, path)
            case FiledRescan(dataset):
                self.learner.scan(dataset)
            case DestinationChanged(dataset):
                self.worker.policy.reset()  # a cleared fault is noticed in seconds, not after up to 30 s
                self.intake.expedite(dataset)
            case InboxBusy(dataset, whole):
                self.watcher.pause_inbox(dataset)
                self.intake.list_busy(dataset, whole)
            case InboxQuiet(dataset):
                self.watcher.resume_inbox(dataset)
                self.intake.request_rescan(dataset)  # what came between its last listing and the watch
            case SortedBusy(dataset, since):
                log.info("sorted_busy", dataset=dataset, action="watched again once still")
                self.watcher.pause_sorted(dataset, since)
            case SortedStill(dataset, since):
                self.watcher.resume_sorted(dataset)
                # What arrived while its events were dropped, and before the watch was made again.
                self.learner.scan(dataset, changed_since=since)
                log.info("sorted_still", dataset=dataset, dropped_for_s=round(time.time() - since, 1))
            case DatasetsFound(layouts):
                self._datasets_found(list(layouts))

    def _report_datasets(self, layouts: list[DatasetLayout]) -> None:
        """On the intake's thread: hand the datasets found to the reactions thread, and wait for it.

        Waiting keeps the order the intake relies on: a new folder's watch is made before its
        inbox is listed. The wait is bounded, so a stopping daemon never hangs here.
        """
        found = DatasetsFound(tuple(layouts))
        self.reactions.put(found)
        if not found.handled.wait(REACTION_WAIT):
            log.warning("reaction_slow", event="DatasetsFound", seconds=REACTION_WAIT)

    def _datasets_found(self, layouts: list[DatasetLayout]) -> None:
        self.watcher.sync(layouts)
        for layout in layouts:
            # Corrections made before Dataset/ was watched (or while the daemon was down)
            # sent no event: one scan, after the watch exists, finds them.
            if layout.sorted not in self._learning and self.watcher.watching(layout.sorted):
                self._learning.add(layout.sorted)
                self.learner.scan(layout.name)
        names = {layout.name for layout in layouts}
        new, gone = names - self._known, self._known - names
        if new:
            log.info("datasets_found", datasets=sorted(new))
        # A dataset waiting for classes may just have got a Clases/ folder, whose
        # first files were written before its watch existed: look again.
        self.catalog.request(new | (self.catalog.waiting() & names), self.settings.class_debounce_seconds)
        for name in gone:
            log.info("dataset_removed", dataset=name)
            self.catalog.drop(name)
            self.intake.readiness.forget_dataset(name)
        self._known = names

    # --- supervision: on the main thread ---------------------------------------------
    def _supervise(self) -> int:
        ping_every = watchdog_interval()
        last_status = last_ping = 0.0
        last_sweep = -float("inf")
        while not self._stop.wait(HEALTH_TICK):
            if self._reload.is_set():
                self._reload.clear()
                self._reload_config()
            if not self.watcher.is_alive():
                log.error("observer_died", action="restart")
                try:
                    self.watcher.restart()
                except Exception as exc:
                    log.exception("observer_restart_failed", error=str(exc))
                    return 1  # systemd restarts us (Restart=on-failure)
                self.intake.request_rescan(ALL_DATASETS)
            for dataset, since in self.watcher.still_sorted():
                self.reactions.put(SortedStill(dataset, since))
            if not self.lock.intact() and not self._state_replaced():
                return 1  # another daemon took the state folder: systemd reports the error line
            if self.worker.policy.state_blocked and self.journal.writable():
                self._state_writable_again()
            now = time.monotonic()
            if now - last_sweep >= self.settings.housekeeping_seconds:
                self._housekeep()
                last_sweep = now
            self.metrics.queue_depth.set(len(self.work))
            if now - last_status >= self.settings.status_seconds:
                self._write_status("running")
                notify(f"STATUS={self._summary()}")
                last_status = now
            if ping_every and now - last_ping >= ping_every and self._healthy(ping_every):
                notify("WATCHDOG=1")
                last_ping = now
        return 0

    def _state_replaced(self) -> bool:
        """The state folder (or its lock file) was deleted or replaced: make it again and go on.

        Re-takes the instance lock first, so no second daemon can serve the root beside this one;
        False (the daemon must stop) when another process holds it already. The journal then
        recreates its file with its next write, and the vector cache starts empty.
        """
        state = self.settings.state_path
        try:
            make_state_dir(state)
            lock = InstanceLock(state)
            lock.acquire()
        except (ConfigError, OSError) as exc:
            log.error("state_folder_taken", state=str(state), error=str(exc), action="stopping")
            return False
        self.lock.release()
        self.lock = lock
        try:
            self.cache.reopen()
        except Exception as exc:  # the cache only saves work: without it files are still sorted
            log.error("cache_reopen_failed", error=str(exc))
        log.error(
            "state_folder_recreated",
            state=str(state),
            lost="the journal's history, the vector cache and corrections learned before now",
        )
        self.metrics.error("state", f"state folder {state} was deleted; recreated")
        return True

    def _state_writable_again(self) -> None:
        """The journal takes writes again (space was freed): waiting files go now, not after the back-off."""
        if not self.worker.policy.unblock():
            return  # a file was placed meanwhile, which unblocked it already
        log.info("state_writable_again", noticed_by="the supervisor's probe")
        for name in self._known:
            self.intake.expedite(name)

    def _housekeep(self) -> None:
        """Prune the state to its retention windows: one ``state_swept`` line a round.

        Each round also freezes the heap (:func:`clipsort.heap.freeze_survivors`): what lives by then
        is kept out of later full collections, and a model or checkpoint replaced since the last
        round is collected; and the C allocator's free memory goes back to the kernel
        (:func:`clipsort.heap.give_back_freed_memory`: a burst's batches left it kept for reuse).
        The first, at start, reports the freeze :meth:`start` did before the threads started.
        """
        frozen, self._frozen = self._frozen or freeze_survivors(), None
        given_back = give_back_freed_memory()  # what a burst's batches left free (clipsort.heap)
        try:
            swept = sweep(self.settings, self.cache, self.journal, time.time())
        except Exception as exc:  # a full or broken state folder must not end the daemon; next round retries
            log.error("housekeeping_failed", error=str(exc))
            self.metrics.error("housekeeping", str(exc))
            return
        self.state_bytes = swept.state_bytes
        self.metrics.state_bytes.set(swept.state_bytes)
        heap = {f"heap_{key}": value for key, value in asdict(frozen).items()}
        log.info("state_swept", **asdict(swept), **heap, heap_given_back=given_back)

    def _healthy(self, window: float) -> bool:
        """Pinging systemd's watchdog only while every part lives and the worker makes progress."""
        threads = (self.intake.thread, self.learner.thread, self.worker.thread)
        return (
            self.watcher.is_alive()
            and all(thread.is_alive() for thread in threads)
            and time.monotonic() - self.worker.heartbeat < 2 * window
        )

    def stop(self) -> None:
        """Stop every part in order; a part that raises is logged and the next one still stops.

        A step skipped by an exception would leave the decoding processes' shared memory
        linked, the journal open and the exit code 1 for a stop that lost nothing.
        """
        if not self._running:
            return
        self._running = False
        notify("STOPPING=1")
        log.info("daemon_stopping", queued=len(self.work))
        steps: list[tuple[str, Callable[[], object]]] = [
            ("watcher", self.watcher.stop),
            ("intake", self.intake.stop),  # before the reactions: it may be waiting on one
            ("reactions", self.reactions.stop),
            ("learner", self.learner.stop),
            ("worker", self._stop_worker),
            # The decoding processes' slots: a dispatcher still ending frees them too late for exit.
            ("shared memory", lambda: reclaim_slots(own=True)),
            ("status", lambda: self._write_status("stopped")),
            ("cache", self.cache.close),
            ("journal", self.journal.close),
            ("lock", self.lock.release),
            ("metrics", self.metrics.close),
        ]
        failed = []
        for name, step in steps:
            try:
                step()
            except Exception as exc:
                failed.append(name)
                log.error("shutdown_step_failed", step=name, error=f"{type(exc).__name__}: {exc}")
        log.info("daemon_stopped", failed_steps=failed)

    def _stop_worker(self) -> None:
        if not self.worker.stop(self.settings.shutdown_seconds):
            log.warning("shutdown_timeout", seconds=self.settings.shutdown_seconds)

    def _install_signals(self) -> None:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        def reload(signum: int, frame: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)
        # `kill -USR1 <pid>`: every thread's stack on stderr (the journal under systemd), even with
        # the main thread stuck: what a daemon that stopped answering was doing.
        faulthandler.register(signal.SIGUSR1, all_threads=True)

    def _reload_config(self) -> None:
        reloading()
        try:
            settings = reread(self.config_file, self.flags, self.settings)
            check_daemon_settings(settings)
            self._apply(settings)
        except Exception as exc:  # a bad new config must never take the running daemon down
            log.error("reload_rejected", error=str(exc), kept="previous configuration")
            self.metrics.error("reload", str(exc))
        notify("READY=1", f"STATUS={self._summary()}")

    def _apply(self, settings: Settings) -> None:
        """Hand reloaded settings to the component that owns each one (see RESTART_ONLY for the rest)."""
        old = self.settings
        kept = {key: getattr(old, key) for key in RESTART_ONLY if getattr(settings, key) != getattr(old, key)}
        if kept:  # what was opened or bound at start stays as it was until a restart
            log.warning("reload_needs_restart", settings=sorted(kept), kept="values in force since start")
            settings = settings.model_copy(update=kept)
        changed = sorted(key for key in Settings.model_fields if getattr(settings, key) != getattr(old, key))
        configure_logging(settings.log_format, settings.log_level)
        warn_unknown_tables(settings.datasets, settings.root)
        model = ("model", "device", "text_model", "precision")
        if not needs_clip(settings):
            self.encoder = None  # every dataset is fine-tuned now: the CLIP model's memory goes back
        elif self.encoder is None or any(key in changed for key in model):
            self.encoder = on_own_thread(make_encoder, settings)  # may raise
        embedder = make_embedder(settings, self.encoder, self.cache)  # with the new decode limits
        self.settings = settings
        # Each component takes its snapshot on its own thread, at its next round (the catalog's
        # through the worker, which rebuilds it).
        self.intake.reconfigure(settings)
        self.worker.reconfigure(settings)
        self.learner.reconfigure(settings, embedder)
        if any(key in changed for key in WATCHER_SETTINGS):
            self.watcher.stop()
            stopped, self.watcher = self.watcher, self._new_watcher(settings)
            self.watcher.keep_paused(stopped)  # a Dataset/ being filled is still looked at once still
            self.watcher.start()
        self.worker.replace_embedder(embedder)  # rebuilds every class index, then swaps
        self.intake.request_rescan(ALL_DATASETS)
        log.info("config_reloaded", model=settings.model, changed=changed)

    def _summary(self) -> str:
        sorted_total = sum(n for (_, status), n in self.metrics.outcomes.items() if status == "sorted")
        return f"{sorted_total} sorted, {len(self.work)} queued, {len(self.catalog.snapshot())} datasets"

    def _write_status(self, state: str) -> None:
        targets = self.catalog.snapshot()
        depths = self.work.depths()
        waiting = self.catalog.waiting()
        degraded = self.watcher.degraded()
        datasets = {
            name: DatasetStatus(
                sorted=self.metrics.count(name, "sorted"),
                review=self.metrics.count(name, "review"),
                unknown=self.metrics.held_back(name, "unknown"),
                uncertain=self.metrics.held_back(name, "uncertain"),
                rejected=self.metrics.count(name, "rejected"),
                queued=depths.get(name, 0),
                classes=len(targets[name].classes) if name in targets else 0,
                waiting_for_classes=name in waiting,
                corrections=targets[name].index.correction_counts() if name in targets else {},
                degraded=degraded.get(name),
                unknown_held=targets[name].settings.unknown_held
                if name in targets and targets[name].settings.unknown_gate
                else None,
                gate=targets[name].gate_summary() if name in targets else {},
            )
            for name in sorted(self._known | set(targets))
        }
        self.metrics.corrections({name: counts.corrections for name, counts in datasets.items()})
        status = Status(
            pid=os.getpid(),
            started_at=self.started,
            updated_at=time.time(),
            interval=self.settings.status_seconds,
            state=state,
            device=self.encoder.device if self.encoder else resolve_device(self.settings.device),
            model=self.encoder.name if self.encoder else NO_CLIP,
            version=__version__,
            references_embedded=self.worker.embedder.encoded_references,
            state_bytes=self.state_bytes,
            last_error=self.metrics.last_error,
            datasets=datasets,
        )
        try:
            write_status(self.settings.state_path, status)
        except OSError as exc:
            if str(exc) != self._status_failure:  # once per cause, not every status_seconds
                log.warning("status_write_failed", error=str(exc))
            self._status_failure = str(exc)
        else:
            self._status_failure = ""


STILL_SECONDS = 0.3  # a config file unchanged this long is taken as written whole
STILL_TRIES = 20  # about six seconds of a file that keeps changing, then the reload is refused


def _signature(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    status = path.stat()
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def reread(config_file: Path | None, flags: dict[str, object], current: Settings) -> Settings:
    """The settings a reload applies: a whole config file, or ConfigError (the old settings stay).

    An editor or ``cp`` writing the file leaves it empty or cut short for a moment, and a SIGHUP
    then read a half-written file: parsed as "no root", a daemon once fell back to ``./Data`` and
    sorted an unrelated tree. So the file must be still for ``STILL_SECONDS`` before it is read and
    unchanged after; an empty file is refused; ``root`` must be one the file, the environment or
    a flag names (never a default's) and an existing data root.
    """
    path = find_config_file(config_file)
    for _ in range(STILL_TRIES):
        before = _signature(path)
        time.sleep(STILL_SECONDS)
        if _signature(path) != before:
            continue  # still being written
        text = path.read_text(errors="replace") if path is not None else ""
        settings = load_settings(config_file, flags)
        if _signature(path) == before:
            break
    else:
        raise ConfigError(f"config file {str(path)!r} kept changing for {STILL_SECONDS * STILL_TRIES:g} s")
    if path is not None and not text.strip():
        raise ConfigError(f"config file {str(path)!r} is empty (half-written?)")
    named = flags.get("root") is not None or "CLIPSORT_ROOT" in os.environ
    named = named or (path is not None and "root" in tomllib.loads(text))
    if not named and settings.root != current.root:
        raise ConfigError(
            f"the reloaded config names no root: it would fall back to the default {str(settings.root)!r}"
        )
    if settings.root != current.root:
        require_data_root(settings.root)  # refused before anything is swapped
    return settings


def run_service(settings: Settings, config_file: Path | None, flags: dict[str, object]) -> int:
    """Run the daemon until it is stopped; the process exit code."""
    return Service(settings, config_file, flags).run()
