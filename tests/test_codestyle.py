"""The package stays ruff-clean, ruff-formatted, mypy --strict clean and true to its layers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "ruff", "check", "daemon", "tests", "bench"],
        ["-m", "ruff", "format", "--check", "daemon", "tests", "bench"],
        ["-m", "mypy"],
        # import-linter's contracts in pyproject.toml: the stages' layers, no model stack in store/.
        ["-c", "import sys, importlinter.cli; sys.exit(importlinter.cli.lint_imports_command())"],
    ],
    ids=["ruff-check", "ruff-format", "mypy", "import-linter"],
)
def test_tool_passes(command: list[str]) -> None:
    """Each linter exits 0 on the repository."""
    done = subprocess.run(
        [sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """The README's second set-up command is the line .ci/run ends with."""
    readme = (REPO / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = [block.split("```", 1)[0].strip() for block in setup.split("```sh\n")[1:]]
    assert len(commands) == 2, commands
    ci_lines = [
        line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert ci_lines[-1] == commands[1]


def test_store_and_the_classification_maths_load_no_model_stack() -> None:
    """Imported in a fresh interpreter, store/ and the maths of each mode leave torch unloaded."""
    modules = [
        "clipsort.store.mover",
        "clipsort.store.journal",
        "clipsort.store.recovery",
        "clipsort.store.undo",
        "clipsort.classify.modes.base",
        "clipsort.classify.modes.reference",
        "clipsort.classify.modes.text",
        "clipsort.classify.modes.mixed",
        "clipsort.classify.calibration",
        "clipsort.classify.review",
    ]
    probe = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        "print(','.join(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "", f"loaded: {done.stdout.strip()}"
