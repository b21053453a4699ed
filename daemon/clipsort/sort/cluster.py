"""``clipsort sort --engine ray``: an archive sorted on a Ray cluster, each file placed exactly once.

Ray Data runs what scales out: the inboxes are listed by parallel tasks, files are decoded by tasks
with the project's own decoder (every format the daemon reads, under the same limits) and
classified by a pool of actors running the project's own classifier (one per GPU on GPU hosts).
What Ray does not give is exactly-once side effects: a task or an actor may run twice, and a task
reported failed may have succeeded. So the engine only classifies; placing is clipsort's own
journal and mover, in this process, and the run is three idempotent phases recorded as shards
(:mod:`clipsort.sort.shards`):

(a) **list**: a task per inbox lists its own files and a task per folder in it lists that folder's
    tree (the scanner: ignored names, depth, symlinks left alone), each ``lstat``-ing what it
    finds; the driver writes the manifest shards they return and then their marker. No file is
    ``stat``-ed here.
(b) **classify**: the manifest shards without a decision marker stream through decode tasks and
    classifier actors (in order, so a shard completes before the next begins); each shard's
    decisions are written, then its marker. A resumed run skips committed shards.
(c) **place**: each decision shard is placed through :func:`~clipsort.sort.pipeline.deliver`, the
    local engine's own (intent journalled first, the move relative to the dataset's folders, the
    inode checked after the rename). A file the journal says this run already placed is skipped;
    a file gone since is left alone; a file whose bytes changed since it was classified (the
    mover refuses it) is listed and classified again in a further round; a crash between a move
    and its journal entry is repaired when the journal opens, as after any crash.

Rerunning the same command after any failure goes on from the last committed shard. A run with
other settings (mode, model, datasets) than the unfinished one discards that run's decisions that
are not placed yet (the journal still keeps what was placed from being placed again).

Where things happen: every node must see the data root at the same path; the state folder (the
journal, the shards) is read and written by this process only. The Ray modules load only here;
what the tasks run is :mod:`clipsort.sort.clustertasks` (a worker imports no model stack for it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from clipsort.classify.modes.finetuned import FinetunedClassifier
from clipsort.classify.targets import Corrected, Target
from clipsort.config import Settings, resolve_batch
from clipsort.decode.decoding import Decoded
from clipsort.decode.images import DecodeLimits
from clipsort.encode.embedcache import EmbeddingCache
from clipsort.encode.encoder import Encoder, resolve_device
from clipsort.encode.factory import make_embedder
from clipsort.errors import FileReplaced
from clipsort.heap import keep_freed_memory
from clipsort.layout import DatasetLayout
from clipsort.sort.clustertasks import Decoding, decode_batch, list_folder, list_inbox
from clipsort.sort.oneshot import Work, gather
from clipsort.sort.pipeline import Delivery, Outcome, classify_with_fallback, deciding_model, deliver
from clipsort.sort.shards import (
    RUN_FOLDER,
    Decided,
    Listed,
    RunFolder,
    decided_rows,
    decision_table,
    fingerprint,
    listed_rows,
    manifest_table,
)
from clipsort.store.journal import Journal

log = structlog.get_logger()

MAX_ROUNDS = 3  # a file changed while it was classified is classified again, at most this often


class Phases(Protocol):
    """What the run reports as it goes (the command draws a progress bar per phase)."""

    def begin(self, phase: str, total: int) -> None: ...

    def advance(self, files: int) -> None: ...


@dataclass
class Tally:
    """What a run did, for its summary line."""

    listed: int = 0
    classified: int = 0
    shards_skipped: int = 0
    placed: int = 0
    already_placed: int = 0
    gone: int = 0
    changed: int = 0
    left: int = 0  # inference failed: in the inbox for the next run


# (a) listing and (b)'s decoding run in Ray tasks: clipsort.sort.clustertasks.


class Classifier:
    """A Ray actor holding the model: the project's classifier over decoded batches."""

    def __init__(self, settings: Settings, targets: Any, clip: bool) -> None:
        import ray  # noqa: PLC0415

        from clipsort.encode.factory import make_encoder  # noqa: PLC0415  (in the actor: its GPU)

        keep_freed_memory()  # the batches' blocks reused, as in the local engine (clipsort.heap)
        self.encoder = make_encoder(settings) if clip else None
        # Put once by the driver, fetched by each actor (Ray leaves a reference in kwargs as is).
        found: Mapping[str, Target] = ray.get(targets)
        device = resolve_device(settings.device)  # this actor's: its GPU where Ray gave it one
        self.targets = {name: on_device(target, device) for name, target in found.items()}

    def __call__(self, batch: Any) -> Any:
        listed = listed_rows(batch)
        reads: list[Decoded] = [pickle.loads(data) for data in batch.column("read").to_pylist()]
        jobs = [row.job() for row in listed]
        verdicts = classify_with_fallback(jobs, reads, self.targets, self.encoder)
        decided = [
            Decided(
                row, read.sha256, read.size, verdict, deciding_model(self.targets[row.dataset], self.encoder)
            )
            for row, read, verdict in zip(listed, reads, verdicts, strict=True)
        ]
        table = decision_table(decided)
        return table.append_column("shard", batch.column("shard"))


