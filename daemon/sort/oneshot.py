"""``clipsort sort``: classify everything now sitting in the inboxes, once.

Everything that can fail for a user's reason (unknown dataset, no classes,
no model) fails before the first file moves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog

from daemon.classify.targets import Corrected, Target, make_target
from daemon.config import Settings
from daemon.encode.decoding import DecodePool, collect
from daemon.encode.embeddings import Embedder
from daemon.errors import NoClassesError
from daemon.ingest.readiness import Job, Signature
from daemon.ingest.scanner import scan
from daemon.layout import DatasetLayout
from daemon.sort.pipeline import Delivery, Outcome, Result, classify, deliver
from daemon.store.journal import Journal

log = structlog.get_logger()


@dataclass(frozen=True)
class Work:
    """One dataset's target and the inbox files waiting for it."""

    target: Target
    files: list[Path]


def gather(
    layouts: Sequence[DatasetLayout],
    settings: Settings,
    embedder: Embedder,
    *,
    named: bool,
    corrected: Corrected | None = None,
) -> list[Work]:
    """Targets (with their ``corrected`` examples) and inbox files of ``layouts``.

    Datasets the user ``named`` must be usable; otherwise (all datasets)
    those that have no classes yet are skipped with a warning.
    """
    work = []
    for layout in layouts:
        try:
            target = make_target(layout, settings, embedder, corrected=corrected)
        except NoClassesError as exc:
            if named:
                raise
            log.warning("dataset_skipped", dataset=layout.name, reason=str(exc))
            continue
        work.append(Work(target, list(scan(layout.inbox, settings.ignore_patterns))))
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
) -> None:
    """Classify and place every gathered file; batch k+1 decodes while batch k is encoded.

    A placer thread journals and moves batch k while batch k+1 is encoded,
    as in the daemon. Every placement is journalled when a ``journal`` is
    given (not on dry runs). The run stops at the first file it cannot place:
    the batch after it has been classified by then, but none of its files moves.
    """
    size = settings.batch_size
    batches = [
        (item.target, [job_for(item.target.layout.name, path) for path in item.files[start : start + size]])
        for item in work
        for start in range(0, len(item.files), size)
    ]
    side, crop = embedder.decoding()
    with (
        DecodePool(embedder.limits, settings.decode_workers) as pool,
        ThreadPoolExecutor(1, thread_name_prefix="clipsort-placer") as placer,
    ):
        upcoming = pool.start([job.path for job in batches[0][1]], side, crop) if batches else []
        placing: Future[list[Result]] | None = None
        try:
            for k, (target, jobs) in enumerate(batches):
                current = upcoming
                if k + 1 < len(batches):
                    upcoming = pool.start([job.path for job in batches[k + 1][1]], side, crop)
                decoded = collect(current, settings.decode_timeout_seconds)
                targets = {target.layout.name: target}
                verdicts = classify(jobs, decoded, targets, embedder.encoder, cache=embedder.cache)
                batch = [
                    Delivery(job, verdict, read, target)
                    for job, verdict, read in zip(jobs, verdicts, decoded, strict=True)
                ]
                if placing is not None:  # the last batch placed cleanly before this one may move
                    done, placing = placing, None
                    _report(done.result(), on_outcome)
                placing = placer.submit(
                    deliver, batch, encoder=embedder.encoder, journal=journal, dry_run=dry_run
                )
        finally:  # the last batch, or the one placed while the next failed to classify
            if placing is not None:
                _report(placing.result(), on_outcome)


def _report(results: Sequence[Result], on_outcome: Callable[[Outcome], None]) -> None:
    """Each outcome in order; one-shot sorting stops at the first file it could not place."""
    for result in results:
        if not isinstance(result, Outcome):
            raise result
        on_outcome(result)


def job_for(dataset: str, path: Path) -> Job:
    """A job for a file found by a one-shot scan (no settling: it is read now)."""
    signature = Signature.of(path) or Signature(0, 0, 0)
    return Job(dataset, path, signature, time.monotonic())
