"""The one batch driver: ready files in, placed files out, for the daemon and ``clipsort sort``.

While batch k is classified on the caller's thread (the one that owns the
model), batch k+1 is decoded by the decoding threads and batch k-1 is
journalled and moved by the placer thread, so the model never waits for the
disk. What differs between the daemon and a one-shot sort is only what a
file's fate means, the :class:`Policy`: the daemon retries and goes on (a
full disk, a file still arriving, an inference failure), ``clipsort sort``
stops at the first file it cannot place and reports the ones before it in
order.

A file's fate, in the names used everywhere: a :class:`~clipsort.ingest.readiness.Job`
is decoded (:class:`~clipsort.decode.decoding.Decoded`), given a verdict (a
:class:`~clipsort.classify.modes.Decision` or the :class:`ImageRejected` reason),
handed over as a :class:`~clipsort.sort.pipeline.Delivery`, journalled as an
:class:`~clipsort.store.journal.Intent` and placed; its result is an
:class:`~clipsort.sort.pipeline.Outcome` (or the error that kept it in the inbox).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from clipsort.classify.modes import Decision
from clipsort.classify.targets import Target
from clipsort.config import Settings
from clipsort.decode.decodeprocesses import Pinning, ProcessDecodePool
from clipsort.decode.decoding import Decoded, DecodePool, Decoding
from clipsort.decode.devicejpeg import DeviceJpeg
from clipsort.decode.images import DecodeLimits
from clipsort.encode.embeddings import Embedder
from clipsort.encode.encoder import Encoder, resolve_device
from clipsort.encode.pinned import CudaHostRegistration
from clipsort.errors import ImageRejected
from clipsort.sort.pipeline import (
    Delivery,
    HeldVectors,
    Result,
    classify,
    classify_with_fallback,
    deciding_model,
    deliver_parcels,
)
from clipsort.sort.placing import PlacingProcess
from clipsort.store.journal import Journal
from clipsort.work import Job

Verdict = Decision | ImageRejected | None  # None: inference failed even on the CPU


PlaceIn = Literal["process", "thread"]  # where the placer thread places: a process it feeds, or itself


def needs_vectors(job: Job, targets: Mapping[str, Target]) -> bool:
    """Whether ``job``'s dataset is classified by CLIP vectors (of the model's input, a crop)."""
    target = targets.get(job.dataset)
    return target is not None and target.by_vectors


@dataclass(frozen=True)
class Batch:
    """Files being decoded, and the model whose input the decoding threads prepare."""

    jobs: list[Job]
    pictures: list[Future[Decoded]]
    encoder: Encoder | None  # a model swapped in meanwhile ignores these crops
    pool: Decoding  # what collects them


class Decoders:
    """The decoding threads, and the decoding processes for batches that need only the model's input.

    Processes hand over a batch per message (:mod:`clipsort.decode.decodeprocesses`); the threads
    remain for what needs Pillow pictures: a fine-tuned checkpoint's dataset, a model without an
    image tower. ``processes=False`` (``decode_in = "threads"``) decodes everything in threads.
    """

    def __init__(
        self,
        limits: DecodeLimits,
        workers: int,
        *,
        processes: bool,
        timeout: float,
        ahead: int = 2,
        memory_mb: int = 0,
        jpeg_device: str | None = None,
        pinning: Pinning | None = None,
    ) -> None:
        self.threads = DecodePool(limits, workers)
        # A slot per batch decoded ahead, one for the batch being collected and classified: its
        # crops are read where the workers wrote them (pinned, for a GPU's copy: ``pinning``), and
        # the driver releases it once classified.
        self.processes = (
            ProcessDecodePool(
                limits,
                workers,
                timeout=timeout,
                slots=ahead + 1,
                memory_mb=memory_mb,
                lends=True,
                pinning=pinning,
            )
            if processes
            else None
        )
        # JPEGs on the model's device (jpeg_decoder = "torchvision"), in front of the pool above.
        self.device_jpeg = None if jpeg_device is None else DeviceJpeg(jpeg_device, workers)
        self.ahead = ahead

    @classmethod
    def configured(cls, settings: Settings, limits: DecodeLimits, *, processes: bool = True) -> Decoders:
        """The pools ``settings`` ask for; processes only where configured and ``processes``."""
        workers, in_processes, ahead, on_device = cls._shape(settings)
        device = resolve_device(settings.device)
        return cls(
            limits,
            workers,
            processes=processes and in_processes,
            timeout=settings.decode_timeout_seconds,
            ahead=ahead,
            memory_mb=settings.decode_memory_mb,
            jpeg_device=device if on_device else None,
            pinning=_pinning(device) if processes and in_processes else None,
        )

    @staticmethod
    def _shape(settings: Settings) -> tuple[int, bool, int, bool]:
        """What fixes a pool once made: its workers, whether they are processes, batches ahead,
        whether JPEGs decode on the device."""
        return (
            settings.decode_workers,
            settings.decode_in == "processes",
            settings.decode_ahead,
            settings.jpeg_decoder == "torchvision",
        )

    @property
    def workers(self) -> int:
        return self.threads.workers

    def suits(self, settings: Settings) -> bool:
        """Whether these pools are the ones ``settings`` ask for (a pool cannot change its size)."""
        shape = (self.workers, self.processes is not None, self.ahead, self.device_jpeg is not None)
        return shape == self._shape(settings)

    def set_limits(self, limits: DecodeLimits, timeout: float) -> None:
        """Limits for every file submitted from now on."""
        self.threads.limits = limits
        if self.processes is not None:
            self.processes.limits, self.processes.timeout = limits, timeout

    def pick(self, crops: Sequence[bool]) -> Decoding:
        """The threads unless every file of a batch is decoded to a CLIP crop (``crops``, per file);
        for those the processes (where configured), behind the device's JPEG decoder (where configured)."""
        if not crops or not all(crops):
            return self.threads
        pool = self.threads if self.processes is None else self.processes
        return pool if self.device_jpeg is None else self.device_jpeg.over(pool)

    def close(self, *, wait: bool = True, cancel: bool = True) -> None:
        if self.device_jpeg is not None:  # first: a batch it gives the CPU path goes to pools still open
            self.device_jpeg.close(wait=wait, cancel=cancel)
        self.threads.close(wait=wait, cancel=cancel)
        if self.processes is not None:
            self.processes.close(wait=wait, cancel=cancel)

    def __enter__(self) -> Decoders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pinning(device: str) -> Pinning | None:
    """The slots page-locked where the model runs on CUDA (:mod:`clipsort.encode.pinned`)."""
    return CudaHostRegistration() if device.startswith("cuda") else None


