"""One batch of files from pictures to placed files; shared by ``sort`` and the daemon.

A batch may mix datasets: every dataset shares the one resident model, so
all pictures are encoded together and only the (cheap) scoring is done per
dataset.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import structlog
from PIL import Image

from clipsort.classify.modes import Decision, Inputs
from clipsort.classify.targets import Target
from clipsort.decode.decoding import Decoded
from clipsort.encode.vectors import Vectors
from clipsort.errors import ClipsortError, ImageRejected, JournalError
from clipsort.files import content_hash
from clipsort.ingest.sidecars import by_lower_name, companions_in, renamed
from clipsort.logs import DRY_RUN_EVENTS, log_many
from clipsort.store.journal import Conclusion, Intent, Journal, Placement, State
from clipsort.store.mover import OpenFolders, move_into, preview
from clipsort.work import Job, Signature

if TYPE_CHECKING:  # only annotated here: the model stack loads where a model is made
    from clipsort.encode.encoder import Encoder

log = structlog.get_logger()


@dataclass(frozen=True)
class Outcome:
    """What happened to one file: the unit of work of the canonical log line."""

    dataset: str
    source: Path
    status: Placement
    destination: Path
    decision: Decision | None = None
    reason: str | None = None  # Review/: unknown or uncertain; Rejected/: why the file is unreadable
    detail: str | None = None  # Review/: the numbers behind the reason
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
            held = self.status != "sorted"  # in Review/: the class is a guess, not where it went
            data |= {
                "class": None if held else self.decision.label,
                **({"guess": self.decision.label} if held else {}),
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
        if self.detail is not None:
            data["detail"] = self.detail
        return data | dict(self.extra)


class VectorStore(Protocol):
    """Where :func:`classify` keeps each file's vector under its content hash: the vector cache
    (:class:`~clipsort.encode.embedcache.EmbeddingCache`), or :class:`HeldVectors`."""

    def put(self, model: str, vectors: Mapping[str, Vectors]) -> None: ...


@dataclass
class HeldVectors:
    """A batch's vectors held for the vector cache at ``path``, to be written by the placing process
    just before it places the batch (:mod:`clipsort.sort.placing`).

    Why: writing a batch's vectors is a transaction of random-key inserts, 15-25 us a file of
    CPU in the interpreter that classifies, whose CPU per file caps its rate (issue 37). The
    placing process writes them before the batch's first move, so a file is never in a class
    folder without its vector kept, as when the classifying thread wrote them.
    """

    path: Path
    puts: list[tuple[str, dict[str, Vectors]]] = field(default_factory=list)

    def put(self, model: str, vectors: Mapping[str, Vectors]) -> None:
        self.puts.append((model, dict(vectors)))


def classify(
    jobs: Sequence[Job],
    reads: Sequence[Decoded],
    targets: Mapping[str, Target],
    encoder: Encoder | None,
    *,
    on_cpu: bool = False,
    cache: VectorStore | None = None,
) -> list[Decision | ImageRejected]:
    """A decision, or the reason it cannot be read, for each job's file in order.

    Every job's dataset must be in ``targets``. ``on_cpu`` encodes with the
    CPU copy of the model (see :func:`classify_with_fallback`). The CLIP
    model encodes a file's crop where the decoding threads made one, else its
    picture. With a ``cache``, each vector is kept under the file's content
    hash, so a later correction can use it without encoding it again.
    """
    pictures = [read.picture for read in reads]
    readable = [i for i, picture in enumerate(pictures) if not isinstance(picture, ImageRejected)]
    by_dataset: dict[str, list[int]] = {}
    for i in readable:
        by_dataset.setdefault(jobs[i].dataset, []).append(i)
    # One CLIP forward pass for every dataset whose mode classifies CLIP vectors.
    vector_jobs = [i for i in readable if targets[jobs[i].dataset].by_vectors]
    vectors: Vectors | None = None
    if vector_jobs:
        if encoder is None:
            raise ValueError("a dataset classifies CLIP vectors and no CLIP model is loaded")
        encode = encoder.encode_images_on_cpu if on_cpu else encoder.encode_images
        vectors = encode([pictures[i] if reads[i].crop is None else reads[i].crop for i in vector_jobs])  # type: ignore[misc]
        if cache is not None:
            cache.put(
                encoder.identity,
                {
                    reads[i].sha256: row
                    for i, row in zip(vector_jobs, vectors, strict=True)
                    if reads[i].sha256
                },
            )
    row_of = {job: row for row, job in enumerate(vector_jobs)}
    clip_scale = encoder.logit_scale if encoder is not None else 1.0
    decided: dict[int, Decision] = {}
    for dataset, members in by_dataset.items():
        target = targets[dataset]
        rows = None
        if vectors is not None and target.by_vectors:
            rows = vectors[np.asarray([row_of[i] for i in members])]
        needed = target.classifier.needs == "pictures"
        inputs = Inputs(pictures=[_picture(reads[i]) for i in members] if needed else [], vectors=rows)
        decisions = target.classifier.classify(inputs, target.index, clip_scale)
        if target.gate is not None and rows is not None:
            decisions = target.gate.apply(decisions, rows, target.index)
        decided.update(zip(members, decisions, strict=True))
    return [
        picture if isinstance(picture, ImageRejected) else decided[i] for i, picture in enumerate(pictures)
    ]


def _picture(read: Decoded) -> Image.Image:
    """The file's Pillow picture; from its crop when a decoding process made only that.

    (The driver decodes in processes only for datasets that classify CLIP vectors: this is for a
    dataset whose mode changed to a fine-tuned checkpoint while its batch was decoding.)
    """
    if isinstance(read.picture, Image.Image):
        return read.picture
    assert read.crop is not None, "a readable file has a picture or a crop"
    return Image.fromarray(read.crop)


def classify_with_fallback(
    jobs: Sequence[Job],
    reads: Sequence[Decoded],
    targets: Mapping[str, Target],
    encoder: Encoder | None,
    *,
    cache: VectorStore | None = None,
) -> list[Decision | ImageRejected | None]:
    """:func:`classify`, surviving inference failures such as running out of GPU memory.

    A failing batch is split in halves, recursively; a single file that still
    fails is encoded on the CPU. ``None`` marks a file that failed even then:
    the caller keeps it in the inbox and tries again later.
    """
    try:
        return list(classify(jobs, reads, targets, encoder, cache=cache))
    except Exception as exc:
        failure = str(exc)
    if len(jobs) > 1:
        log.warning("inference_retry", files=len(jobs), smaller=len(jobs) // 2, error=failure)
        half = len(jobs) // 2
        return [
            *classify_with_fallback(jobs[:half], reads[:half], targets, encoder, cache=cache),
            *classify_with_fallback(jobs[half:], reads[half:], targets, encoder, cache=cache),
        ]
    if encoder is not None and encoder.device != "cpu":
        log.warning("inference_on_cpu", file=str(jobs[0].path), device=encoder.device, error=failure)
        try:
            return list(classify(jobs, reads, targets, encoder, on_cpu=True, cache=cache))
        except Exception as exc:
            failure = str(exc)
    log.error("inference_failed", file=str(jobs[0].path), error=failure)
    return [None]


def deciding_model(target: Target, encoder: Encoder | None) -> str:
    """What decided: the checkpoint in finetuned mode, else the CLIP model."""
    if target.classifier.decided_by is not None:
        return target.classifier.decided_by
    return encoder.name if encoder is not None else ""


class Route(NamedTuple):
    """Where a file goes, as what, and why."""

    folder: Path
    status: Placement
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Delivery:
    """One classified file, ready to be placed: of what was read, only what identifies its bytes (the
    picture and its crop are let go as the batch is classified)."""

    job: Job
    verdict: Decision | ImageRejected
    sha256: str
    size: int
    target: Target

    @functools.cached_property
    def route(self) -> Route:
        """The folder (in ``Dataset/``, ``Review/`` or ``Rejected/``), the status and why."""
        layout, verdict = self.target.layout, self.verdict
        if isinstance(verdict, ImageRejected):
            return Route(layout.rejected, "rejected", str(verdict))
        if held := self.target.review.hold_back(verdict):
            return Route(layout.review, "review", held.reason, held.detail)
        return Route(layout.class_dir(verdict.label), "sorted")

    def parcel(self, model: str) -> Parcel:
        """What placing needs of this file, decided by ``model`` (see :class:`Parcel`)."""
        settings = self.target.settings
        return Parcel(
            self.job,
            self.verdict,
            self.sha256,
            self.size,
            self.route,
            self.target.layout.root,
            self.target.classifier.name,
            model,
            settings.action == "copy",
            settings.sidecar_suffixes,
        )


@dataclass(frozen=True)
class Parcel:
    """What placing needs of one classified file, and nothing of its dataset's classifier or model:
    small and picklable, so a batch of them can cross to a placing process (:mod:`clipsort.sort.placing`).

    Not slotted: pickle copies an instance's ``__dict__`` in C, where a slotted dataclass's state is
    gathered in Python (``dataclasses.fields`` per instance), 6 against 10 us a parcel.
    """

    job: Job
    verdict: Decision | ImageRejected
    sha256: str
    size: int
    route: Route
    root: Path  # the dataset's folder: every folder a move opens is opened from it
    mode: str
    model: str  # what decided it (:func:`deciding_model`)
    keep_source: bool  # action = "copy"
    sidecar_suffixes: tuple[str, ...]

    def intent(self) -> Intent:
        folder, status, *_ = self.route
        decision = self.verdict if isinstance(self.verdict, Decision) else None
        return Intent(
            dataset=self.job.dataset,
            source=self.job.path,
            sha256=self.sha256,
            size=self.size,
            mode=self.mode,
            model=self.model,
            label=None if decision is None else decision.label,
            top3=() if decision is None else decision.top,
            placement=status,
            folder=folder,
        )

    def outcome(self, destination: Path, *, dry_run: bool) -> Outcome:
        """The outcome of this file placed at ``destination``: all of it but that comes from the parcel,
        so a placing process answers with the destination alone (:mod:`clipsort.sort.placing`)."""
        _, status, reason, detail = self.route
        return Outcome(
            dataset=self.job.dataset,
            source=self.job.path,
            status=status,
            destination=destination,
            decision=self.verdict if isinstance(self.verdict, Decision) else None,
            reason=reason,
            detail=detail,
            extra={"mode": self.mode, "model": self.model, "dry_run": dry_run},
        )


Result = Outcome | OSError | ClipsortError


def deliver(
    batch: Sequence[Delivery], *, models: Sequence[str], journal: Journal | None, dry_run: bool
) -> list[Result]:
    """Place a batch of classified files, each decided by its model in ``models`` (see
    :func:`deliver_parcels`)."""
    parcels = [item.parcel(model) for item, model in zip(batch, models, strict=True)]
    return deliver_parcels(parcels, journal=journal, dry_run=dry_run)


def deliver_parcels(batch: Sequence[Parcel], *, journal: Journal | None, dry_run: bool) -> list[Result]:
    """Place a batch of classified files (or preview them on a dry run), journal them, log each.

    Group commit: one journal transaction records every intent before any
    file moves, the moves follow, each folder involved is fsynced once, and
    one transaction records the outcomes. A file whose move fails gets its
    error in the result list (and ``cleared`` in the journal); it stays
    where it was and the others are unaffected.
    """
    results: list[Result] = []
    if dry_run:
        for item in batch:
            results.append(item.outcome(preview(item.job.path, item.route.folder), dry_run=True))
        _log_outcomes(results, dry_run=True)
        return results
    travelling = _sidecars(batch)
    intents = [item.intent() for item in batch]
    intents += [
        replace(intents[k], source=path, sha256=sha256, size=size, mode=SIDECAR_MODE, top3=(), companion=k)
        for k, found in enumerate(travelling)
        for path, sha256, size in found
    ]
    try:
        entries = journal.plan(intents) if journal else []
    except JournalError as exc:  # no intent recorded: nothing may move
        return [exc for _ in batch]
    folders = OpenFolders()  # each folder is opened (made, checked) once, from the dataset's own folder
    try:
        try:
            states = [_place(item, folders, results) for item in batch]
        finally:  # the lines of what moved, also if a bug stopped the batch half-way
            _log_outcomes(results, dry_run=False)
        states += [
            _place_sidecar(path, item, states[k][1], folders)
            for k, (item, found) in enumerate(zip(batch, travelling, strict=True))
            for path, _, _ in found
        ]
        folders.sync_touched()  # before the outcomes are recorded as durable
    finally:
        folders.close()
    if journal is not None:
        try:
            journal.conclude(
                [Conclusion(entry, *state) for entry, state in zip(entries, states, strict=True)]
            )
        except JournalError as exc:  # the files moved: their outcomes are written with the next batch
            log.error("journal_write_failed", error=str(exc), kept="outcomes, written with the next batch")
    return results


SIDECAR_MODE = "sidecar"  # a sidecar's journal entry: its picture's decision, its own bytes


def _sidecars(batch: Sequence[Parcel]) -> list[list[tuple[Path, str, int]]]:
    """Per file of ``batch``, its sidecars in the inbox now (path, sha256, size); each folder listed once."""
    listings: dict[str, dict[str, list[str]]] = {}  # by the folder's name: no Path made per file
    found: list[list[tuple[Path, str, int]]] = []
    for item in batch:
        folder = os.path.dirname(os.fspath(item.job.path))
        if folder not in listings:
            try:
                listings[folder] = by_lower_name(os.listdir(folder), item.sidecar_suffixes)
            except OSError:
                listings[folder] = {}
        index = listings[folder]
        # Most inboxes hold no sidecar at all: then no picture's names need making.
        names = companions_in(item.job.path.name, index, item.sidecar_suffixes) if index else []
        mine = []
        for name in names:
            path = item.job.path.parent / name
            try:
                mine.append((path, content_hash(path), path.lstat().st_size))
            except OSError:  # gone meanwhile, or a FIFO's or symlink's name: it stays, unread
                continue
        found.append(mine)
    return found


def _place_sidecar(
    path: Path, item: Parcel, placed: Path | None, folders: OpenFolders
) -> tuple[State, Path | None, str | None, str | None]:
    """Move one sidecar beside its picture, now at ``placed`` (None: the picture did not move)."""
    if placed is None:
        return ("cleared", None, "its picture did not move", None)
    root = item.root
    try:
        origin = folders.get(path.parent, root, create=False)
        destination = folders.get(placed.parent, root, create=False)
        moved = move_into(
            origin.at(path.name),
            destination,
            keep_source=item.keep_source,
            name=renamed(path.name, item.job.path.name, placed.name),
        )
    except (OSError, ClipsortError) as exc:
        log.warning("sidecar_not_moved", file=str(path), error=str(exc))
        return ("cleared", None, f"not moved: {exc}", None)
    log.info("sidecar_moved", file=str(path), destination=str(moved))
    return ("moved", moved, None, None)


def _place(
    item: Parcel, folders: OpenFolders, results: list[Result]
) -> tuple[State, Path | None, str | None, str | None]:
    """Move one file through folders opened from its dataset's folder; its journal state.

    The move confirms that the file it renamed is the one that was read (its
    inode, size and modification time are the job's), so the journal's hash is
    always that of the file now filed.
    """
    folder, status, reason, detail = item.route
    root = item.root
    try:
        origin = folders.parent_of(item.job.path, root)
        destination = folders.get(folder, root, create=True)
        placed = move_into(
            origin.at(item.job.path.name),
            destination,
            keep_source=item.keep_source,
            expect=functools.partial(_is_job, item.job),
        )
    except (OSError, ClipsortError) as exc:
        results.append(exc)
        return ("cleared", None, f"not moved: {exc}", None)
    folders.touch(destination, origin)
    results.append(item.outcome(placed, dry_run=False))
    return ("rejected" if status == "rejected" else "moved", placed, reason, detail)


def _is_job(job: Job, status: os.stat_result) -> bool:
    """Whether a file about to be filed (its ``lstat``) is the one the job read."""
    return Signature.of_status(status) == job.signature


def _log_outcomes(results: Sequence[Result], *, dry_run: bool) -> None:
    """Each placed file's canonical line, a batch at a time (see :func:`clipsort.logs.log_many`)."""
    log_many(
        [
            (
                "info" if outcome.status == "sorted" else "warning",
                DRY_RUN_EVENTS[outcome.status] if dry_run else outcome.status,
                outcome.as_dict(),
            )
            for outcome in results
            if isinstance(outcome, Outcome)
        ]
    )
