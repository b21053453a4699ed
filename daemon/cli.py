"""The ``clipsort`` command line: the edge where flags become settings and errors become exit codes."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from daemon import __version__, demo
from daemon.catalog import decode_limits, make_embedder, make_encoder
from daemon.classindex import build_class_index
from daemon.config import Settings, load_settings, render_config_toml
from daemon.corrections import examples as corrected_examples
from daemon.embedcache import EMBEDDINGS_DB, EmbeddingCache
from daemon.encoder import resolve_device
from daemon.errors import ClipsortError, ConfigError, DatasetError, JournalError
from daemon.evaluation import MODES, EvalReport, add_finetuned, evaluate, write_report
from daemon.journal import JOURNAL_DB, Journal
from daemon.layout import CLASSES_DIR, INBOX_DIR, SORTED_DIR, DatasetLayout, select, warn_unknown_tables
from daemon.logs import configure_logging, local_time
from daemon.mover import discard_tree, ensure_dir, make_state_dir, rename_noreplace, write_new
from daemon.pipeline import Outcome
from daemon.recovery import recover
from daemon.service import run_service
from daemon.sorter import gather, run
from daemon.status import is_live, read_status
from daemon.training import (
    DEFAULT_BASE,
    SMALL_VALIDATION,
    TrainOptions,
    checkpoints_of,
    current_checkpoint,
    train,
)
from daemon.undo import choose, parse_since
from daemon.undo import undo as undo_entry

app = typer.Typer(
    name="clipsort",
    help="Sort images into class folders by what they show, with a CLIP model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help: the rich one prints a type such as <bool> beside every flag.
    rich_markup_mode=None,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Config file (default ./config.toml, else /etc/clipsort/config.toml).",
        dir_okay=False,
    ),
]
RootOption = Annotated[Path | None, typer.Option("--root", help="Data root holding one folder per dataset.")]
DatasetOption = Annotated[
    list[str] | None,
    typer.Option("--dataset", "-d", metavar="NAME", help="A dataset (repeatable; default all of them)."),
]
ModelOption = Annotated[
    str | None, typer.Option("--model", metavar="NAME_OR_PATH", help="CLIP model: hub name or local folder.")
]

P = ParamSpec("P")
R = TypeVar("R")
USER_ERROR = 2
NOT_RUNNING = 1


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Report a :class:`ClipsortError` as one line on stderr and exit 2."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ClipsortError as exc:
            typer.echo(f"clipsort: error: {exc}", err=True)
            raise typer.Exit(USER_ERROR) from None

    return wrapper


def progress_bar(label: str, *columns: ProgressColumn) -> Progress:
    """A progress bar on stderr, shown only on a terminal (stdout stays for --json)."""
    terminal = Console(stderr=True)
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        *columns,
        console=terminal,
        disable=not terminal.is_terminal,
        transient=True,
    )


def settings_from(config: Path | None, **flags: object) -> Settings:
    """Settings from every source, with logging configured to match."""
    settings = load_settings(config, flags)
    configure_logging(settings.log_format, settings.log_level)
    warn_unknown_tables(settings.datasets, settings.root)
    return settings


@app.command()
@user_errors
def sort(
    dataset: DatasetOption = None,
    mode: Annotated[str | None, typer.Option(help="reference, text, mixed or finetuned.")] = None,
    aggregate: Annotated[str | None, typer.Option(help="Reference mode: max or avg.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and report, move nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per decision on stdout.")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
    model: ModelOption = None,
) -> None:
    """Classify every image in the datasets' Images/ folders once, and move each into Dataset/<class>/."""
    settings = settings_from(config, root=root, model=model, mode=mode, aggregate=aggregate)
    layouts = select(settings.root, dataset or [])  # before the slow model load
    encoder = make_encoder(settings)
    outcomes: list[Outcome] = []
    with contextlib.ExitStack() as stack:
        # A real run journals and caches vectors (so the daemon can learn from corrections later).
        # A dry run creates nothing, but reads the corrections an existing journal holds, so that
        # it decides as the real run would.
        journal = journal_if_any(settings) if dry_run else open_journal(settings, layouts)
        if journal is not None:
            stack.enter_context(journal)
        cache = stack.enter_context(EmbeddingCache(settings.state_path / EMBEDDINGS_DB)) if journal else None
        embedder = make_embedder(settings, encoder, cache)
        work = gather(layouts, settings, embedder, named=bool(dataset), journal=journal)
        stack.enter_context(progress := progress_bar("sorting", TimeRemainingColumn()))
        task = progress.add_task("sort", total=sum(len(item.files) for item in work))

        def record(outcome: Outcome) -> None:
            outcomes.append(outcome)
            if as_json:
                sys.stdout.write(json.dumps(outcome.as_dict(), ensure_ascii=False) + "\n")
                sys.stdout.flush()
            progress.advance(task)

        run(
            work, settings, embedder, journal=None if dry_run else journal, dry_run=dry_run, on_outcome=record
        )
    Console(stderr=as_json).print(summary(outcomes, dry_run=dry_run))


