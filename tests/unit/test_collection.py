"""Collecting the suite is cheap: the shared fixtures and helpers load no model stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_shared_fixtures_and_helpers_load_no_model_stack() -> None:
    """conftest, helpers, synthetic pictures and the daemon driver import without torch or transformers."""
    probe = (
        "import sys, tests.conftest, tests.helpers, tests.synthetic, tests.daemonproc, tests.waiting; "
        "print([m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_unit_tier_loads_no_model_stack() -> None:
    """Every unit test module imports without torch or transformers: the tier stays fast."""
    modules = sorted(f"tests.unit.{path.stem}" for path in (REPO / "tests" / "unit").glob("test_*.py"))
    probe = (
        f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
        "print([m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
