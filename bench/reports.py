"""What every benchmark starts and ends with: its command line, and its JSON report (``--out``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def bench_parser(
    doc: str | None, name: str, *, quick: str, files: int | None = None
) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring as help, ``--quick`` (its smoke form) and ``--out``.

    The report goes to ``bench/results/<name>.json`` unless ``--out`` says otherwise; ``files`` adds
    ``--files`` with that default.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="the JSON report's file")
    if files is not None:
        parser.add_argument(
            "--files", type=int, default=files, help="how many pictures (--quick sets its own)"
        )
    return parser


def files_for(args: argparse.Namespace, quick: int) -> int:
    """How many pictures a run takes: ``quick`` on a smoke run, else ``--files``."""
    count: int = quick if args.quick else args.files
    return count


def machine() -> dict[str, Any]:
    """What a report says of the machine: its CPUs, Python, and the load average as the run starts
    (CPU per file is read with the machine's load in mind)."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()}


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as indented JSON to ``out`` (its folder made) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
