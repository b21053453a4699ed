"""Shared fixtures: offline mode, the tiny trained CLIP, dataset builders, and the test tiers.

A test's tier is its folder: ``tests/unit`` (one module, no model, no daemon process),
``tests/integration`` (modules together with a real model, folders and threads, in-process) and
``tests/system`` (the real daemon or CLI as a subprocess, a real browser, the benchmarks' smoke
runs as programs); each test is marked with its tier, so ``pytest -m unit`` runs the fast one.
"""

from __future__ import annotations

import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import structlog
from typer.testing import CliRunner

from clipsort.cli import app
from tests import warmstart
from tests.daemonproc import Daemon
from tests.helpers import work_beside
from tests.kept import kept_folder

if TYPE_CHECKING:  # the model stack loads only for the tests that use it, not at collection
    from clipsort.encode.encoder import Encoder

TIERS = ("unit", "integration", "system")
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


# Tests that start a Ray: pytest-xdist runs them on one worker, one after another, so the
# session's local Ray is started once and no two Rays share the machine's two cores.
RAY_GROUP = pytest.mark.xdist_group("ray")


def pytest_configure(config: pytest.Config) -> None:
    """Give each pytest-xdist worker its share of the cores for torch's operator threads.

    Why: torch runs one operator thread per core in every process, so two workers training or
    encoding at once ran four OpenMP threads on two cores, and an OpenMP thread spins while it waits
    at each barrier: alone, a fine-tuning test took 3 s of CPU; beside another it took 95.
    ``OMP_NUM_THREADS`` is set before any test imports torch (collection imports no model stack)
    and is inherited by the processes the tests start; an environment that sets it keeps its own.
    """
    Daemon.warm = warmstart.server  # daemons forked from an interpreter with torch imported
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier, read from its folder, and put the Ray tests in one group."""
    for item in items:
        parts = item.path.resolve().relative_to(TESTS).parts
        if parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
        if "ray_cluster" in getattr(item, "fixturenames", ()) or item.get_closest_marker("ray"):
            item.add_marker(RAY_GROUP)


@pytest.hookimpl(trylast=True)  # after pytest-xdist's, which suffixes a grouped test's id
def pytest_collection_finish(session: pytest.Session) -> None:
    """Stop if pytest-xdist could not group the Ray tests (a pytest it does not know, as 9.2).

    The run then ends as an internal error of pytest-xdist with no test run, not two Rays side by side.
    """
    if not session.config.getoption("loadgroup", default=False):
        return  # not a worker of a --dist loadgroup run
    grouped = (item for item in session.items if item.get_closest_marker("xdist_group"))
    lost = [item.nodeid for item in grouped if "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist did not group {lost[0]} (see pytest's pin in pyproject.toml)")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A tiny CLIP trained on coloured shapes, made by `clipsort demo-model` as a user makes it.

    Trained once per machine and kept (about 40 s saved on every later session); a new version of
    the demo's code or of the libraries it trains with makes a new one.
    """
    learn = REPO / "daemon" / "clipsort" / "learn"

    def make(folder: Path) -> None:
        # A folder whose parent does not exist yet, as in the README's `clipsort demo-model models/demo`.
        made = CliRunner().invoke(app, ["demo-model", str(folder)])
        assert made.exit_code == 0, made.output

    sources = [(learn / "demo.py").read_bytes(), (learn / "shapes.py").read_bytes()]
    return kept_folder("clipsort-tests", "tiny-clip", sources, make)


@pytest.fixture(scope="session")
def encoder(tiny_model: Path) -> Encoder:
    """The tiny model loaded once for the whole session."""
    from clipsort.encode.encoder import Encoder  # noqa: PLC0415  (the model stack, only when asked for)

    return Encoder(str(tiny_model), device="cpu")


@pytest.fixture(scope="session")
def rgb_checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    """Two checkpoints fine-tuned once per session from a tiny ViT on red, green and blue (20 each):
    ``rgb`` with the English class names, ``rojo`` with Spanish ones; tests that only need *a*
    checkpoint copy one in (:func:`tests.helpers.publish_copy`) rather than train their own."""
    from clipsort.classify.checkpoints import current_checkpoint  # noqa: PLC0415
    from tests.synthetic import make_dataset, tiny_vit  # noqa: PLC0415

    work = tmp_path_factory.mktemp("checkpoints")
    base = tiny_vit(work / "vit")
    made = {}
    for name, classes in {
        "rgb": {"red": "red", "green": "green", "blue": "blue"},
        "rojo": {"rojo": "red", "verde": "green", "azul": "blue"},
    }.items():
        make_dataset(work / name / "Data" / "rgb", classes, references=20, seed=3)
        out = work / name / "published"
        train = ["--base", str(base), "--epochs", "40", "--learning-rate", "0.002", "--patience", "8"]
        done = CliRunner(env={"CLIPSORT_MODEL": str(tiny_model)}).invoke(
            app, ["train", "-d", "rgb", "--root", str(work / name / "Data"), "--out", str(out), *train]
        )
        assert done.exit_code == 0, done.output
        found = current_checkpoint(out)
        assert found is not None
        made[name] = found
    structlog.reset_defaults()  # the CLI bound the log to its captured stderr
    return made


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray of two CPUs for the whole session, as ``ray start --head`` makes; its address.

    The cluster engine's tests run in it (in-process, or a ``clipsort sort --address`` process);
    without the ray extra they are skipped, saying so (``.ci/run`` installs it).
    """
    ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    import logging  # noqa: PLC0415

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty data root; the working directory is moved next to it (:func:`work_beside`)."""
    work_beside(tmp_path, monkeypatch)
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
            daemon.dump_stacks()  # a daemon that stopped answering shows where each thread is
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
