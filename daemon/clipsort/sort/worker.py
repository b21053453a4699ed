"""The inference worker: the one thread that owns the model.

It takes micro-batches from the fair queue (up to ``batch_size`` files, or
whatever arrived within ``max_batch_delay_ms`` of the first) and runs them
through the batch driver (:mod:`clipsort.sort.driver`, shared with ``clipsort
sort``): batch k+1 decodes while the model encodes batch k, and the placer
thread journals and moves batch k-1 meanwhile. Class-index rebuilds and model
swaps also run here, between batches, so the model is never used by two
threads and no batch mixes two class indexes or two models.

The daemon's policy, :class:`RetryAndGoOn`: nothing is ever dropped. A file
that is still arriving, changed after it was classified, or hit a transient
failure (disk full, inference error) is put back with a delay; the file
itself stays in the inbox until it is placed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Protocol

import structlog

from clipsort.classify.catalog import Catalog
from clipsort.config import Mailbox, Settings
from clipsort.encode.embeddings import Embedder
from clipsort.errors import ClipsortError, DecoderKilled, FileReplaced, ImageIncomplete, JournalError
from clipsort.ingest.intake import Intake
from clipsort.ingest.workqueue import FairQueue
from clipsort.sort.driver import Classified, Decoders, Driver, Verdict
from clipsort.sort.pipeline import Delivery, Outcome, Result
from clipsort.store.journal import Journal
from clipsort.work import Job, age, is_unchanged

log = structlog.get_logger()

IDLE_WAIT = 0.2  # how often an idle worker looks at due class rebuilds
RETRY_FIRST = 0.5
RETRY_MAX = 30.0
CHECKPOINT_POLL = 1.0  # seconds between looks at the fine-tuned checkpoints' pointers


class Recorder(Protocol):
    """What the worker reports as it goes (the service's metrics are one)."""

    def record(self, done: Sequence[tuple[Outcome, float]]) -> None:
        """A batch's files done, each with the seconds since it arrived."""

    def batch(self, size: int) -> None:
        """A batch of ``size`` files is being classified."""

    def error(self, kind: str, message: str) -> None:
        """A failure that will be retried."""


# Told of each batch's files filed, as (dataset, where, inode): the learner (see Learner.placed).
OnPlaced = Callable[[Sequence[tuple[str, Path, int]]], None]


class Worker:
    """Micro-batching inference over all datasets with one resident model."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        catalog: Catalog,
        intake: Intake,
        work: FairQueue,
        metrics: Recorder,
        journal: Journal,
        on_placed: OnPlaced | None = None,
    ) -> None:
        self._settings = Mailbox(settings)
        self.embedder = embedder
        self._catalog = catalog
        self._intake = intake
        self._work = work
        self._metrics = metrics
        self._journal = journal
        self._pool = Decoders.configured(settings, embedder.limits)
        self._stop = threading.Event()
        self._swap: Embedder | None = None
        self.policy = RetryAndGoOn(intake, metrics, on_placed)
        self.driver = Driver(self.policy, journal, place_in=settings.place_in)
        self.heartbeat = time.monotonic()
        self._checked_checkpoints = 0.0
        self._checked_corrections = 0.0
        self._corrections: dict[str, int] | None = None  # per dataset, as last seen
        self.thread = threading.Thread(target=self._run, name="clipsort-worker", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float) -> bool:
        """Finish the batch in flight and place it, hand back the prefetched one; True if done in time."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self.thread.join(timeout)
        placed = self.driver.finish(max(0.0, deadline - time.monotonic()))
        self._pool.close(wait=False)
        return not self.thread.is_alive() and placed

    @property
    def settings(self) -> Settings:
        """The settings of the batch at hand (taken between batches, on the worker's thread)."""
        return self._settings.current

    def reconfigure(self, settings: Settings) -> None:
        """Hand over reloaded settings: batch sizes and delays, decode workers and the catalog's take
        them from the next batch (the worker's thread applies them between two batches)."""
        self._settings.post(settings)

    def replace_embedder(self, embedder: Embedder) -> None:
        """Use a new model from the next batch on (after every class index is rebuilt with it).

        Its decode limits apply from the same batch: the worker's thread sets them on its decoders
        when it takes the swap.
        """
        self._swap = embedder

    def _run(self) -> None:
        driver = self.driver
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            held: list[Job] = []  # taken from the queue and in no batch decoding: ours to give back
            try:
                self._maintain()
                # Files waiting: start decoding them (up to decode_ahead batches) before the oldest is
                # classified, so the decoders have work while it is. None waiting: classify at once.
                held = jobs = self._work.take(
                    self.embedder.batch_size(self.settings),
                    wait=0.0 if driver.decoding else IDLE_WAIT,
                    linger=0.0 if driver.decoding else self.settings.max_batch_delay_ms / 1000,
                )
                targets = self._catalog.snapshot()
                if jobs:
                    driver.decode_ahead(jobs, self._pool, self.embedder, targets)
                held = []
                if driver.decoding and (not jobs or not driver.wants_more(self._pool)):
                    held = driver.next_jobs()
                    classified = driver.classify_next(targets, self.embedder, self.settings)
                    held = []
                    if classified:
                        self._metrics.batch(classified)
            except Exception as exc:  # never let the worker die: systemd's watchdog would restart us
                log.exception("worker_failed", error=str(exc), files=len(held))
                # A raising classify handed none of them to the placer: they wait and are tried
                # again, or readiness would hold them as in flight until the daemon restarts.
                self.policy.failed(held, "worker", str(exc))
                time.sleep(IDLE_WAIT)
        for job in driver.abandon():  # decoded but not classified: it stays in the inbox
            self._intake.release(job)

    def _maintain(self) -> None:
        posted = self._settings.take()
        if posted is not None:
            self._catalog.reconfigure(posted)  # the catalog is rebuilt on this thread only
        if self._swap is not None:
            self.embedder, self._swap = self._swap, None
            self._catalog.rebuild_all(self.embedder)
        # Set by replace_embedder already for a new model; a reload may change the timeout.
        self._pool.set_limits(self.embedder.limits, self.settings.decode_timeout_seconds)
        if not self._pool.suits(self.settings):
            # A pool cannot change its size: a new one takes the next batch, and the old one
            # decodes what it was given (the batches decoded ahead) before its workers end.
            old, self._pool = self._pool, Decoders.configured(self.settings, self.embedder.limits)
            old.close(wait=False, cancel=False)
            log.info(
                "decode_workers_changed",
                workers=self._pool.workers,
                ahead=self._pool.ahead,
                processes=self._pool.processes is not None,
            )
        now = time.monotonic()
        if now - self._checked_checkpoints >= CHECKPOINT_POLL:
            self._checked_checkpoints = now
            self._catalog.watch_checkpoints()
        if now - self._checked_corrections >= CHECKPOINT_POLL:
            self._checked_corrections = now
            self._follow_corrections()
        self._catalog.rebuild_due(self.embedder)

    def _follow_corrections(self) -> None:
        """Rebuild each dataset whose corrections changed (by the learner or the CLI) since the last look.

        The journal is the one source: the poll interval already groups a burst
        of corrections into one rebuild, so it runs at the next batch boundary.
        """
        versions = self._journal.corrections_versions()
        if self._corrections is not None:
            known = self._catalog.snapshot()
            changed = [name for name in known if versions.get(name) != self._corrections.get(name)]
            if changed:
                self._catalog.request(changed, 0.0)
        self._corrections = versions


class RetryAndGoOn:
    """The daemon's policy: a file that cannot be placed now waits in the inbox and is tried again."""

    def __init__(self, intake: Intake, metrics: Recorder, on_placed: OnPlaced | None = None) -> None:
        self._intake = intake
        self._metrics = metrics
        self._on_placed = on_placed
        self._retries: dict[str, tuple[float, float]] = {}  # cause -> (delay, when it last doubled)
        self._blocked = False  # files wait because the journal cannot be written (under _lock)
        self._lock = threading.Lock()  # the model's and the placer's thread both back off
        self._waiting: set[Path] = set()  # files waited on until complete (their `waiting` line said)

    falls_back: ClassVar[bool] = True  # smaller batches, then the CPU; a file that still fails waits

    def deliverable(self, job: Job, verdict: Verdict, settings: Settings) -> bool:
        if verdict is None:  # even the CPU failed: the file waits and is tried again
            self._metrics.error("inference", "inference failed")
            self._intake.retry(job, self._backoff("inference"))
            return False
        if isinstance(verdict, DecoderKilled):  # never the file's fault: it waits, however long
            log.warning("decoder_killed", file=str(job.path), reason=str(verdict), action="retrying later")
            self._metrics.error("decoder_killed", f"decoding processes killed from outside: {verdict}")
            self._intake.retry(job, self._backoff("decoder_killed"))
            return False
        if isinstance(verdict, ImageIncomplete) and age(job) < settings.max_wait_seconds:
            with self._lock:
                first = job.path not in self._waiting
                self._waiting.add(job.path)
            if first:  # once, as the wait starts: a file silent for minutes before its verdict puzzles
                log.info(
                    "waiting",
                    file=str(job.path),
                    reason=str(verdict),
                    until=f"complete, or rejected after {settings.max_wait_seconds:g} s",
                )
            self._intake.retry(job, self._recheck_delay(job, settings))  # not ready is not bad
            return False
        self._done_waiting(job)
        return True

    def _done_waiting(self, job: Job) -> None:
        with self._lock:
            self._waiting.discard(job.path)

    def still_there(self, delivery: Delivery, settings: Settings) -> bool:
        if is_unchanged(delivery.job):
            return True
        log.debug("not_ready", file=str(delivery.job.path), reason="changed since it was read")
        self._intake.retry(delivery.job, settings.settle_seconds)
        return False

    def after_placing(self, results: Sequence[tuple[Job, Result]], settings: Settings) -> None:
        # Per batch: the files placed release their paths under one lock and count in one call.
        placed = [(job, result) for job, result in results if isinstance(result, Outcome)]
        if placed:
            with self._lock:
                was_blocked, self._blocked = self._blocked, False
                self._retries.clear()
            if was_blocked:  # a retry found the journal writable before the supervisor's probe did
                log.info("state_writable_again", noticed_by="a placed file")
                for dataset in sorted({job.dataset for job, _ in placed}):
                    self._intake.expedite(dataset)
            self._intake.release(*(job for job, _ in placed))
            self._metrics.record([(outcome, age(job)) for job, outcome in placed])
            if self._on_placed is not None:  # a rename keeps the inode the file was read with
                self._on_placed([(job.dataset, out.destination, job.signature.inode) for job, out in placed])
        for job, result in results:
            if not isinstance(result, Outcome):
                self._not_placed(job, result, settings)

    def _not_placed(self, job: Job, result: OSError | ClipsortError, settings: Settings) -> None:
        if isinstance(result, OSError):  # disk full, read-only, permissions: the file stays and is retried
            cause = f"{type(result).__name__}:{result.errno}"
            if cause not in self._retries:  # a read without the lock: at worst one log line more or less
                log.error("move_failed", file=str(job.path), error=str(result))
            self._metrics.error("move", str(result))
            self._intake.retry(job, self._backoff(cause))
        elif isinstance(result, JournalError):  # a full or read-only state folder: nothing moved, all waits
            if "journal" not in self._retries:
                log.error("state_write_failed", file=str(job.path), error=str(result), action="retrying")
            with self._lock:
                self._blocked = True
            self._metrics.error("journal", str(result))
            self._intake.retry(job, self._backoff("journal"))
        elif isinstance(result, FileReplaced):  # other bytes under its name: they get a decision of their own
            self._metrics.error("replaced", str(result))
            self._intake.retry(job, settings.settle_seconds)
        else:  # e.g. a class folder that is a symlink out of the dataset: never written through
            log.error("unsafe_destination", file=str(job.path), error=str(result))
            self._metrics.error("unsafe_destination", str(result))
            self._intake.release(job)

    def failed(self, jobs: Sequence[Job], cause: str, message: str) -> None:
        """A failure outside any one file (a bug in the loop): ``jobs`` wait and are tried again."""
        self._metrics.error(cause, message)
        for job in jobs:
            self._intake.retry(job, self._backoff(cause))

    def unplaced(self, job: Job) -> None:
        self._done_waiting(job)
        self._intake.release(job)  # it stays in the inbox; the next scan offers it again

    def placing_failed(self, batch: Classified, error: Exception) -> bool:
        # A bug here must not end placing for good: the batch's files stay in the inbox.
        log.error("placing_failed", error=str(error), exc_info=error)
        self._metrics.error("placing", str(error))
        for item in batch.deliveries:
            self._intake.release(item.job)
        return False

    def reset(self) -> None:
        """Forget the back-off: the next failure waits the first delay again."""
        with self._lock:
            self._retries.clear()

    @property
    def state_blocked(self) -> bool:
        """Whether files wait because the journal could not be written (the supervisor probes it)."""
        with self._lock:
            return self._blocked

    def unblock(self) -> bool:
        """The journal takes writes again: forget the block and the back-off; whether it was blocked."""
        with self._lock:
            blocked, self._blocked = self._blocked, False
            self._retries.clear()
        return blocked

    def _recheck_delay(self, job: Job, settings: Settings) -> float:
        """Back-off for a file still arriving: a quarter of its age, from the settle time up to RETRY_MAX."""
        return min(RETRY_MAX, max(settings.settle_seconds, age(job) / 4))

    def _backoff(self, cause: str) -> float:
        """Doubling delay per failure cause, reset by the next success.

        It doubles once per round of retries, not once per failed file: a full
        disk met by a batch of 32 files must not push the next look 32 doublings away.
        """
        now = time.monotonic()
        with self._lock:
            delay, doubled = self._retries.get(cause, (RETRY_FIRST / 2, -RETRY_MAX))
            grew = now - doubled >= delay
            if grew:
                delay, doubled = min(RETRY_MAX, delay * 2), now
                self._retries[cause] = (delay, doubled)
        if grew:  # a few lines per fault, at debug level: what an operator (or a test) can wait on
            log.debug("retry_backoff", cause=cause, seconds=delay)
        return delay
