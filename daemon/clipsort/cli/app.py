"""What every ``clipsort`` command shares: the app, its options, settings, errors as exit codes.

Only light modules are imported here and at the top of the command modules
(settings, journal, folders, tables): commands that classify nothing start
without loading the model stack (torch, transformers), and the ones that do
import it inside their own bodies.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.table import Table

from clipsort import __version__
from clipsort.config import Settings, load_settings
from clipsort.errors import ClipsortError, JournalError
from clipsort.layout import DatasetLayout, warn_unknown_tables
from clipsort.logs import configure_logging
from clipsort.store.journal import JOURNAL_DB, Journal
from clipsort.store.mover import make_state_dir
from clipsort.store.recovery import recover
from clipsort.times import parse_since

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

SinceOption = Annotated[
    str | None,
    typer.Option("--since", help="From this time on: 2026-11-26T14:00, or an age like 30m, 2h, 3d."),
]

OneDataset = Annotated[str | None, typer.Option("--dataset", "-d", help="Only this dataset.")]

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
    # matplotlib (eval's and train's charts) keeps its font cache in the state folder, not $HOME,
    # which a hardened service may not write.
    os.environ.setdefault("MPLCONFIGDIR", str(settings.state_path / "matplotlib"))
    warn_unknown_tables(settings.datasets, settings.root)
    return settings


def text_table(*columns: str, labels: int | None = None, title: str | None = None) -> Table:
    """A table whose first ``labels`` columns (all by default) are text, the rest right-aligned numbers."""
    table = Table(title=title)
    for k, column in enumerate(columns):
        table.add_column(column, justify="left" if labels is None or k < labels else "right")
    return table


COLUMN_GAP = 2  # the spaces between two columns of a fitted table


def fitted_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    width: int,
    flexible: int,
    numbers: Sequence[str] = (),
    cut_left: bool = False,
) -> Table:
    """A borderless table of ``rows`` that fits ``width`` columns, each row on one line.

    Every column is as wide as its widest cell but column ``flexible``, which takes what is left
    and whose longer cells are cut (from the left with ``cut_left``: a path's end names its file).
    """
    widths = [max([len(header), *(len(row[k]) for row in rows)]) for k, header in enumerate(headers)]
    room = width - COLUMN_GAP * (len(headers) - 1) - sum(widths) + widths[flexible]
    widths[flexible] = max(len(headers[flexible]), min(widths[flexible], room))
    table = Table(box=None, pad_edge=False, padding=(0, COLUMN_GAP // 2), header_style="bold")
    for header, size in zip(headers, widths, strict=True):
        table.add_column(header, justify="right" if header in numbers else "left", no_wrap=True, width=size)
    for row in rows:
        cells = list(row)
        if len(cells[flexible]) > widths[flexible]:
            cut = widths[flexible] - 1
            cells[flexible] = "…" + cells[flexible][-cut:] if cut_left else cells[flexible][:cut] + "…"
        table.add_row(*cells)
    return table


def shorten_left(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut from the left (a path's end names its file)."""
    return text if len(text) <= width else "…" + text[len(text) - width + 1 :]


def relative_to(path: Path, root: Path) -> str:
    """``path`` relative to the data root where it is under it, else as it is."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def short_time(epoch: float) -> str:
    """``MM-DD HH:MM:SS`` in local time: a table row's time, the year and zone left to the header."""
    return datetime.fromtimestamp(epoch).astimezone().strftime("%m-%d %H:%M:%S")


def open_journal(settings: Settings, layouts: list[DatasetLayout]) -> Journal:
    """The journal in the state folder, with any interrupted move concluded first."""
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
