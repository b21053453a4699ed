"""``clipsort sort``, ``eval``, ``train`` and ``demo-model``: the commands that load a model.

Each imports the model stack inside its body, so the other commands and
``--help`` start without it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.progress import ProgressColumn, Task, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from clipsort.classify.checkpoints import checkpoints_of, current_checkpoint
from clipsort.classify.modes import needs_clip
from clipsort.cli import preflight
from clipsort.cli.app import (
    NOT_RUNNING,
    ConfigOption,
    DatasetOption,
    ModelOption,
    RootOption,
    app,
    journal_if_any,
    open_journal,
    progress_bar,
    settings_from,
    text_table,
    user_errors,
)
from clipsort.cli.interrupt import INTERRUPTED, Interrupt
from clipsort.config import DEFAULT_BASE, EVALUATED_MODES, Settings, installed
from clipsort.encode.hub import require_available
from clipsort.errors import ConfigError, DatasetError, NoClassesError
from clipsort.heap import freeze_survivors
from clipsort.layout import DatasetLayout, require_data_root, select
from clipsort.logs import json_line
from clipsort.store.instance import refuse_if_served
from clipsort.store.mover import discard_tree, ensure_dir, rename_noreplace

Engine = Literal["local", "ray"]

if TYPE_CHECKING:
    from clipsort.learn.evaluation import EvalReport
    from clipsort.sort.pipeline import Outcome


@app.command()
@user_errors
def sort(
    dataset: DatasetOption = None,
    mode: Annotated[str | None, typer.Option(help="reference, text, mixed or finetuned.")] = None,
    aggregate: Annotated[str | None, typer.Option(help="Reference mode: max or avg.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and report, move nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per decision on stdout.")] = False,
    engine: Annotated[
        Engine,
        typer.Option(
            help="local: this process; ray: a Ray cluster classifies, this process places (the ray extra)."
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            help="--engine ray: the cluster to join (ray start's address); none starts a local one."
        ),
    ] = None,
    config: ConfigOption = None,
    root: RootOption = None,
    model: ModelOption = None,
) -> None:
    """Classify every image in the datasets' Images/ folders once, and move each into Dataset/<class>/.

    Ctrl-C stops it promptly (exit 130): the batch being placed is placed whole, the rest stays in
    the inbox for the next run. With --engine ray, running the same command again after any stop
    goes on from the last shard it finished, and places no file twice.
    """
    if address is not None and engine != "ray":
        raise ConfigError("--address names a Ray cluster: use it with --engine ray")
    if engine == "ray" and not installed("ray"):
        raise ConfigError("--engine ray needs Ray: pip install 'clipsort[ray]'")
    outcomes: list[Outcome] = []
    interrupt = Interrupt()
    try:
        with interrupt:
            _sort(
                interrupt,
                outcomes,
                dataset,
                mode,
                aggregate,
                dry_run,
                as_json,
                config,
                root,
                model,
                address,
                engine,
            )
    except KeyboardInterrupt:
        pass  # asked to stop before anything was placed (or a second Ctrl-C): the line below says so
    if not interrupt.requested.is_set():
        Console(stderr=as_json).print(summary(outcomes, dry_run=dry_run))
        return
    if outcomes:
        Console(stderr=True).print(summary(outcomes, dry_run=dry_run))
    done = "would have been sorted" if dry_run else "were placed"
    typer.echo(
        f"clipsort: interrupted: {len(outcomes)} file(s) {done}; the rest stays in Images/ for the next run",
        err=True,
    )
    raise typer.Exit(INTERRUPTED)


def _sort(
    interrupt: Interrupt,
    outcomes: list[Outcome],
    dataset: list[str] | None,
    mode: str | None,
    aggregate: str | None,
    dry_run: bool,
    as_json: bool,
    config: Path | None,
    root: Path | None,
    model: str | None,
    address: str | None = None,
    engine: Engine = "local",
) -> None:
    """The body of ``clipsort sort``; ``outcomes`` collects every file placed (or that would be)."""
    settings = settings_from(config, root=root, model=model, mode=mode, aggregate=aggregate)
    require_data_root(settings.root)  # the user's errors before the slow model stack
    layouts = select(settings.root, dataset or [])
    if not dry_run:
        refuse_if_served(settings.state_path, settings.root, "sort")
    names = [layout.name for layout in layouts]
    preflight.models(settings, names)
    if engine == "ray":
        _sort_on_ray(interrupt, outcomes, settings, layouts, bool(dataset), dry_run, as_json, address)
        return
    from clipsort.encode.embedcache import EMBEDDINGS_DB, EmbeddingCache
    from clipsort.encode.factory import make_embedder, make_encoder
    from clipsort.learn.corrections import corrected_from
    from clipsort.sort.oneshot import batches_of, decoders_for, gather, placing_for, run, waiting

    interrupt.check()

    with contextlib.ExitStack() as stack:
        # Started first: the decoding processes' interpreters start while the model loads.
        found = waiting(layouts, settings)
        needed = needs_clip(settings, names) and any(found.values())  # nothing to sort: no decoding process
        decoders = stack.enter_context(decoders_for(settings, processes=needed))
        # And the placing process (placing_for says why).
        batches = batches_of(found, settings)
        placing = stack.enter_context(placing_for(settings, batches=batches, dry_run=dry_run))
        interrupt.check()
        encoder = make_encoder(settings) if needs_clip(settings, names) else None  # none if all fine-tuned
        interrupt.check()
        # A real run journals and caches vectors (so the daemon can learn from corrections later).
        # A dry run creates nothing, but reads the corrections an existing journal holds, so that
        # it decides as the real run would.
        journal = journal_if_any(settings) if dry_run else open_journal(settings, layouts)
        if journal is not None:
            stack.enter_context(journal)
        cache = stack.enter_context(EmbeddingCache(settings.state_path / EMBEDDINGS_DB)) if journal else None
        embedder = make_embedder(settings, encoder, cache)
        corrected = corrected_from(journal) if journal is not None else None
        work = gather(layouts, settings, embedder, named=bool(dataset), corrected=corrected, found=found)
        freeze_survivors()  # the model and the class indexes out of the collector's way for the run
        interrupt.check()
        stack.enter_context(progress := progress_bar("sorting", TimeRemainingColumn()))
        task = progress.add_task("sort", total=sum(len(item.files) for item in work))

        def record(outcome: Outcome) -> None:
            _report(outcome, outcomes, as_json=as_json)
            progress.advance(task)

        try:
            run(
                work,
                settings,
                embedder,
                journal=None if dry_run else journal,
                dry_run=dry_run,
                on_outcome=record,
                decoders=decoders,
                stop=interrupt.requested,
                placing=placing,
            )
        except OSError as exc:  # the first file that could not be moved (disk full, permissions): one line
            where = f" {exc.filename!r}" if exc.filename else ""
            raise DatasetError(
                f"stopped: cannot move{where}: {exc.strerror or exc}; the rest stays in Images/"
            ) from None


def _report(outcome: Outcome, outcomes: list[Outcome], *, as_json: bool) -> None:
    """One file placed (or that would be): kept for the summary, printed with --json."""
    outcomes.append(outcome)
    if as_json:
        sys.stdout.write(json_line(outcome.as_dict()) + "\n")
        sys.stdout.flush()


def _sort_on_ray(
    interrupt: Interrupt,
    outcomes: list[Outcome],
    settings: Settings,
    layouts: list[DatasetLayout],
    named: bool,
    dry_run: bool,
    as_json: bool,
    address: str | None,
) -> None:
    """``clipsort sort --engine ray``: the cluster classifies, this process places (see sort.cluster)."""
    import tempfile

    import ray

    from clipsort.encode.embedcache import EMBEDDINGS_DB, EmbeddingCache
    from clipsort.encode.factory import make_encoder
    from clipsort.learn.corrections import corrected_from
    from clipsort.sort.cluster import connect, prepare

    names = [layout.name for layout in layouts]
    try:
        started = connect(address)
    except ConnectionError as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address!r}: {exc}") from None
    with contextlib.ExitStack() as stack:
        if started:
            stack.callback(ray.shutdown)
        interrupt.check()
        encoder = make_encoder(settings) if needs_clip(settings, names) else None
        interrupt.check()
        journal = journal_if_any(settings) if dry_run else open_journal(settings, layouts)
        if journal is not None:
            stack.enter_context(journal)
        cache = stack.enter_context(EmbeddingCache(settings.state_path / EMBEDDINGS_DB)) if journal else None
        # A dry run keeps its shards in a temporary folder: it creates nothing in the state folder.
        state = Path(stack.enter_context(tempfile.TemporaryDirectory())) if dry_run else settings.state_path
        run, identity = prepare(
            settings,
            layouts,
            encoder=encoder,
            journal=journal,
            cache=cache,
            corrected=corrected_from(journal) if journal is not None else None,
            named=named,
            state=state,
            dry_run=dry_run,
            on_outcome=functools.partial(_report, outcomes=outcomes, as_json=as_json),
            phases=stack.enter_context(PhaseBars()),
            stop=interrupt.requested.is_set,
        )
        interrupt.check()
        try:
            tally = run.run(identity)
        except OSError as exc:  # the first file that could not be moved (disk full, permissions): one line
            where = f" {exc.filename!r}" if exc.filename else ""
            raise DatasetError(
                f"stopped: cannot move{where}: {exc.strerror or exc}; rerun the same command to go on"
            ) from None
    if tally.already_placed or tally.gone or tally.changed or tally.left or tally.shards_skipped:
        typer.echo(
            f"clipsort: {tally.already_placed} already placed, {tally.gone} gone, {tally.changed} changed "
            f"while classified, {tally.left} left for the next run, {tally.shards_skipped} shard(s) resumed",
            err=True,
        )


class PhaseBars:
    """A progress bar per phase of a cluster run, with its files per second (stderr, on a terminal)."""

    def __init__(self) -> None:
        self.bars = progress_bar(
            "ray", TextColumn("{task.description}"), FilesPerSecond(), TimeRemainingColumn()
        )
        self.task: TaskID | None = None

    def begin(self, phase: str, total: int) -> None:
        if self.task is not None:
            self.bars.update(self.task, visible=False)
        self.task = self.bars.add_task(phase, total=total)

    def advance(self, files: int) -> None:
        if self.task is not None:
            self.bars.advance(self.task, files)

    def __enter__(self) -> PhaseBars:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(None, None, None)


class FilesPerSecond(ProgressColumn):
    """The phase's rate, as rich measures it."""

    def render(self, task: Task) -> Text:
        return Text("" if task.speed is None else f"{task.speed:,.0f} files/s")