def on_device(target: Target, device: str) -> Target:
    """``target`` with its fine-tuned checkpoint on ``device``: the driver loaded it on its own."""
    classifier = target.classifier
    if not isinstance(classifier, FinetunedClassifier):
        return target
    model = classifier.checkpoint.model
    if str(next(model.parameters()).device) == device:
        return target
    checkpoint = dataclasses.replace(classifier.checkpoint, model=model.to(device))
    return dataclasses.replace(target, classifier=dataclasses.replace(classifier, checkpoint=checkpoint))


@dataclass(frozen=True)
class Engine:
    """Where the work runs: the Ray cluster and how much of it the run asks for."""

    actors: int  # classifier actors
    gpus_per_actor: float  # 0 on a CPU cluster
    batch_size: int

    @classmethod
    def sized(cls, settings: Settings) -> Engine:
        """Actors by the cluster's GPUs (``ray_actors_per_gpu`` each), else ``ray_actors`` on CPUs."""
        import ray  # noqa: PLC0415

        gpus = int(ray.cluster_resources().get("GPU", 0))  # type: ignore[no-untyped-call]
        wants_gpu = settings.device in ("auto", "cuda") or settings.device.startswith("cuda")
        if gpus and wants_gpu:
            per = settings.ray_actors_per_gpu
            batch = resolve_batch(settings.batch_size, "cuda")
            return cls(settings.ray_actors or gpus * per, 1.0 / per, batch)
        return cls(settings.ray_actors or 1, 0.0, resolve_batch(settings.batch_size, "cpu"))


