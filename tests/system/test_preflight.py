"""The user's mistakes are found before the model stack loads: one line, exit 2, in a real process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipsort.store.instance import InstanceLock
from clipsort.store.mover import make_state_dir
from tests.helpers import python_process
from tests.synthetic import make_dataset

MODEL_STACK = ("torch", "transformers", "sentence_transformers")


def unreachable_hub(tmp_path: Path) -> dict[str, str]:
    """An environment whose hub endpoint is a loopback port nothing listens on, with an empty cache."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.endswith("_OFFLINE")}
    return env | {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf")}


@pytest.fixture
def served(data_root: Path) -> Iterator[None]:
    """A daemon's lock on the root's state folder, held by this process as a running daemon holds it."""
    state = data_root / ".clipsort"
    make_state_dir(state)
    lock = InstanceLock(state)
    lock.acquire()
    yield
    lock.release()


def refused(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``clipsort ARGS`` with import timing on; the one error line, after checking how it ended."""
    done = python_process("-X", "importtime", "-m", "clipsort", *args, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    # One line; a bad config adds one indented line per bad key.
    assert lines[0].startswith("clipsort: error:") and all(line.startswith("  ") for line in lines[1:]), lines
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    loaded = sorted(name for name in imported if name.split(".")[0] in MODEL_STACK)
    assert not loaded, f"the model stack was imported before the error: {loaded[:5]}"
    return "\n".join(lines)


@pytest.mark.parametrize("command", [["run"], ["sort"], ["web"], ["eval"], ["train", "-d", "ds"]])
def test_a_root_that_does_not_exist_is_refused_and_not_created(
    data_root: Path, tmp_path: Path, command: list[str]
) -> None:
    """A mistyped --root: one line naming the fix; the folder is not made (the daemon idled in it)."""
    line = refused(tmp_path, *command, "--root", "Dta")
    assert "does not exist" in line and "--root" in line
    assert not (tmp_path / "Dta").exists()


@pytest.mark.parametrize("command", [["run"], ["sort"], ["web"], ["eval"], ["train", "-d", "ds"]])
def test_a_dataset_given_as_the_root_is_refused_naming_its_parent(
    data_root: Path, tmp_path: Path, command: list[str]
) -> None:
    """--root Data/example instead of --root Data: one line that says to use the parent."""
    make_dataset(data_root / "ds", {"red": "red"}, references=1)
    line = refused(tmp_path, *command, "--root", str(data_root / "ds"))
    assert "is a dataset" in line and repr(str(data_root)) in line
    assert not (data_root / "ds" / ".clipsort").exists()


@pytest.mark.parametrize("command", [["run"], ["sort"], ["train", "-d", "ds"]])
def test_a_daemon_already_serving_the_root_is_said_before_the_model_loads(
    data_root: Path, tmp_path: Path, served: None, command: list[str]
) -> None:
    make_dataset(data_root / "ds", {"red": "red"}, references=2, inbox=["red"])
    line = refused(tmp_path, *command, "--root", str(data_root))
    assert "daemon" in line and str(os.getpid()) in line


@pytest.mark.parametrize("command", [["run"], ["sort"], ["eval"], ["train", "-d", "ds"]])
def test_an_unreachable_hub_is_said_before_the_model_stack_loads(
    data_root: Path, tmp_path: Path, command: list[str]
) -> None:
    """No network and nothing cached: every command that loads a model says so in one line."""
    make_dataset(data_root / "ds", {"red": "red"}, references=2, inbox=["red"])
    line = refused(tmp_path, *command, "--root", str(data_root), env=unreachable_hub(tmp_path))
    assert "hub is unreachable" in line and "clipsort demo-model DIR" in line


@pytest.mark.parametrize("command", [["run"], ["sort"], ["web"], ["eval"], ["train", "-d", "ds"]])
def test_a_bad_config_is_said_before_the_model_stack_loads(
    data_root: Path, tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "config.toml").write_text('root = "Data"\nbatch_size = "many"\nbach_delay_ms = 5\n')
    message = refused(tmp_path, *command)
    assert "batch_size = 'many'" in message
    assert "bach_delay_ms: unknown option (did you mean max_batch_delay_ms?)" in message


def test_the_review_page_says_where_it_is_and_a_busy_port_is_one_line(
    data_root: Path, tmp_path: Path
) -> None:
    """`clipsort web` prints its URL at start (and answers there); a taken port is exit 2, one line."""
    make_dataset(data_root / "ds", {"red": "red"}, references=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = refused(tmp_path, "web", "--root", str(data_root), "--port", str(port))
    assert f"port {port} on 127.0.0.1 is in use" in line
    web = subprocess.Popen(
        [sys.executable, "-m", "clipsort", "web", "--root", str(data_root), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert web.stdout is not None
        first = web.stdout.readline()
        found = re.search(r"review page at (http://127\.0\.0\.1:(\d+)/)", first)
        assert found, first
        with urllib.request.urlopen(found[1], timeout=30) as page:
            assert page.status == 200 and b"clipsort" in page.read()
    finally:
        web.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal: systemd counts that as a clean stop.
        assert web.wait(timeout=30) == -signal.SIGTERM