def text_table(*columns: str, labels: int | None = None, title: str | None = None) -> Table:
    """A table whose first ``labels`` columns (all by default) are text, the rest right-aligned numbers."""
    table = Table(title=title)
    for k, column in enumerate(columns):
        table.add_column(column, justify="left" if labels is None or k < labels else "right")
    return table


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
            "--modes", help=f"Modes to compare (repeatable; default {', '.join(MODES)}, finetuned)."
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
    known = (*MODES, "finetuned")
    unknown = [mode for mode in modes or () if mode not in known]
    if unknown:
        raise ConfigError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    chosen = [mode for mode in modes or MODES if mode in MODES]
    with_checkpoint = not modes or "finetuned" in modes
    settings = settings_from(config, root=root, model=model)
    layouts = select(settings.root, dataset or [])
    encoder = make_encoder(settings)
    with contextlib.ExitStack() as stack:
        journal = journal_if_any(settings)
        if journal is not None:
            stack.enter_context(journal)
        cache = stack.enter_context(EmbeddingCache(settings.state_path / EMBEDDINGS_DB)) if journal else None
        embedder = make_embedder(settings, encoder, cache)
        indexes = []
        for layout in layouts:
            own = settings.for_dataset(layout.name)
            learned = corrected_examples(journal, layout, embedder, settings) if journal else []
            index = build_class_index(layout, embedder, own.prompt_templates, own.descriptions, learned)
            indexes.append((own, index))
    results = []
    with progress_bar("evaluating") as progress:
        for own, index in indexes:
            task = progress.add_task(index.dataset, total=folds * len(chosen))
            results.append(
                evaluate(
                    index,
                    own,
                    encoder.logit_scale,
                    modes=chosen,
                    folds=folds,
                    step=functools.partial(progress.advance, task),
                )
            )
    for found in results:
        if found.folds < folds:
            typer.echo(
                f"clipsort: note: {found.dataset}: {found.folds} folds instead of {folds}, since no class "
                f"has more than {found.folds} reference images (each fold needs one of a class)",
                err=True,
            )
        checkpoint = current_checkpoint(checkpoints_of(settings.state_path, found.dataset))
        if checkpoint is not None and with_checkpoint:
            add_finetuned(found, checkpoint)
        charts = write_report(found, report) if report is not None else []
        if as_json:
            sys.stdout.write(json.dumps(found.as_dict() | {"charts": [str(c) for c in charts]}) + "\n")
        else:
            show_evaluation(found, charts)


def show_evaluation(found: EvalReport, charts: list[Path]) -> None:
    """The evaluation of one dataset as tables."""
    console = Console()
    table = text_table(
        "mode",
        "accuracy",
        labels=1,
        title=f"{found.dataset}: {found.folds}-fold accuracy on the reference images",
    )
    for name, result in found.modes.items():
        table.add_row(
            name + (" (recommended)" if name == found.recommended else ""), f"{result.accuracy:.1%}"
        )
    console.print(table)
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
    [layout] = select(settings.root, [dataset])
    options = TrainOptions(
        base=base,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        patience=patience,
        seed=seed,
        device=resolve_device(settings.device),
    )
    limits = decode_limits(settings)
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


def open_journal(settings: Settings, layouts: list[DatasetLayout]) -> Journal:
    """The journal in the state folder, with any interrupted move settled first."""
    make_state_dir(settings.state_path)
    journal = Journal(settings.state_path)
    recover(journal, layouts)
    return journal


def journal_if_any(settings: Settings) -> Journal | None:
    """The journal, if anything was sorted with this state folder; never creates one."""
    return Journal(settings.state_path) if (settings.state_path / JOURNAL_DB).is_file() else None