def summary(outcomes: list[Outcome], *, dry_run: bool) -> Table:
    """Files per dataset and class (Review/ and Rejected/ counted apart)."""
    counts = Counter(
        (
            item.dataset,
            item.decision.label if item.status == "sorted" and item.decision else f"({item.status})",
        )
        for item in outcomes
    )
    table = text_table(
        "dataset", "class", "files", labels=2, title="would sort (dry run)" if dry_run else "sorted"
    )
    for (dataset, label), count in sorted(counts.items()):
        table.add_row(dataset, label, str(count))
    table.add_row("", "total", str(len(outcomes)), style="bold")
    return table


@app.command("eval")
@user_errors
def evaluate_modes(
    dataset: DatasetOption = None,
    modes: Annotated[
        list[str] | None,
        typer.Option(
            "--modes", help=f"Modes to compare (repeatable; default {', '.join(EVALUATED_MODES)}, finetuned)."
        ),
    ] = None,
    folds: Annotated[int, typer.Option(min=2, help="Cross-validation folds.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write PNG charts into this folder.")
    ] = None,
    config: ConfigOption = None,
    root: RootOption = None,
    model: ModelOption = None,
) -> None:
    """Cross-validated accuracy of every mode on the reference images, and the mode to use."""
    known = (*EVALUATED_MODES, "finetuned")
    unknown = [mode for mode in modes or () if mode not in known]
    if unknown:
        raise ConfigError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    chosen = [mode for mode in modes or EVALUATED_MODES if mode in EVALUATED_MODES]
    with_checkpoint = not modes or "finetuned" in modes
    settings = settings_from(config, root=root, model=model)
    require_data_root(settings.root)
    layouts = select(settings.root, dataset or [])
    if not modes and not needs_clip(settings, [layout.name for layout in layouts]):
        chosen = []  # every dataset is fine-tuned: its checkpoint's own report, and no CLIP model
    if chosen:
        require_available(settings.model)
    from clipsort.classify.classindex import build_class_index
    from clipsort.encode.embedcache import EMBEDDINGS_DB, EmbeddingCache
    from clipsort.encode.factory import make_embedder, make_encoder
    from clipsort.learn.corrections import examples as corrected_examples
    from clipsort.learn.evaluation import add_finetuned, checkpoint_gate, evaluate, write_report

    results = [checkpoint_only(settings, layout) for layout in layouts] if not chosen else []
    indexes = []
    with contextlib.ExitStack() as stack:
        journal = journal_if_any(settings)
        if journal is not None:
            stack.enter_context(journal)
        cache = stack.enter_context(EmbeddingCache(settings.state_path / EMBEDDINGS_DB)) if journal else None
        encoder = make_encoder(settings) if chosen else None
        embedder = make_embedder(settings, encoder, cache)
        for layout in layouts if chosen else []:
            own = settings.for_dataset(layout.name)
            learned = corrected_examples(journal, layout, embedder, settings) if journal else []
            index = build_class_index(layout, embedder, own.prompt_templates, own.descriptions, learned)
            indexes.append((own, index))
    with progress_bar("evaluating") as progress:
        for own, index in indexes:
            task = progress.add_task(index.dataset, total=folds * len(chosen))
            results.append(
                evaluate(
                    index,
                    own,
                    embedder.clip.logit_scale,
                    modes=chosen,
                    folds=folds,
                    step=functools.partial(progress.advance, task),
                )
            )
    for found in results:
        if 0 < found.folds < folds:
            typer.echo(
                f"clipsort: note: {found.dataset}: {found.folds} folds instead of {folds}, since no class "
                f"has more than {found.folds} reference images (each fold needs one of a class)",
                err=True,
            )
        checkpoint = current_checkpoint(checkpoints_of(settings.state_path, found.dataset))
        if checkpoint is not None and with_checkpoint and "finetuned" not in found.modes:
            layout = next(layout for layout in layouts if layout.name == found.dataset)
            add_finetuned(found, checkpoint, checkpoint_gate(settings, layout, checkpoint))
        charts = write_report(found, report) if report is not None else []
        if as_json:
            sys.stdout.write(json.dumps(found.as_dict() | {"charts": [str(c) for c in charts]}) + "\n")
        else:
            show_evaluation(found, charts)


