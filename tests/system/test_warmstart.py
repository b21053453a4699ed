"""The fork server the suite's daemons come from (tests/warmstart.py) runs a command as an executed
interpreter does: its arguments, working directory, environment, streams, exit code and signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import warmstart
from tests.daemonproc import Daemon, drop, picture_bytes, start
from tests.synthetic import make_dataset
from tests.waiting import wait_until


def run_both(argv: list[str], env: dict[str, str], cwd: Path, out: Path) -> list[tuple[int, str, str]]:
    """``python ARGV`` executed and forked: each one's exit code, stdout and stderr."""
    results = []
    for kind in ("executed", "forked"):
        stdout, stderr = out / f"{kind}.out", out / f"{kind}.err"
        with stdout.open("wb") as o, stderr.open("wb") as e:
            if kind == "executed":
                command = [sys.executable, *argv]
                code = subprocess.run(command, check=False, env=env, cwd=cwd, stdout=o, stderr=e).returncode
            else:
                server = warmstart.server()
                code = server.start(argv, env=env, cwd=cwd, stdout=o.fileno(), stderr=e.fileno()).wait(60)
        results.append((code, stdout.read_text(), stderr.read_text()))
    return results


def test_a_forked_command_sees_what_an_executed_one_sees(tmp_path: Path) -> None:
    """A config read relative to the working directory, a root from the environment, the one-line
    error on the stderr given and exit 2: the forked command and the executed one alike."""
    (tmp_path / "c.toml").write_text('device = "cpu"\n')
    env = {**os.environ, "CLIPSORT_ROOT": str(tmp_path / "nowhere"), "PYTHONPATH": str(warmstart.REPO)}
    executed, forked = run_both(["-m", "clipsort", "run", "--config", "c.toml"], env, tmp_path, tmp_path)
    assert forked == executed
    code, out, err = forked
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith(f"clipsort: error: data root '{tmp_path / 'nowhere'}' does not exist"), err


def test_a_forked_daemon_sorts_stops_and_dies_as_an_executed_one(
    daemons: list[Daemon], tmp_path: Path, tiny_model: Path
) -> None:
    """Started from the server (the suite's default), the daemon sorts, SIGTERM is exit 0, SIGKILL is
    -9 as :class:`subprocess.Popen` reports it, and its log is the file the test gave."""
    root = tmp_path / "Data"
    make_dataset(root / "rgb", {"red": "red", "blue": "blue"}, references=2, seed=3)
    first = start(daemons, root, tiny_model, tmp_path / "one")
    assert isinstance(first.process, warmstart.Forked)
    drop(root / "rgb" / "Images", "a.png", picture_bytes(tmp_path, "red", 1, "p.png"))
    wait_until(lambda: not list((root / "rgb" / "Images").iterdir()), timeout=60)
    assert first.stop() == 0
    assert first.events("daemon_ready") and first.events("daemon_stopped")
    second = start(daemons, root, tiny_model, tmp_path / "two")
    assert second.process is not None and second.process.poll() is None
    second.process.kill()
    assert second.process.wait(timeout=10) == -signal.SIGKILL


def test_a_server_that_ended_is_an_error_not_a_wait(tmp_path: Path) -> None:
    """A daemon asked of a server that has died fails at once with the server's exit code."""
    server = warmstart.Server()  # one of this test's own, not the worker's
    server.process.kill()
    server.process.wait(timeout=10)
    argv = ["-m", "clipsort", "--help"]
    with (tmp_path / "err").open("wb") as err, pytest.raises(AssertionError, match=r"ended \(exit code -9\)"):
        server.start(argv, env=dict(os.environ), cwd=tmp_path, stdout=err.fileno(), stderr=err.fileno())