def existing_journal(settings: Settings) -> Journal:
    """The journal, which must already exist (history, undo and corrections never create one)."""
    journal = journal_if_any(settings)
    if journal is None:
        raise JournalError(f"no journal in {str(settings.state_path)!r}: nothing has been sorted there yet")
    return journal


def since_time(since: str | None) -> float | None:
    """A --since value as epoch seconds (None when not given)."""
    return None if since is None else parse_since(since, time.time())


SinceOption = Annotated[
    str | None,
    typer.Option("--since", help="From this time on: 2026-11-26T14:00, or an age like 30m, 2h, 3d."),
]
OneDataset = Annotated[str | None, typer.Option("--dataset", "-d", help="Only this dataset.")]


@app.command()
@user_errors
def history(
    dataset: OneDataset = None,
    since: SinceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per decision on stdout.")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """List clipsort's decisions and moves, oldest first, from its journal."""
    settings = settings_from(config, root=root)
    with existing_journal(settings) as journal:
        entries = journal.entries(dataset=dataset, since=since_time(since))
    if as_json:
        for entry in entries:
            typer.echo(json.dumps(entry.as_dict(), ensure_ascii=False))
        return
    table = text_table("time", "dataset", "file", "class", "score", "state", "now at")
    for entry in entries:
        score = entry.intent.top3[0][1] if entry.intent.top3 else None
        table.add_row(
            local_time(entry.created),
            entry.intent.dataset,
            entry.intent.source.name,
            entry.intent.label or f"({entry.intent.placement})",
            "" if score is None else f"{score:.2f}",
            entry.state,
            "" if entry.destination is None else str(entry.destination),
        )
    Console().print(table)


@app.command()
@user_errors
def undo(
    file: Annotated[Path | None, typer.Argument(help="A file clipsort moved (its path now).")] = None,
    last: Annotated[int | None, typer.Option("--last", min=1, help="The newest N moves.")] = None,
    since: SinceOption = None,
    dataset: OneDataset = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="Move into this class instead of back to Images/ (a correction)."),
    ] = None,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Move files clipsort placed back to Images/ (default: the last one), or with --to into a class."""
    settings = settings_from(config, root=root)
    if sum(x is not None for x in (file, last, since)) > 1:
        raise JournalError("give one of FILE, --last or --since")
    with existing_journal(settings) as journal:
        chosen = choose(
            journal,
            dataset=dataset,
            last=1 if file is None and last is None and since is None else last,
            since=since_time(since),
            file=file,
        )
        results = [undo_entry(entry, journal, settings.root, to) for entry in chosen]
    for result in results:
        where = "" if result.path is None else f" -> {result.path}"
        typer.echo(f"{result.entry.destination}{where}: {result.note}")
    if any(result.path is None for result in results):
        raise typer.Exit(NOT_RUNNING)


corrections_app = typer.Typer(
    help="Files a person moved to another class folder: what clipsort learned from them.",
    no_args_is_help=True,
)
app.add_typer(corrections_app, name="corrections")
ClassOption = Annotated[str | None, typer.Option("--class", help="Only corrections to this class.")]


@corrections_app.command("list")
@user_errors
def corrections_list(
    dataset: OneDataset = None,
    label: ClassOption = None,
    since: SinceOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per correction on stdout.")
    ] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """List the corrections in the journal, oldest first."""
    settings = settings_from(config, root=root)
    with existing_journal(settings) as journal:
        found = journal.corrections(dataset=dataset, label=label, since=since_time(since))
    if as_json:
        for item in found:
            typer.echo(json.dumps(dataclasses.asdict(item) | {"path": str(item.path)}, ensure_ascii=False))
        return
    table = text_table("time", "dataset", "file", "was", "now")
    for item in found:
        table.add_row(
            local_time(item.created), item.dataset, str(item.path), item.old_label or "", item.new_label
        )
    Console().print(table)


@corrections_app.command("forget")
@user_errors
def corrections_forget(
    dataset: OneDataset = None,
    label: ClassOption = None,
    since: SinceOption = None,
    every: Annotated[bool, typer.Option("--all", help="Forget every correction.")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Stop learning from corrections (the files stay put); a running daemon follows within seconds."""
    if not every and dataset is None and label is None and since is None:
        raise JournalError("say which corrections to forget: --dataset, --class, --since, or --all")
    settings = settings_from(config, root=root)
    with existing_journal(settings) as journal:
        count = journal.forget(dataset=dataset, label=label, since=since_time(since))
    typer.echo(f"forgot {count} correction{'' if count == 1 else 's'}")


