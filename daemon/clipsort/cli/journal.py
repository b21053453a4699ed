"""``clipsort history``, ``undo`` and ``corrections``: reading and mending what the journal holds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from clipsort.cli.app import (
    NOT_RUNNING,
    ConfigOption,
    OneDataset,
    RootOption,
    SinceOption,
    app,
    existing_journal,
    fitted_table,
    relative_to,
    settings_from,
    short_time,
    since_time,
    text_table,
    user_errors,
)
from clipsort.errors import JournalError
from clipsort.logs import json_line, local_time
from clipsort.store.instance import refuse_if_served
from clipsort.store.journal import Entry
from clipsort.store.undo import choose
from clipsort.store.undo import undo as undo_entry

HISTORY_LIMIT = 50  # the newest decisions shown by default: a long-lived journal holds many thousands


@app.command()
@user_errors
def history(
    dataset: OneDataset = None,
    since: SinceOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help=f"The newest N decisions (default {HISTORY_LIMIT}; 0: all).")
    ] = HISTORY_LIMIT,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per decision on stdout.")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """List clipsort's decisions and moves, oldest first, from its journal (the newest 50 by default)."""
    settings = settings_from(config, root=root)
    with existing_journal(settings) as journal:
        entries = journal.entries(dataset=dataset, since=since_time(since), last=limit or None)
        total = (
            len(entries) if not limit or len(entries) < limit else journal.count(dataset, since_time(since))
        )
    if as_json:
        for entry in entries:
            typer.echo(json_line(entry.as_dict()))
        return
    console = Console()
    rows = [
        (
            short_time(entry.created),
            entry.intent.label or f"({entry.intent.placement})",
            f"{entry.intent.top3[0][1]:.2f}" if entry.intent.top3 else "",
            # Review/'s reason (unknown, uncertain) beside the state: a column more would cut the path.
            f"{entry.state} ({entry.reason})" if entry.intent.placement == "review" else entry.state,
            # Relative to the root (whose path every row would repeat): cut from the left to fit the
            # terminal, as the last column; --json has both paths in full.
            relative_to(where_now(entry), settings.root),
        )
        for entry in entries
    ]
    headers = ("time", "class", "score", "state", "file (where it is now)")
    table = fitted_table(headers, rows, width=console.width, flexible=4, numbers=("score",), cut_left=True)
    console.print(table)
    if total > len(entries):
        console.print(f"the newest {len(entries)} of {total}; --limit N shows more, --limit 0 all")


def where_now(entry: Entry) -> Path:
    """Where the file of ``entry`` is now, as far as the journal knows: placed, or back in the inbox."""
    if entry.destination is None or entry.state in ("planned", "undone"):
        return entry.intent.source
    return entry.destination


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
    refuse_if_served(settings.state_path, settings.root, "undo")
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
            typer.echo(json_line(dataclasses.asdict(item) | {"path": str(item.path)}))
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