@dataclass(frozen=True)
class Classified:
    """A batch's deliveries, the model that decided them (journalled even if a swap follows), and
    the settings it was classified under: the placer's for this batch, so no setting crosses from
    the classifying thread's snapshot to the placer's thread while either is read."""

    deliveries: list[Delivery]
    encoder: Encoder | None
    settings: Settings
    vectors: HeldVectors | None = None  # (a placing process) the batch's vectors, for it to cache


class Policy(Protocol):
    """What a file's fate means; the driver's one parameter."""

    @property
    def falls_back(self) -> bool:
        """An inference failure splits the batch and retries on the CPU (None for a file that still
        fails), rather than ending the run with the error."""

    def deliverable(self, job: Job, verdict: Verdict, settings: Settings) -> bool:
        """Whether the file is placed now; False when the policy keeps it for later.

        Each call gets the settings of the batch at hand (here and below): a policy keeps none.
        """

    def still_there(self, delivery: Delivery, settings: Settings) -> bool:
        """Just before placing: whether the file is still what was read (else the policy keeps it)."""

    def after_placing(self, results: Sequence[tuple[Job, Result]], settings: Settings) -> None:
        """A batch's files placed or not, in order; raising stops placing (one-shot), returning goes on
        (daemon)."""

    def unplaced(self, job: Job) -> None:
        """A file that will not be placed this time (its classes went, the run stopped)."""

    def placing_failed(self, batch: Classified, error: Exception) -> bool:
        """Placing a batch raised ``error``; True stops all placing (the run then re-raises it)."""