@app.command("run")
@user_errors
def run_daemon(
    config: ConfigOption = None,
    root: RootOption = None,
    model: ModelOption = None,
) -> None:
    """Run the daemon: watch every Data/<dataset>/Images/ and sort what arrives (systemd-ready)."""
    flags: dict[str, object] = {"root": root, "model": model}
    settings = settings_from(config, **flags)
    raise typer.Exit(run_service(settings, config, flags))


@app.command()
@user_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
    model: ModelOption = None,
) -> None:
    """Show what the running daemon is doing (exit 1 when none is running)."""
    settings = settings_from(config, root=root, model=model)
    found = read_status(settings.state_path)
    if found is None or not is_live(found):
        typer.echo(f"clipsort: no daemon is running (no fresh status in {settings.state_path})", err=True)
        raise typer.Exit(NOT_RUNNING)
    if as_json:
        typer.echo(json.dumps(found.as_dict(), indent=2))
        return
    uptime = int(time.time() - found.started_at)
    console = Console()
    console.print(
        f"clipsort {found.version} pid {found.pid}, up {uptime // 3600}h{uptime // 60 % 60:02d}m"
        f"{uptime % 60:02d}s, {found.model} on {found.device}"
    )
    table = text_table(
        "dataset", "classes", "sorted", "review", "rejected", "queued", "corrections", labels=1
    )
    for name, counts in found.datasets.items():
        classes = "waiting" if counts.waiting_for_classes else str(counts.classes)
        table.add_row(
            name,
            classes,
            str(counts.sorted),
            str(counts.review),
            str(counts.rejected),
            str(counts.queued),
            str(sum(counts.corrections.values())),
        )
    console.print(table)
    console.print(f"last error: {found.last_error or 'none'}")


@app.command()
@user_errors
def init(
    name: Annotated[str | None, typer.Argument(help="Dataset to create under the data root.")] = None,
    config: ConfigOption = None,
    root: RootOption = None,
    model: ModelOption = None,
) -> None:
    """Create Data/<NAME>/{Clases,Images,Dataset} and a commented config.toml if none exists."""
    # The file --config names is the one being created, so it need not exist yet.
    settings = settings_from(config if config is None or config.exists() else None, root=root, model=model)
    target = Path("config.toml") if config is None else config
    try:
        written = write_new(target, render_config_toml())
    except OSError as exc:
        raise ConfigError(f"cannot create config file {str(target)!r}: {exc.strerror}") from None
    if written:
        typer.echo(f"wrote {target}")
    if name is None:
        return
    if not name or name.startswith(".") or "/" in name or name in ("..",):
        raise DatasetError(f"invalid dataset name {name!r}: use a plain folder name")
    dataset = settings.root / name
    for part in (CLASSES_DIR, INBOX_DIR, SORTED_DIR):
        ensure_dir(dataset / part, boundary=settings.root)
    typer.echo(f"created {dataset}/{{{CLASSES_DIR},{INBOX_DIR},{SORTED_DIR}}}")
    typer.echo(
        f"next: a folder per class in {dataset / CLASSES_DIR}, images to sort in {dataset / INBOX_DIR}"
    )


@app.command("demo-model")
@user_errors
def demo_model(
    folder: Annotated[Path, typer.Argument(help="New folder to write the model into.")],
) -> None:
    """Train a small demonstration CLIP on generated pictures, offline, for Data/example (about 20 s).

    It knows six colours (red, green, blue, yellow, purple, orange) and three
    shapes, nothing else: enough to watch the daemon sort the shipped example
    without a network. Use it with --model FOLDER.
    """
    if folder.exists():
        raise ConfigError(f"{str(folder)!r} exists already; name a new folder for the demonstration model")
    parent = folder.absolute().parent
    if not parent.is_dir():
        raise ConfigError(f"folder {str(parent)!r} does not exist")
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


def show_version(value: bool) -> None:
    """--version: print the version and stop."""
    if value:
        typer.echo(f"clipsort {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Sort images into class folders by what they show, with a CLIP model."""


def main() -> None:
    """Console-script entry point."""
    app()