def checkpoint_only(settings: Settings, layout: DatasetLayout) -> EvalReport:
    """A fine-tuned dataset's report from its checkpoint's validation split alone."""
    from clipsort.classify.classindex import class_folders
    from clipsort.learn.evaluation import checkpoint_gate, checkpoint_report

    checkpoint = current_checkpoint(checkpoints_of(settings.state_path, layout.name))
    if checkpoint is None:
        raise NoClassesError(
            f"dataset {layout.name!r} has no fine-tuned checkpoint yet: run "
            f"`clipsort train -d {layout.name}`, or name CLIP modes to compare with --modes"
        )
    classes = [folder.name for folder in class_folders(layout)]
    return checkpoint_report(layout.name, classes, checkpoint, checkpoint_gate(settings, layout, checkpoint))


def show_evaluation(found: EvalReport, charts: list[Path]) -> None:
    """The evaluation of one dataset as tables."""
    console = Console()
    table = text_table(
        "mode",
        "accuracy",
        labels=1,
        title=f"{found.dataset}: {found.folds}-fold accuracy on the reference images"
        if found.folds
        else f"{found.dataset}: the checkpoint's accuracy on its validation split",
    )
    for name, result in found.modes.items():
        table.add_row(
            name + (" (recommended)" if name == found.recommended else ""), f"{result.accuracy:.1%}"
        )
    console.print(table)
    if found.why:
        console.print(f"recommended {found.recommended}: {found.why}")
    best = found.modes[found.recommended]
    classes = text_table("class", "precision", "recall", labels=1, title=f"per class, {found.recommended}")
    for name in found.classes:
        classes.add_row(name, f"{best.precision.get(name, 0.0):.1%}", f"{best.recall.get(name, 0.0):.1%}")
    console.print(classes)
    if found.corrections:
        learned = text_table(
            "mode",
            "examples",
            "without corrections",
            "with the others",
            labels=1,
            title="on the corrected examples (files a person moved to another class)",
        )
        for name, effect in found.corrections.items():
            learned.add_row(
                name, str(int(effect["examples"])), f"{effect['without']:.1%}", f"{effect['with']:.1%}"
            )
        console.print(learned)
    gates = {name: result.gate for name, result in found.modes.items() if result.gate is not None}
    if gates:
        gated = text_table(
            "mode",
            "rule",
            "references kept",
            "negatives kept out",
            labels=2,
            title='the "none of these" gate on held-out pictures (negatives: Clases/_none/)',
        )
        for name, gate in gates.items():
            out = "no negatives" if gate.negatives_kept_out is None else f"{gate.negatives_kept_out:.1%}"
            gated.add_row(name, gate.rule, f"{gate.references_kept:.1%}", out)
        console.print(gated)
        curved = {name: gate.curve for name, gate in gates.items() if gate.curve}
        if curved:
            knob = text_table(
                "mode",
                "unknown_held",
                "in-class held",
                "strangers kept out",
                labels=2,
                title="the gate's knob, from the references (strangers: each class in turn left out)",
            )
            for name, curve in curved.items():
                for point in curve:
                    kept = "-" if point.strangers_kept_out is None else f"{point.strangers_kept_out:.1%}"
                    knob.add_row(name, f"{point.unknown_held:g}", f"{point.in_class_held:.1%}", kept)
            console.print(knob)
    for chart in charts:
        console.print(f"wrote {chart}")