class Driver:
    """Decode ahead, classify here, place behind; one instance per run or per daemon."""

    def __init__(
        self,
        policy: Policy,
        journal: Journal | None,
        *,
        dry_run: bool = False,
        place_in: PlaceIn = "process",
        placing: PlacingProcess | None = None,
    ) -> None:
        self.policy = policy
        self.journal = journal
        self.dry_run = dry_run
        # The placer thread places each batch itself, or hands it to a process it starts and ends
        # (see clipsort.sort.placing); the thread, its queue and the policy are the same either way.
        # ``placing``: one the caller started already (`clipsort sort`, while the model loads), used
        # where this run places in a process; the caller ends it where not.
        if place_in != "process" or dry_run:
            placing = None
        elif placing is None:
            placing = PlacingProcess(journal)
        else:
            placing.attach(journal)
        self.placing = placing
        self.failure: Exception | None = None  # what stopped placing, raised by finish()
        # One classified batch waits while the last is placed: memory stays bounded, and the model
        # blocks (as it should) when the disk is slower than it.
        self._placing: queue.Queue[Classified | None] = queue.Queue(maxsize=1)
        self._ahead: deque[Batch] = deque()  # being decoded, oldest first (the caller's thread only)
        self.placer = threading.Thread(target=self._place_all, name="clipsort-placer", daemon=True)
        self.placer.start()

    # --- decoding ahead: the daemon's worker and `clipsort sort` both run batches through these ---
    def decode_ahead(
        self, jobs: list[Job], decoders: Decoders, embedder: Embedder, targets: Mapping[str, Target]
    ) -> None:
        """Start decoding ``jobs`` as one batch, behind those already decoding."""
        self._ahead.append(self.decode(jobs, decoders, embedder, targets))

    def wants_more(self, decoders: Decoders) -> bool:
        """Whether another batch may start decoding: ``decoders.ahead`` beside the one classified next."""
        return len(self._ahead) <= decoders.ahead

    @property
    def decoding(self) -> int:
        """How many batches are decoding (or decoded) and not yet classified."""
        return len(self._ahead)

    def next_jobs(self) -> list[Job]:
        """The files of the batch :meth:`classify_next` takes (the caller's to give back if it raises)."""
        return self._ahead[0].jobs if self._ahead else []

    def classify_next(self, targets: Mapping[str, Target], embedder: Embedder, settings: Settings) -> int:
        """Classify the oldest batch decoding and hand it to the placer (see :meth:`classify`)."""
        return self.classify(self._ahead.popleft(), targets, embedder, settings)

    def abandon(self) -> list[Job]:
        """Forget the batches decoding and not classified (released to their pools); their files
        (which stay in the inbox)."""
        jobs = [job for batch in self._ahead for job in batch.jobs]
        for batch in self._ahead:
            batch.pool.release(batch.pictures)
        self._ahead.clear()
        return jobs

    def decode(
        self, jobs: list[Job], decoders: Decoders, embedder: Embedder, targets: Mapping[str, Target]
    ) -> Batch:
        """Start decoding ``jobs`` on the pool that suits them: each to the model's input where its
        dataset classifies CLIP vectors, else to a picture for a checkpoint's own processor.

        A batch holding both (the threads decode it) is started as its two parts and its files'
        futures kept in the jobs' order, so what a file is decoded to never depends on the other
        files of its batch (the cluster engine decodes it alike, file by file).
        """
        vectors = [embedder.encoder is not None and needs_vectors(job, targets) for job in jobs]
        pool = decoders.pick(vectors)
        parts: dict[bool, Iterator[Future[Decoded]]] = {}
        for want in set(vectors):
            side, prepare = embedder.decoding(vectors=want)
            paths = [job.path for job, wants in zip(jobs, vectors, strict=True) if wants is want]
            parts[want] = iter(pool.start(paths, side, prepare))
        return Batch(jobs, [next(parts[wants]) for wants in vectors], embedder.encoder, pool)

    def classify(
        self, batch: Batch, targets: Mapping[str, Target], embedder: Embedder, settings: Settings
    ) -> int:
        """Collect, classify and hand a batch to the placer (waiting while the last is placed).

        Returns how many files were classified. Handing over is its last step: if it raises, none
        of the batch's files reached the placer, so the caller may give them all back. The batch's
        crops are released to its pool either way (the placer gets none: it needs the bytes' hash).
        """
        try:
            return self._classify(batch, targets, embedder, settings)
        finally:
            batch.pool.release(batch.pictures)

    def _classify(
        self, batch: Batch, targets: Mapping[str, Target], embedder: Embedder, settings: Settings
    ) -> int:
        jobs, reads = [], []
        for job, read in zip(
            batch.jobs, batch.pool.collect(batch.pictures, settings.decode_timeout_seconds), strict=True
        ):
            if job.dataset in targets:
                jobs.append(job)
                reads.append(read)
            else:  # its classes went away: it waits in the inbox for new ones
                self.policy.unplaced(job)
        if not jobs:
            return 0
        if batch.encoder is not embedder.encoder:  # crops made for a model swapped out since
            reads = [replace(read, crop=None) for read in reads]
        cache = embedder.cache
        # With a placing process, it caches the vectors as it takes the batch (see HeldVectors).
        held = None if self.placing is None or cache is None else HeldVectors(cache.path)
        store = cache if held is None else held
        verdicts: list[Verdict] = (
            classify_with_fallback(jobs, reads, targets, embedder.encoder, cache=store)
            if self.policy.falls_back
            else list(classify(jobs, reads, targets, embedder.encoder, cache=store))
        )
        deliveries = [
            Delivery(job, verdict, read.sha256, read.size, targets[job.dataset])
            for job, verdict, read in zip(jobs, verdicts, reads, strict=True)
            if self.policy.deliverable(job, verdict, settings) and verdict is not None
        ]
        if deliveries:
            self._placing.put(Classified(deliveries, embedder.encoder, settings, held))
        return len(jobs)

    @property
    def stopped(self) -> bool:
        """Placing stopped for good (a one-shot run's first failure): classify nothing more."""
        return self.failure is not None

    def finish(self, timeout: float | None = None) -> bool:
        """Place what is queued, then end the placer; True if it ended within ``timeout``."""
        with contextlib.suppress(queue.Full):  # a placer stuck on the disk: its files stay in the inbox
            self._placing.put(None, timeout=timeout)
        self.placer.join(timeout)
        return not self.placer.is_alive()

    def _place_all(self) -> None:
        try:
            if self.placing is not None:
                self.placing.start()
            while (batch := self._placing.get()) is not None:
                if self.failure is not None:  # a one-shot run stopped: nothing after the failure moves
                    for item in batch.deliveries:
                        self.policy.unplaced(item.job)
                    continue
                try:
                    self._place(batch)
                except Exception as exc:
                    if self.policy.placing_failed(batch, exc):
                        self.failure = exc
        finally:  # the placing process was started from this thread, and dies with it anyway
            if self.placing is not None:
                self.placing.close()

    def _place(self, batch: Classified) -> None:
        ready = [item for item in batch.deliveries if self.policy.still_there(item, batch.settings)]
        parcels = [item.parcel(deciding_model(item.target, batch.encoder)) for item in ready]
        results = (
            deliver_parcels(parcels, journal=self.journal, dry_run=self.dry_run)
            if self.placing is None
            else self.placing.place(parcels, batch.vectors)
        )
        self.policy.after_placing(
            [(item.job, result) for item, result in zip(ready, results, strict=True)], batch.settings
        )