class ClusterRun:
    """One ``clipsort sort --engine ray`` run over ``work``: its three phases and their ledger."""

    def __init__(
        self,
        work: Sequence[Work],
        settings: Settings,
        folder: RunFolder,
        *,
        journal: Journal | None,
        decoding: Decoding,
        clip: bool,
        on_outcome: Callable[[Outcome], None],
        phases: Phases,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.targets = {item.target.layout.name: item.target for item in work}
        self.settings = settings
        self.folder = folder
        self.journal = journal
        self.decoding = decoding
        self.clip = clip
        self.on_outcome = on_outcome
        self.phases = phases
        self.stop = stop
        self.tally = Tally()

    @property
    def dry_run(self) -> bool:
        return self.journal is None

    def run(self, fingerprint: str) -> Tally:
        """Every phase, in rounds while files changed under the run; resumes an unfinished run."""
        only: set[Path] | None = None
        for _ in range(MAX_ROUNDS):
            started = self.begin(fingerprint)
            shards = self.folder.listed()
            if shards is None:
                with self._timed("listing", lambda: self.tally.listed):
                    shards = self.list_inboxes(only)
            if self.stop():
                break
            with self._timed("classifying", lambda: self.tally.classified):
                self.classify(shards)
            if self.stop():
                break
            with self._timed("placing", lambda: self.tally.placed):
                changed = self.place(shards, since=started)
            if self.stop():
                break
            unfinished = [name for name in shards if not self.folder.placed_already(name)]
            if unfinished and not self.dry_run:  # kept for the rerun, which goes on from them
                log.error("ray_shards_unfinished", shards=len(unfinished), action="rerun the same command")
                break
            self.folder.discard()  # the run is done: the next one lists the inboxes anew
            if not changed:
                break
            only = changed
        return self.tally

    @contextlib.contextmanager
    def _timed(self, phase: str, files: Callable[[], int]) -> Iterator[None]:
        """One line per phase: its files (counted by the tally) and its rate; what a user or a
        benchmark reads to see which phase bounds the run."""
        before, started = files(), time.perf_counter()
        yield
        done, seconds = files() - before, time.perf_counter() - started
        rate = round(done / seconds, 1) if seconds > 0 else None
        log.info("ray_phase", phase=phase, files=done, seconds=round(seconds, 3), files_per_second=rate)

    def begin(self, fingerprint: str) -> float:
        """The start time of the run recorded here, or of a new one; other settings' decisions go."""
        found = self.folder.started()
        if found is not None and found.get("fingerprint") != fingerprint:
            dropped = self.folder.forget_decisions()
            log.warning("ray_run_settings_changed", decisions_dropped=dropped, action="classified again")
        if found is not None and isinstance(found.get("started"), int | float):
            log.info("ray_run_resumed", folder=str(self.folder.folder), started=found["started"])
            if found.get("fingerprint") != fingerprint:
                self.folder.start(fingerprint, float(found["started"]))
            return float(found["started"])
        started = time.time()
        self.folder.start(fingerprint, started)
        return started

    # --- (a) ---
    def list_inboxes(self, only: set[Path] | None = None) -> list[str]:
        """List every inbox in parallel tasks; write the manifest (``only`` these paths, if given)."""
        import pyarrow as pa  # noqa: PLC0415
        import ray  # noqa: PLC0415

        top, below = ray.remote(num_cpus=1)(list_inbox), ray.remote(num_cpus=1)(list_folder)
        self.phases.begin("listing", len(self.targets))
        pending = {
            top.remote(name, target.layout.inbox, self.settings): name
            for name, target in self.targets.items()
        }
        inboxes, tables = set(pending), []
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ready)
            if ready in inboxes:
                table, folders = ray.get(ready)
                pending |= {below.remote(name, folder, self.settings, 1): name for folder in folders}
                self.phases.advance(1)
            else:
                table = ray.get(ready)
            tables.append(table)
        whole = pa.concat_tables(tables) if tables else manifest_table([])
        if only is not None:
            keep = [Path(os.fsdecode(path)) in only for path in whole.column("path").to_pylist()]
            whole = whole.filter(pa.array(keep, pa.bool_()))
        whole = whole.sort_by([("dataset", "ascending"), ("path", "ascending")])
        size = self.settings.ray_shard_files
        parts = [whole.slice(start, size) for start in range(0, whole.num_rows, size)]
        self.tally.listed += whole.num_rows
        log.info("ray_listed", files=whole.num_rows, shards=len(parts), datasets=len(self.targets))
        return self.folder.commit_manifest(parts)

    # --- (b) ---
    def classify(self, shards: Sequence[str]) -> None:
        """Classify every manifest shard without a decision marker, committing each as it completes."""
        import pyarrow as pa  # noqa: PLC0415
        import ray  # noqa: PLC0415
        from ray.data import ActorPoolStrategy  # noqa: PLC0415

        quiet_ray_data()

        todo = [name for name in shards if not self.folder.classified(name)]
        self.tally.shards_skipped += len(shards) - len(todo)
        tables, expected = [], {}
        for name in todo:
            table = self._known_datasets(self.folder.manifest_shard(name))
            expected[name] = table.num_rows
            tables.append(table.append_column("shard", pa.array([name] * table.num_rows, pa.string())))
        total = sum(expected.values())
        self.phases.begin("classifying", total)
        empty = [name for name, count in expected.items() if not count]
        for name in empty:
            self.folder.commit_decisions(name, [])
        if not total:
            return
        engine = Engine.sized(self.settings)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # shards complete one after another
        context.enable_progress_bars = False  # the command draws its own
        targets = ray.put(self.targets)
        data: Any = (
            ray.data.from_arrow([table for table in tables if table.num_rows])
            .map_batches(
                decode_batch,  # type: ignore[arg-type]  # Ray's annotation knows no keyword arguments
                fn_kwargs={"decoding": self.decoding},
                batch_format="pyarrow",
                batch_size=engine.batch_size,
                num_cpus=self.settings.ray_decode_cpus,
                # A decoding task may take what a local decoding process may (decode_memory_mb). A
                # resource the actors do not declare also keeps Ray from fusing decoding into them
                # (it fuses maps of equal resources), where one process would decode and classify
                # in turn. Ray Data restarts an actor whose process dies and retries its batch.
                memory=self.settings.decode_memory_mb * 2**20,
            )
            .map_batches(
                Classifier,
                fn_constructor_kwargs={"settings": self.settings, "targets": targets, "clip": self.clip},
                compute=ActorPoolStrategy(size=engine.actors),
                batch_format="pyarrow",
                batch_size=engine.batch_size,
                num_gpus=engine.gpus_per_actor,
                num_cpus=0 if engine.gpus_per_actor else 1,
            )
        )
        # Per shard, its rows by path: a batch Ray ran twice (a retried task) counts once.
        collected: dict[str, dict[Path, Decided]] = {}
        for batch in data.iter_batches(batch_format="pyarrow", batch_size=None):
            for name in batch.column("shard").unique().to_pylist():
                part = batch.filter(pa.compute.equal(batch.column("shard"), name))
                rows = collected.setdefault(name, {})
                rows.update((row.listed.path, row) for row in decided_rows(part))
                if len(rows) == expected[name]:  # whole: written, then marked
                    self.folder.commit_decisions(name, list(collected.pop(name).values()))
                    log.info("ray_shard_classified", shard=name, files=expected[name])
            self.tally.classified += batch.num_rows
            self.phases.advance(batch.num_rows)
            if self.stop():
                break

    def _known_datasets(self, rows: list[Listed]) -> Any:
        """A manifest shard's rows whose dataset this run sorts (a dataset may have lost its classes)."""
        return manifest_table([row for row in rows if row.dataset in self.targets])

    # --- (c) ---
    def place(self, shards: Sequence[str], *, since: float) -> set[Path]:
        """Place every classified shard not placed yet, exactly once; the files changed meanwhile.

        (On a dry run, shards are "placed" in memory only: nothing is marked.)"""
        todo = [
            name for name in shards if not self.folder.placed_already(name) and self.folder.classified(name)
        ]
        self.phases.begin("placing", sum(self.folder.decided_count(name) for name in todo))
        changed: set[Path] = set()
        for name in todo:  # one shard's decisions in memory at a time
            counts = self._place_shard(self.folder.decision_shard(name), since, changed)
            if not self.dry_run:
                self.folder.commit_placed(name, counts)
            if self.stop():
                break
        return changed

    def _place_shard(self, rows: list[Decided], since: float, changed: set[Path]) -> Counter[str]:
        counts: Counter[str] = Counter()
        done = (
            self.journal.placed_since([(row.listed.path, row.sha256) for row in rows if row.sha256], since)
            if self.journal is not None
            else set()
        )
        ready = []
        for row in rows:
            if row.verdict is None:
                counts["left"] += 1  # inference failed even on the CPU: the next run tries again
            elif (row.listed.path, row.sha256) in done:
                counts["already_placed"] += 1
            elif row.listed.dataset in self.targets:
                ready.append(row)
        size = resolve_batch(self.settings.batch_size, "cpu")  # placed here, on the CPU
        for start in range(0, len(ready), size):
            batch = ready[start : start + size]
            deliveries = [
                Delivery(
                    row.listed.job(),
                    row.verdict,  # type: ignore[arg-type]  # None was filtered out above
                    row.sha256,
                    row.read_size,
                    self.targets[row.listed.dataset],
                )
                for row in batch
            ]
            results = deliver(
                deliveries, models=[row.model for row in batch], journal=self.journal, dry_run=self.dry_run
            )
            for row, result in zip(batch, results, strict=True):
                if isinstance(result, Outcome):
                    counts["placed"] += 1
                    self.on_outcome(result)
                elif isinstance(result, FileReplaced):
                    counts["changed"] += 1
                    changed.add(row.listed.path)
                elif isinstance(result, FileNotFoundError):
                    counts["gone"] += 1
                    log.warning("file_vanished", file=str(row.listed.path), error=str(result))
                else:
                    raise result
            self.phases.advance(len(batch))
            if self.stop():
                break
        self.tally.placed += counts["placed"]
        self.tally.already_placed += counts["already_placed"]
        self.tally.gone += counts["gone"]
        self.tally.changed += counts["changed"]
        self.tally.left += counts["left"]
        return counts


def prepare(
    settings: Settings,
    layouts: Sequence[DatasetLayout],
    *,
    encoder: Encoder | None,
    journal: Journal | None,
    cache: EmbeddingCache | None,
    corrected: Corrected | None,
    named: bool,
    state: Path,
    dry_run: bool,
    on_outcome: Callable[[Outcome], None],
    phases: Phases,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[ClusterRun, str]:
    """A run over ``layouts`` with its targets built here (so every actor classifies with the same
    index, gate and corrections as the local engine would), and the fingerprint of what it decides by.

    ``state`` holds the run's shards (the state folder, or a temporary one on a dry run).
    """
    embedder = make_embedder(settings, encoder, cache)
    work = gather(layouts, settings, embedder, named=named, corrected=corrected, found={})
    side, crop = embedder.decoding()
    crops = {item.target.layout.name: side for item in work if crop is not None and item.target.by_vectors}
    picture_side, _ = embedder.decoding(vectors=False)
    identity = {
        "settings": settings.model_dump(mode="json", exclude={"log_level", "log_format"}),
        "models": {item.target.layout.name: deciding_model(item.target, encoder) for item in work},
        "encoder": None if encoder is None else encoder.identity,
        "corrections": None if journal is None else journal.corrections_versions(),
    }
    run = ClusterRun(
        work,
        settings,
        RunFolder(state / RUN_FOLDER),
        journal=None if dry_run else journal,
        decoding=Decoding(DecodeLimits.from_settings(settings), picture_side, crops),
        clip=encoder is not None,
        on_outcome=on_outcome,
        phases=phases,
        stop=stop,
    )
    return run, fingerprint(identity)


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or start a local one); True when this process started Ray."""
    import logging  # noqa: PLC0415

    import ray  # noqa: PLC0415

    if ray.is_initialized():  # a caller (a test session) connected already
        return False
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    return True


def quiet_ray_data() -> None:
    """Ray Data's own lines (its plan, timings, that its progress bars are off) stay in its log
    files: the command draws a bar per phase. Set once Ray Data is imported, which sets its own."""
    import logging  # noqa: PLC0415

    logging.getLogger("ray.data").setLevel(logging.ERROR)
