"""The reference pages, generated from the code when the site is built (an mkdocs hook).

A page holds a marker such as ``<!-- generated: cli -->``; the hook puts in its
place what the code says today, so the reference cannot drift from it: the
commands and options from the typer app, the settings from the settings model,
the metrics from a live registry, the journal's schema from the journal, the
log events from every ``log.<level>("event", ...)`` call in the package.
"""

from __future__ import annotations

import ast
import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer.main

from clipsort.cli import app  # importing the package registers every command
from clipsort.config import DatasetOverrides, Settings
from clipsort.service.metrics import LABELS, Metrics
from clipsort.store.journal import SCHEMA

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "clipsort"
MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")


def _cell(text: object) -> str:
    """A table cell: one line, pipes escaped."""
    return html.escape(" ".join(str(text).split())).replace("|", "\\|")


def _commands(group: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    # Duck-typed: typer carries its own copy of click, whose classes are not click's.
    yield prefix, group
    for name in sorted(getattr(group, "commands", {})):
        yield from _commands(group.commands[name], f"{prefix} {name}")


def cli() -> str:
    """Every command with its usage, help and options, as ``clipsort --help`` gives them."""

    root = typer.main.get_command(app)
    parts: list[str] = []
    for path, command in _commands(root, "clipsort"):
        context = command.context_class(command, info_name=path)
        parts += [f"## `{path}`", "", (command.help or "").strip().split("\n\n")[0], ""]
        parts += ["```", command.get_usage(context), "```", ""]
        rows = []
        for param in command.get_params(context):
            if param.param_type_name != "option" or param.hidden:
                continue
            names = ", ".join(f"`{name}`" for name in [*param.opts, *param.secondary_opts])
            default = "" if param.default in (None, False, ()) or callable(param.default) else param.default
            rows.append(f"| {names} | {_cell(param.help or '')} | {_cell(default)} |")
        if rows:
            parts += ["| option | meaning | default |", "|---|---|---|", *rows, ""]
    return "\n".join(parts)


def config() -> str:
    """Every setting: its name, type, default and meaning, from the settings model."""

    def table(model: type[Any]) -> list[str]:
        rows = ["| setting | type | default | meaning |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            kind = getattr(info.annotation, "__name__", None) or str(info.annotation)
            default = "" if info.is_required() else info.get_default(call_default_factory=True)
            kind = kind.replace("typing.", "")
            rows.append(f"| `{name}` | {_cell(kind)} | {_cell(default)} | {_cell(info.description or '')} |")
        return rows

    return "\n".join(
        [*table(Settings), "", "### Per dataset: `[datasets.<name>]`", "", *table(DatasetOverrides)]
    )


def metrics() -> str:
    """The Prometheus series the daemon exports, from a fresh registry."""

    registry = Metrics().registry
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for family in registry.collect():
        labels = ", ".join(LABELS.get(family.name, ()))
        suffix = "_total" if family.type == "counter" else ""
        rows.append(f"| `{family.name}{suffix}` | {family.type} | {labels} | {_cell(family.documentation)} |")
    return "\n".join(rows)


def journal() -> str:
    """The journal's SQLite schema, as the journal creates it."""

    return f"```sql\n{SCHEMA.strip()}\n```"


def log_events() -> str:
    """Every event name the package logs, its level and the modules that log it."""
    levels = {"debug", "info", "warning", "error", "exception", "critical"}
    events: dict[tuple[str, str], set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in levels or not node.args:
                continue
            first = node.args[0]
            event = first.value if isinstance(first, ast.Constant) else None
            if isinstance(event, str) and re.fullmatch(r"[a-z][a-z0-9_]*", event):
                level = "error" if node.func.attr == "exception" else node.func.attr
                events.setdefault((event, level), set()).add(module.removesuffix(".__init__"))
    rows = ["| event | level | logged by |", "|---|---|---|"]
    for (event, level), modules in sorted(events.items()):
        rows.append(f"| `{event}` | {level} | {', '.join(f'`{m}`' for m in sorted(modules))} |")
    return "\n".join(rows)


GENERATORS: dict[str, Callable[[], str]] = {
    "cli": cli,
    "config": config,
    "metrics": metrics,
    "journal": journal,
    "log-events": log_events,
}


def on_page_markdown(markdown: str, **_: object) -> str:
    """The mkdocs hook: each marker replaced by what its generator makes now."""
    return MARKER.sub(lambda match: GENERATORS[match.group(1)](), markdown)