@app.command("train")
@user_errors
def train_model(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Dataset whose Clases/ to learn.")],
    base: Annotated[
        str, typer.Option(help="Image-classification backbone: hub name or local folder.")
    ] = DEFAULT_BASE,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping may end sooner).")] = 10,
    learning_rate: Annotated[float, typer.Option(min=0.0, help="AdamW peak learning rate.")] = 5e-5,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    patience: Annotated[int, typer.Option(min=1, help="Epochs without improvement before stopping.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the split, the augmentation and the new head.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Publish here (default <state_dir>/checkpoints/<dataset>).")
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Publish even if the current checkpoint does better on the same validation split."
        ),
    ] = False,
    config: ConfigOption = None,
    root: RootOption = None,
    model: ModelOption = None,
) -> None:
    """Fine-tune an image classifier on Clases/<class>/ and publish it atomically as the current one.

    A run is published only if it is at least as accurate as the current checkpoint on the same
    validation pictures (exit 1 otherwise, the current one stays), unless --force.
    """
    settings = settings_from(config, root=root, model=model)
    require_data_root(settings.root)
    [layout] = select(settings.root, [dataset])
    refuse_if_served(settings.state_path, settings.root, "train")  # the daemon hot-swaps checkpoints
    require_available(base, "base model", "--base")  # transformers would retry for two minutes
    from clipsort.decode.images import DecodeLimits
    from clipsort.encode.encoder import resolve_device
    from clipsort.learn.training import SMALL_VALIDATION, TrainOptions, train

    options = TrainOptions(
        base=base,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        patience=patience,
        seed=seed,
        device=resolve_device(settings.device),
    )
    limits = DecodeLimits.from_settings(settings)
    with progress_bar("training", TextColumn("{task.fields[accuracy]}")) as progress:
        task = progress.add_task("train", total=epochs, accuracy="")

        def epoch_done(phase: str, accuracy: float) -> None:
            progress.update(task, advance=1, accuracy=f"validation {accuracy:.1%}")

        result = train(
            layout,
            options,
            out or checkpoints_of(settings.state_path, dataset),
            limits,
            epoch_done,
            force=force,
        )
    if result.validation_size < SMALL_VALIDATION:
        typer.echo(
            f"clipsort: warning: the validation split holds only {result.validation_size} picture(s), "
            f"so its accuracy moves in steps of {1 / max(1, result.validation_size):.0%}; "
            "more reference images per class make the comparison meaningful",
            err=True,
        )
    measured = f"validation accuracy {result.validation_accuracy:.1%} (epoch {result.best_epoch})"
    if result.current_accuracy is not None:
        measured += f", current checkpoint {result.current_accuracy:.1%} on the same pictures"
    if result.checkpoint is None:
        typer.echo(f"{dataset}: {measured}; not published, the current checkpoint stays (--force publishes)")
        raise typer.Exit(NOT_RUNNING)
    typer.echo(f"{dataset}: {measured}; published {result.checkpoint}")


