"""``clipsort sort``: classify everything now sitting in the inboxes, once.

Everything that can fail for a user's reason (unknown dataset, no classes,
no model) fails before the first file moves.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import structlog

from clipsort.classify.targets import Corrected, Target, make_target
from clipsort.config import Settings
from clipsort.decode.images import DecodeLimits
from clipsort.encode.embeddings import Embedder, batch_size_on
from clipsort.errors import DecoderKilled, FileReplaced, NoClassesError
from clipsort.files import scan
from clipsort.ingest.sidecars import pictures_of, split
from clipsort.layout import DatasetLayout
from clipsort.signals import SignalFlag
from clipsort.sort.driver import Classified, Decoders, Driver, PlaceIn, Verdict
from clipsort.sort.pipeline import Delivery, Outcome, Result
from clipsort.sort.placing import PlacingProcess
from clipsort.store.journal import Journal
from clipsort.work import Job, Signature

log = structlog.get_logger()


@dataclass(frozen=True)
class Work:
    """One dataset's target and the inbox files waiting for it."""

    target: Target
    files: list[Path]


def waiting(layouts: Sequence[DatasetLayout], settings: Settings) -> dict[str, list[Path]]:
    """The files in each of ``layouts``' inboxes, by dataset name: what a run sorts.

    Found before the model loads, so that a run with nothing to sort starts no decoding process
    (each takes about half a second of CPU); files that arrive later wait for the next run.
    """
    found = {}
    for layout in layouts:
        files, sidecars = split(
            scan(layout.inbox, settings.ignore_patterns, settings.max_folder_depth), settings.sidecar_suffixes
        )
        found[layout.name] = files  # a sidecar moves with its picture, never on its own
        for path in sidecars:
            if not pictures_of(path, settings.sidecar_suffixes):
                log.info("sidecar_waiting", file=str(path), reason="its picture is not in the inbox")
    return found


def gather(
    layouts: Sequence[DatasetLayout],
    settings: Settings,
    embedder: Embedder,
    *,
    named: bool,
    corrected: Corrected | None = None,
    found: Mapping[str, list[Path]] | None = None,
) -> list[Work]:
    """Targets (with their ``corrected`` examples) and inbox files of ``layouts``.

    Datasets the user ``named`` must be usable; otherwise (all datasets)
    those that have no classes yet are skipped with a warning. The files are
    those ``found`` by :func:`waiting`, else the inboxes are listed now.
    """
    files = waiting(layouts, settings) if found is None else found
    work = []
    for layout in layouts:
        try:
            target = make_target(layout, settings, embedder, corrected=corrected)
        except NoClassesError as exc:
            if named:
                raise
            log.warning("dataset_skipped", dataset=layout.name, reason=str(exc))
            continue
        work.append(Work(target, list(files.get(layout.name, []))))
    if not work:
        raise NoClassesError(f"no dataset under {str(settings.root)!r} has classes to sort into")
    return work


def run(
    work: Sequence[Work],
    settings: Settings,
    embedder: Embedder,
    *,
    journal: Journal | None,
    dry_run: bool,
    on_outcome: Callable[[Outcome], None],
    decoders: Decoders | None = None,
    stop: SignalFlag | None = None,
    placing: PlacingProcess | None = None,
) -> None:
    """Classify and place every gathered file through the batch driver, as the daemon does.

    ``decoders`` (see :func:`decoders_for`) are the caller's, started ahead so that the decoding
    processes start while the model loads; without, the run starts and closes its own. So is
    ``placing`` (:func:`placing_for`), the placing process; without, the run starts its own where
    ``place_in`` asks for one.

    Batches k+1 to k+``decode_ahead`` decode while batch k is encoded and batch
    k-1 is journalled and moved. Every placement is journalled when a ``journal`` is given (not on
    dry runs). The run stops at the first file it cannot place (raising its
    error): the batch after it may have been classified by then, but none of
    its files moves. A failure to classify is raised once the batch being
    placed meanwhile is finished and reported. Once ``stop`` is set (Ctrl-C) no further batch is
    classified: the one handed to the placer is placed whole, the rest stays in the inbox.
    """
    size = embedder.batch_size(settings)
    batches = [  # one dataset's files each
        [job_for(item.target.layout.name, path) for path in item.files[start : start + size]]
        for item in work
        for start in range(0, len(item.files), size)
    ]
    place_in = place_in_for(settings, len(batches))
    driver = Driver(StopAtFirst(on_outcome), journal, dry_run=dry_run, place_in=place_in, placing=placing)
    targets = {item.target.layout.name: item.target for item in work}
    with contextlib.ExitStack() as stack:
        pool = decoders or stack.enter_context(decoders_for(settings, processes=bool(batches)))
        try:
            queued = iter(batches)
            while not driver.stopped and not (stop is not None and stop.is_set()):
                # Keep decode_ahead batches decoding beside the one being classified.
                while driver.wants_more(pool) and (following := next(queued, None)) is not None:
                    driver.decode_ahead(following, pool, embedder, targets)
                if not driver.decoding:
                    break
                driver.classify_next(targets, embedder, settings)
        finally:  # the batch being placed is finished (and reported) whatever happened here
            driver.abandon()  # stopped early: the batches decoded ahead are not classified
            driver.finish()
    if driver.failure is not None:
        raise driver.failure


