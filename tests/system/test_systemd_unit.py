"""The shipped systemd units verify and keep their hardening (exposure <= 2.5)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
UNIT = UNITS / "clipsort.service"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


@pytest.fixture(params=["clipsort.service", "clipsort-web.service"])
def unit(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Each unit with ExecStart pointing at this environment's clipsort (verify checks it exists).

    The script is looked for beside this interpreter first: an environment that is not activated
    (or pyenv's, whose shims are made only by ``pyenv rehash``) has it there but not on ``PATH``."""
    beside = Path(sysconfig.get_path("scripts")) / "clipsort"
    program = str(beside) if beside.is_file() else shutil.which("clipsort")
    assert program, "clipsort is not installed"
    name: str = request.param
    text = (UNITS / name).read_text().replace("/usr/local/bin/clipsort", program)
    target = tmp_path / name
    target.write_text(text)
    return target


def test_unit_verifies(unit: Path) -> None:
    """systemd-analyze verify reports nothing."""
    done = subprocess.run([str(ANALYZE), "verify", str(unit)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert unit.name not in done.stderr, done.stderr


def test_exposure_score_is_at_most_2_5(unit: Path) -> None:
    """systemd-analyze security rates each unit 2.5 or better."""
    done = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([0-9.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.5


def test_unit_uses_notify_and_avoids_settings_that_break_pytorch() -> None:
    """Type=notify with a watchdog; no MemoryDenyWriteExecute (PyTorch's JIT needs W+X pages)."""
    text = UNIT.read_text()
    directives = {
        line.split("=", 1)[0] for line in text.splitlines() if "=" in line and not line.startswith("#")
    }
    assert {"Type", "WatchdogSec", "StateDirectory", "ReadWritePaths", "NoNewPrivileges"} <= directives
    assert "Type=notify" in text and "Restart=on-failure" in text
    assert "MemoryDenyWriteExecute" not in directives
