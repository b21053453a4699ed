"""Shared fixtures: offline mode, the tiny trained CLIP, and dataset builders."""

from __future__ import annotations

import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from clipsort.cli import app
from clipsort.encode.encoder import Encoder
from tests.daemonproc import Daemon


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP trained on coloured shapes, made by `clipsort demo-model` as a user makes it."""
    # A folder whose parent does not exist yet, as in the README's `clipsort demo-model models/demo`.
    folder = tmp_path_factory.mktemp("clone") / "models" / "tiny-clip"
    made = CliRunner().invoke(app, ["demo-model", str(folder)])
    assert made.exit_code == 0, made.output
    return folder


@pytest.fixture(scope="session")
def encoder(tiny_model: Path) -> Encoder:
    """The tiny model loaded once for the whole session."""
    return Encoder(str(tiny_model), device="cpu")


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty data root; the working directory is moved next to it so no
    ./config.toml of the developer's leaks in."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("CLIPSORT_"):
            monkeypatch.delenv(key)
    root = tmp_path / "Data"
    root.mkdir()
    yield root


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """CLI tests bind structlog to CliRunner's captured stderr; unbind it afterwards."""
    yield
    structlog.reset_defaults()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing test that started daemons shows the end of each one's log beside its traceback."""
    report: pytest.TestReport = yield
    started = getattr(item, "funcargs", {}).get("daemons")
    if report.failed and started:
        for daemon in started:
            report.sections.append((f"daemon log {daemon.log} (last lines)", daemon.log_tail()))
    return report


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons started by a test; killed at teardown if the test did not stop them."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, object]:
    """pytest-playwright launches Debian's chromium: Playwright cannot download its own browsers here.

    The flags keep Chromium from reaching for Google's hosts at start (refused
    on a closed network, many connections at a time).
    """
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's package)")
        pytest.skip("chromium is not installed: apt-get install chromium")
    return {
        "executable_path": CHROMIUM,
        "headless": True,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }
