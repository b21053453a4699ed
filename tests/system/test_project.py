"""The project as a user and CI meet it: the README's commands, the wheel, the model stack kept out.

Ruff, mypy --strict and import-linter run as their own step of ``.ci/run`` (with their caches),
not inside the test suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import clipsort

REPO = Path(__file__).resolve().parents[2]


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


def test_the_wheel_installs_beside_python_daemon_and_both_import(tmp_path: Path) -> None:
    """python-daemon's import name is ``daemon``; ours is ``clipsort``: one never overwrites the other."""
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    # Built from a copy of what git tracks: setuptools' build/ folder would otherwise land in the
    # checkout, and a stale one there could put modules since removed into the wheel.
    source = tmp_path / "source"
    source.mkdir()
    tracked = subprocess.run(
        ["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True, timeout=120
    )
    subprocess.run(["tar", "-x", "-C", source], input=tracked.stdout, check=True, timeout=120)
    subprocess.run([*pip, "wheel", "--no-deps", "-w", wheels, source], check=True, timeout=600)
    subprocess.run([*pip, "download", "--no-deps", "-d", wheels, "python-daemon"], check=True, timeout=600)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    python = venv / "bin" / "python"
    built = sorted(wheels.glob("*.whl"))
    assert {path.name.split("-")[0] for path in built} == {"clipsort", "python_daemon"}, built
    # Without their dependencies: what is checked is where each package's files land.
    subprocess.run(
        [python, "-m", "pip", "-q", "install", "--no-deps", "--no-index", *built], check=True, timeout=300
    )
    probe = (
        "import daemon, daemon.daemon, clipsort, clipsort.errors, pathlib; "
        "print(pathlib.Path(daemon.__file__).parent.name, pathlib.Path(clipsort.__file__).parent.name, "
        "clipsort.__version__, (pathlib.Path(clipsort.__file__).parent / 'py.typed').exists(), "
        "hasattr(daemon, 'DaemonContext'))"
    )
    done = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["daemon", "clipsort", clipsort.__version__, "True", "True"]
    licences = subprocess.run(
        [
            python,
            "-c",
            "import importlib.metadata as m; print(m.metadata('clipsort').get_all('License-File'))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "LICENSE" in licences.stdout and "htmx-LICENSE.txt" in licences.stdout


def test_from_the_repository_root_daemon_is_not_ours() -> None:
    """``import daemon`` from the repository root finds no second copy of clipsort's modules."""
    done = subprocess.run(
        [sys.executable, "-c", "import daemon.errors"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0 and "No module named 'daemon.errors'" in done.stderr
