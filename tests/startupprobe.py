"""Running a ``clipsort`` command in a fresh interpreter and seeing what it loaded.

Shared by the start-up tests and ``bench/startup.py`` (the benchmark imports this;
the tests never import the benchmark).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from clipsort.store.journal import Journal
from clipsort.store.mover import make_state_dir
from tests.helpers import python_process

MODEL_STACK = ("torch", "transformers", "sentence_transformers")
# The commands that classify nothing, with their arguments ({root} is the data root).
LIGHT_COMMANDS: dict[str, list[str]] = {
    "--help": ["--help"],
    "status": ["status", "--root", "{root}"],
    "history": ["history", "--root", "{root}"],
    "undo": ["undo", "--root", "{root}"],
    "corrections list": ["corrections", "list", "--root", "{root}"],
    "corrections forget": ["corrections", "forget", "--all", "--root", "{root}"],
    "init": ["init", "shoes", "--root", "{root}"],
}
# Runs the CLI as its console script does, then reports what the interpreter had loaded at exit.
PROBE = """
import atexit, json, sys
report, stack = sys.argv[1], sys.argv[2].split(",")
atexit.register(lambda: open(report, "w").write(json.dumps([m for m in stack if m in sys.modules])))
sys.argv = ["clipsort", *sys.argv[3:]]
from clipsort.cli import main
main()
"""


def prepare(folder: Path) -> Path:
    """A data root with one dataset and an (empty) journal, so every command has its real work."""
    root = folder / "Data"
    (root / "ds" / "Clases" / "red").mkdir(parents=True)
    make_state_dir(root / ".clipsort")
    Journal(root / ".clipsort").close()
    return root


def launch(args: list[str], root: Path, cwd: Path) -> dict[str, Any]:
    """One run of ``clipsort ARGS`` in a fresh interpreter: seconds, exit code, model stack loaded."""
    report = cwd / "loaded.json"
    command = ["-c", PROBE, str(report), ",".join(MODEL_STACK)]
    command += [arg.format(root=root) for arg in args]
    started = time.perf_counter()
    done = python_process(*command, cwd=cwd)
    seconds = time.perf_counter() - started
    loaded: list[str] = json.loads(report.read_text())
    return {
        "seconds": seconds,
        "exit_code": done.returncode,
        "model_stack": loaded,
        "stdout": done.stdout,
        "stderr": done.stderr,
    }