def decoders_for(settings: Settings, *, processes: bool = True) -> Decoders:
    """The decoding pools a one-shot run uses; processes where configured and ``processes``.

    A worker process takes about half a second of CPU to start (its interpreter and imports), so
    ``clipsort sort`` starts them before it loads the model, and they are ready by the first batch.
    """
    return Decoders.configured(settings, DecodeLimits.from_settings(settings), processes=processes)


def place_in_for(settings: Settings, batches: int) -> PlaceIn:
    """Where a one-shot run of ``batches`` batches places its files: ``place_in``, but in the
    placer thread for a run of one batch or none. A placing process costs a fresh interpreter's
    start (0.3-0.5 s of CPU) to save 0.1-0.15 ms of the classifying interpreter's CPU a file, which
    a batch of 32 (or even 256) files never pays back: a one-batch `sort` of sixteen 12-megapixel
    JPEGs ran at 0.85-0.9 of the thread's rate with one (bench/README.md)."""
    return settings.place_in if batches > 1 else "thread"


def batches_of(found: Mapping[str, Sequence[Path]], settings: Settings) -> int:
    """How many batches :func:`run` makes of the files :func:`waiting` found (one dataset's each),
    at the automatic batch size of the device the model will load on."""
    size = batch_size_on(settings)
    return sum(math.ceil(len(files) / size) for files in found.values())


@contextlib.contextmanager
def placing_for(settings: Settings, *, batches: int, dry_run: bool) -> Iterator[PlacingProcess | None]:
    """The placing process a one-shot run of ``batches`` batches hands them to, started now; None
    where the run places in its own thread (:func:`place_in_for`, a dry run). It opens the state
    folder's journal at its first batch; the run's own is attached to it by the driver, and nothing
    is created before then (a run whose model fails to load leaves no state folder).

    Why now: a placing process is a fresh interpreter (0.3-0.5 s of CPU to start). Started by the
    run, as before, its start fell on the first batch and competed with the decoding for the cores:
    a run of eight 12-megapixel JPEGs took 0.4 s longer on 2 cores (bench/README.md). Started before
    the model loads, as the decoding processes are, it is ready by the first batch. The run's placer
    thread ends it; leaving the block ends it if the run never started.
    """
    if place_in_for(settings, batches) != "process" or dry_run:
        yield None
        return
    placing = PlacingProcess(None, folder=settings.state_path)
    placing.start()
    try:
        yield placing
    finally:
        placing.close()


@dataclass(frozen=True)
class StopAtFirst:
    """``clipsort sort``'s policy: report each file in order, stop at the first it cannot place."""

    on_outcome: Callable[[Outcome], None]

    falls_back: ClassVar[bool] = False  # an inference error ends the run, with the error

    def deliverable(self, job: Job, verdict: Verdict, settings: Settings) -> bool:
        if isinstance(verdict, DecoderKilled):  # never the file's fault: it stays for the next run
            log.warning("decoder_killed", file=str(job.path), reason=str(verdict), action="left in the inbox")
            return False
        return True  # nothing is awaited: a file still being written is rejected now

    def still_there(self, delivery: Delivery, settings: Settings) -> bool:
        return True

    def after_placing(self, results: Sequence[tuple[Job, Result]], settings: Settings) -> None:
        for job, result in results:
            if isinstance(result, FileNotFoundError) and not job.path.exists():
                # Gone since the scan (a person, or another program, moved it): nothing to place.
                log.warning("file_vanished", file=str(job.path), error=str(result))
                continue
            if isinstance(result, FileReplaced):
                continue  # logged by the mover; the new file waits in the inbox for the next run
            if not isinstance(result, Outcome):
                raise result
            self.on_outcome(result)

    def unplaced(self, job: Job) -> None:
        return None  # it simply stays in the inbox for the next run

    def placing_failed(self, batch: Classified, error: Exception) -> bool:
        return True


def job_for(dataset: str, path: Path) -> Job:
    """A job for a file found by a one-shot scan (no settling: it is read now)."""
    signature = Signature.of(path) or Signature(0, 0, 0)
    return Job(dataset, path, signature, time.monotonic())
