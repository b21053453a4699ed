"""One batch of files from pictures to placed files; shared by ``sort`` and the daemon.

A batch may mix datasets: every dataset shares the one resident model, so
all pictures are encoded together and only the (cheap) scoring is done per
dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
from PIL import Image

from daemon.calibration import Calibration
from daemon.classifiers import Classifier, Decision, decide
from daemon.classifiers.finetuned import FinetunedClassifier
from daemon.classindex import ClassIndex
from daemon.config import DatasetSettings
from daemon.embeddings import Embedder
from daemon.encoder import Encoder
from daemon.errors import ImageRejected
from daemon.layout import DatasetLayout
from daemon.mover import place, preview
from daemon.readiness import Job
from daemon.review import ReviewPolicy

log = structlog.get_logger()

Status = Literal["sorted", "review", "rejected"]


@dataclass(frozen=True)
class Target:
    """What one dataset's files are classified with and where they go."""

    layout: DatasetLayout
    settings: DatasetSettings
    index: ClassIndex
    classifier: Classifier | FinetunedClassifier
    review: ReviewPolicy = field(default_factory=ReviewPolicy)
    calibration: Calibration | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        """The folders files can be sorted into: the checkpoint's classes in finetuned mode."""
        if isinstance(self.classifier, FinetunedClassifier):
            return self.classifier.classes
        return self.index.classes


@dataclass(frozen=True)
class Outcome:
    """What happened to one file: the unit of work of the canonical log line."""

    dataset: str
    source: Path
    status: Status
    destination: Path
    decision: Decision | None = None
    reason: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form printed by ``--json`` and logged."""
        data: dict[str, Any] = {
            "dataset": self.dataset,
            "file": str(self.source),
            "status": self.status,
            "destination": str(self.destination),
        }
        if self.decision is not None:
            data |= {
                "class": self.decision.label,
                "score": round(self.decision.score, 6),
                "runner_up": self.decision.runner_up,
                "runner_up_score": None
                if self.decision.runner_up_score is None
                else round(self.decision.runner_up_score, 6),
                "margin": round(self.decision.margin, 6),
                "similarity": round(self.decision.similarity, 6),
                "top3": [list(pair) for pair in self.decision.top],
            }
        if self.reason is not None:
            data["reason"] = self.reason
        return data | dict(self.extra)


Picture = Image.Image | ImageRejected


def _decode(embedder: Embedder, path: Path) -> Picture:
    try:
        return embedder.decode(path)
    except ImageRejected as exc:
        return exc


def start_decoding(jobs: Sequence[Job], embedder: Embedder, pool: Executor) -> list[Future[Picture]]:
    """Decode in the pool, so the next batch decodes while the model runs this one."""
    return [pool.submit(_decode, embedder, job.path) for job in jobs]


def classify(
    jobs: Sequence[Job], pictures: Sequence[Picture], targets: Mapping[str, Target], encoder: Encoder
) -> list[Decision | ImageRejected]:
    """A decision, or the reason it cannot be read, for each job in order.

    Every job's dataset must be in ``targets``.
    """
    readable = [i for i, picture in enumerate(pictures) if isinstance(picture, Image.Image)]
    by_dataset: dict[str, list[int]] = {}
    for i in readable:
        by_dataset.setdefault(jobs[i].dataset, []).append(i)
    # One CLIP forward pass for every dataset that classifies CLIP vectors.
    clip_jobs = [
        i for i in readable if not isinstance(targets[jobs[i].dataset].classifier, FinetunedClassifier)
    ]
    vectors = encoder.encode_images([pictures[i] for i in clip_jobs])  # type: ignore[misc]
    row_of = {job: row for row, job in enumerate(clip_jobs)}
    decided: dict[int, Decision] = {}
    for dataset, members in by_dataset.items():
        classifier = targets[dataset].classifier
        if isinstance(classifier, FinetunedClassifier):
            scores = classifier.picture_scores([pictures[i] for i in members])  # type: ignore[misc]
            decisions = decide(scores, classifier.classes, 1.0)  # its logits are already scaled
        else:
            index = targets[dataset].index
            scores = classifier.scores(vectors[np.asarray([row_of[i] for i in members])], index)
            decisions = decide(scores, index.classes, encoder.logit_scale)
        decided.update(zip(members, decisions, strict=True))
    return [
        picture if isinstance(picture, ImageRejected) else decided[i] for i, picture in enumerate(pictures)
    ]


def deliver(
    job: Job,
    verdict: Decision | ImageRejected,
    target: Target,
    *,
    model: str,
    dry_run: bool,
) -> Outcome:
    """Place one classified file (or preview it on a dry run) and log the outcome."""
    layout = target.layout
    status: Status
    decision = verdict if isinstance(verdict, Decision) else None
    if isinstance(verdict, ImageRejected):
        folder, status, reason = layout.rejected, "rejected", str(verdict)
    elif held := target.review.hold_back(verdict):
        folder, status, reason = layout.review, "review", held
    else:
        folder, status, reason = layout.class_dir(verdict.label), "sorted", None
    if dry_run:
        destination = preview(job.path, folder)
    else:
        keep = target.settings.action == "copy"
        destination = place(job.path, folder, boundary=layout.root, keep_source=keep)
    outcome = Outcome(
        dataset=job.dataset,
        source=job.path,
        status=status,
        destination=destination,
        decision=decision,
        reason=reason,
        extra={"mode": target.classifier.name, "model": model, "dry_run": dry_run},
    )
    (log.info if status == "sorted" else log.warning)(status, **outcome.as_dict())
    return outcome