@app.command("demo-model")
@user_errors
def demo_model(
    folder: Annotated[Path, typer.Argument(help="New folder to write the model into.")],
) -> None:
    """Train a small demonstration CLIP on generated pictures, offline, for Data/example (about a minute).

    It knows six colours (red, green, blue, yellow, purple, orange) and three
    shapes, nothing else: enough to watch the daemon sort the shipped example
    without a network. Use it with --model FOLDER.
    """
    if folder.exists():
        raise ConfigError(f"{str(folder)!r} exists already; name a new folder for the demonstration model")
    parent = folder.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{str(parent)!r} is not a folder")
    # The folders leading to it are made (`clipsort demo-model models/demo` on a fresh clone).
    ensure_dir(parent, boundary=next(above for above in parent.parents if above.is_dir()))
    typer.echo(f"training a demonstration CLIP into {folder} (about a minute on 2 cores; once)", err=True)
    from clipsort.learn import demo

    staging = parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.partial"
    ensure_dir(staging, boundary=parent)
    try:
        with progress_bar("training the demonstration model") as progress:
            task = progress.add_task("train", total=demo.STEPS)
            demo.train_tiny_clip(staging, progress=lambda done: progress.update(task, completed=done))
        rename_noreplace(staging, folder.absolute())
    except BaseException:
        discard_tree(staging, boundary=parent)
        raise
    typer.echo(f"wrote {folder}; try it: clipsort run --root Data --model {folder}")
