"""The ``clipsort`` command line: the edge where flags become settings and errors become exit codes.

One module per group of commands; importing them registers their commands
on :data:`clipsort.cli.app.app`.
"""

from __future__ import annotations

from clipsort.cli import journal, service, sorting, web
from clipsort.cli.app import app
from clipsort.heap import keep_freed_memory

__all__ = ["app", "journal", "main", "service", "sorting", "web"]


def main() -> None:
    """Console-script entry point."""
    keep_freed_memory()  # before the model and the batches are allocated (clipsort.heap)
    app()
