"""What every benchmark starts and ends with: its command line, and its JSON report (``--out``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def bench_parser(doc: str | None, name: str, *, quick: str) -> argparse.ArgumentParser:
    """A benchmark's command line: its docstring as help, ``--quick`` (its smoke form) and ``--out``.

    The report goes to ``bench/results/<name>.json`` unless ``--out`` says otherwise.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="the JSON report's file")
    return parser


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as indented JSON to ``out`` (its folder made) and say where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
