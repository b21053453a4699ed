"""The daemon benchmark runs end to end in its seconds-long smoke mode (not a timing test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_daemon_latency_smoke_run_writes_its_report(tmp_path: Path) -> None:
    """``python -m bench.daemon_latency --quick`` exits 0 and reports latency and throughput."""
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.daemon_latency", "--quick", "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    [run] = report["runs"]
    assert run["exit_code"] == 0
    assert 0 < run["single_p50_ms"] <= run["single_p95_ms"]
    assert run["burst_files_per_s"] > 0
    assert report["forward_1_image_ms"] > 0
