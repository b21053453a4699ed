"""Collecting the suite is cheap: the shared fixtures and helpers load no model stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODEL_STACK = ("torch", "transformers", "sentence_transformers")


def model_stack_after(code: str, then: str = "") -> str:
    """Which of the model stack's modules a fresh interpreter holds after running ``code`` (and then
    ``then``, which may import more), as printed."""
    probe = f"import sys; {code}; print([m for m in {MODEL_STACK!r} if m in sys.modules]); {then}"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_shared_fixtures_and_helpers_load_no_model_stack() -> None:
    """conftest, helpers, synthetic pictures and the daemon driver import without torch or transformers."""
    imports = "import tests.conftest, tests.helpers, tests.synthetic, tests.daemonproc, tests.waiting"
    assert model_stack_after(imports) == "[]"


def test_the_unit_tier_loads_no_model_stack() -> None:
    """Every unit test module imports without torch or transformers: the tier stays fast."""
    modules = sorted(f"tests.unit.{path.stem}" for path in (REPO / "tests" / "unit").glob("test_*.py"))
    assert model_stack_after(f"import importlib; [importlib.import_module(m) for m in {modules!r}]") == "[]"


def test_what_the_cluster_engines_tasks_run_loads_no_model_stack() -> None:
    """Ray imports a task's module in each worker that runs it: listing and decoding need no model."""
    found = model_stack_after(
        "import pickle, clipsort.sort.clustertasks as tasks; "
        "assert b'clipsort.sort.clustertasks' in pickle.dumps(tasks.decode_batch)",
        # The engine hands Ray these very functions (importing it loads the model stack: last).
        then="from clipsort.sort import cluster; "
        "assert (cluster.decode_batch, cluster.list_inbox, cluster.list_folder) == "
        "(tasks.decode_batch, tasks.list_inbox, tasks.list_folder)",
    )
    assert found == "[]"
