"""``clipsort run``, ``status`` and ``init``: the daemon, what it is doing, and a new dataset."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from clipsort.cli import preflight
from clipsort.cli.app import (
    NOT_RUNNING,
    ConfigOption,
    ModelOption,
    RootOption,
    app,
    fitted_table,
    settings_from,
    shorten_left,
    user_errors,
)
from clipsort.config import render_config_toml
from clipsort.errors import ConfigError, DatasetError
from clipsort.layout import CLASSES_DIR, INBOX_DIR, SORTED_DIR, require_data_root
from clipsort.service.status import folder_size, is_live, read_status
from clipsort.store.instance import holder
from clipsort.store.mover import ensure_dir, write_new


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
    require_data_root(settings.root)
    preflight.not_served(settings)
    preflight.models(settings)
    from clipsort.service.wiring import run_service  # the model stack: after the user's errors

    raise typer.Exit(run_service(settings, config, flags))


@app.command()
@user_errors
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Show what the running daemon is doing (exit 1 when none is running)."""
    settings = settings_from(config, root=root)
    found = read_status(settings.state_path)
    if found is None or not is_live(found):
        pid = holder(settings.state_path)
        if pid is None:
            typer.echo(f"clipsort: no daemon is running (no fresh status in {settings.state_path})", err=True)
        else:  # the lock says it runs: starting, or unable to write its status file
            typer.echo(
                f"clipsort: a daemon (pid {pid or 'unknown'}) is running, but its status file in "
                f"{settings.state_path} is missing or stale: it is starting, or cannot write it",
                err=True,
            )
        raise typer.Exit(NOT_RUNNING)
    if as_json:
        typer.echo(json.dumps(found.as_dict(), indent=2))
        return
    uptime = int(time.time() - found.started_at)
    console = Console()
    # Each line fits the terminal (80 columns and up): long values are cut, a path from the left.
    console.print(
        f"clipsort {found.version} pid {found.pid}, up {uptime // 3600}h{uptime // 60 % 60:02d}m"
        f"{uptime % 60:02d}s on {found.device}",
        no_wrap=True,
        overflow="ellipsis",
    )
    console.print(f"model: {shorten_left(found.model, console.width - 7)}", no_wrap=True)
    headers = ("dataset", "classes", "sorted", "unknown", "uncertain", "rejected", "queued", "corrections")
    rows = [
        (
            name,
            "waiting" if counts.waiting_for_classes else str(counts.classes),
            str(counts.sorted),
            str(counts.unknown),
            str(counts.uncertain),
            str(counts.rejected),
            str(counts.queued),
            str(sum(counts.corrections.values())),
        )
        for name, counts in found.datasets.items()
    ]
    table = fitted_table(headers, rows, width=console.width, flexible=0, numbers=headers[1:])
    console.print(table)
    for name, counts in found.datasets.items():
        if counts.degraded:  # its events are not watched: sorted by the periodic rescans meanwhile
            console.print(f"{name}: degraded, sorted by rescans only: {counts.degraded}", overflow="fold")
    size = _megabytes(folder_size(settings.state_path))
    console.print(f"state folder: {size} in {shorten_left(str(settings.state_path), console.width - 24)}")
    console.print(f"last error: {found.last_error or 'none'}", no_wrap=True, overflow="ellipsis")


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@app.command()
@user_errors
def init(
    name: Annotated[str | None, typer.Argument(help="Dataset to create under the data root.")] = None,
    config: ConfigOption = None,
    root: RootOption = None,
) -> None:
    """Create Data/<NAME>/{Clases,Images,Dataset} and a commented config.toml if none exists."""
    # The file --config names is the one being created, so it need not exist yet.
    settings = settings_from(config if config is None or config.exists() else None, root=root)
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
    parts = (CLASSES_DIR, INBOX_DIR, SORTED_DIR)
    existing = [part for part in parts if (dataset / part).is_dir()]
    for part in parts:
        ensure_dir(dataset / part, boundary=settings.root)
    made = [part for part in parts if part not in existing]
    if made:
        typer.echo(f"created {dataset}/{{{','.join(made)}}}")
    if existing:  # what a person filled is never touched: say so rather than "created"
        classes = sum(1 for entry in (dataset / CLASSES_DIR).iterdir() if entry.is_dir())
        held = (
            f" ({CLASSES_DIR}/ holds {classes} class folder{'s' if classes != 1 else ''})" if classes else ""
        )
        typer.echo(f"left alone, as they exist: {dataset}/{{{','.join(existing)}}}{held}")
    typer.echo(
        f"next: a folder per class in {dataset / CLASSES_DIR}, images to sort in {dataset / INBOX_DIR}"
    )
