"""The daemon benchmark runs end to end in its seconds-long smoke mode (not a timing test)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, python_process


def smoke(module: str, out: Path) -> dict[str, Any]:
    """Run ``python -m <module> --quick`` as a user would; its JSON report."""
    done = python_process("-m", module, "--quick", "--out", str(out), timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_daemon_latency_smoke_run_writes_its_report(tmp_path: Path) -> None:
    """``python -m bench.daemon_latency --quick`` exits 0 and reports latency and throughput."""
    report = smoke("bench.daemon_latency", tmp_path / "report.json")
    [run] = report["runs"]
    assert run["exit_code"] == 0
    assert 0 < run["single_p50_ms"] <= run["single_p95_ms"]
    assert run["burst_files_per_s"] > 0
    assert report["forward_1_image_ms"] > 0


def test_throughput_smoke_run_reports_every_measurement(tmp_path: Path) -> None:
    """``python -m bench.throughput --quick`` exits 0: rates, ratios, forward rates, latency, peak RSS."""
    report = smoke("bench.throughput", tmp_path / "throughput.json")
    assert set(report["sets"]) == {"jpeg12mp", "png1mp", "jpeg640"}
    for row in report["sets"].values():
        assert min(row["baseline"], row["sort"], row["daemon"], row["model_only"]) > 0
        assert row["daemon_vs_baseline"] == row["daemon"] / row["baseline"]
        [one] = row["rounds"]  # one round: its ratio is the row's
        assert row["daemon_vs_model_only"] == one["daemon"] / one["model_only"]
    assert set(report["forward"]) == {"graph_alone", "graph_busy", "eager_alone", "eager_busy"}
    assert min(report["forward"].values()) > 0
    assert 0 < report["latency"]["single_p50_ms"] <= report["latency"]["single_p95_ms"]
    assert set(report["rss"]) == {"peak_rss_mb_20", "peak_rss_mb_60"}


def test_startup_smoke_run_reports_every_light_command(tmp_path: Path) -> None:
    """``python -m bench.startup --quick`` exits 0 with a time and a ratio to bare Python per command."""
    report = smoke("bench.startup", tmp_path / "startup.json")
    assert report["commands"]["python -c pass"]["vs_bare_python"] == 1.0
    for name, row in report["commands"].items():
        assert row["median_s"] > 0 and row["model_stack"] == [], name


def test_state_growth_smoke_run_samples_both_runs(tmp_path: Path) -> None:
    """``python -m bench.state_growth --quick`` exits 0; the pruned run ends smaller than the baseline."""
    report = smoke("bench.state_growth", tmp_path / "state.json")
    for run in ("baseline", "pruned"):
        samples = report["runs"][run]["samples"]
        assert [s["files"] for s in samples] == list(range(50, 401, 50))
        assert all(s["state_bytes"] > 0 for s in samples)
    assert report["summary"]["final_state_ratio"] < 1


def test_unknown_gate_smoke_run_times_the_gate_beside_the_pipeline(tmp_path: Path) -> None:
    """``python -m bench.unknown_gate --quick`` exits 0: decide and gate per file per mode, their ratio."""
    report = smoke("bench.unknown_gate", tmp_path / "gate.json")
    assert report["decode_us_per_file"] > 0 and report["encode_us_per_file"] > 0
    assert set(report["modes"]) == {"reference", "text", "mixed"}
    for row in report["modes"].values():
        assert row["gate_vs_decide"] == row["gate_us_per_file"] / row["decide_us_per_file"]
        assert 0 < row["gate_share_of_pipeline"] < 1 and row["calibrate_ms"] > 0


def test_overhead_smoke_run_reports_sort_and_daemon_against_the_decode_ceiling(tmp_path: Path) -> None:
    """``python -m bench.overhead --quick`` exits 0: ceilings, the bound, sort and daemon, their CPU."""
    report = smoke("bench.overhead", tmp_path / "overhead.json")
    [one] = report["rounds"]
    assert len(one["ceilings"]) == 3, "before each of the two input paths, and after the last"
    for around in one["ceilings"]:
        assert around["ceiling"] == max(around["ceiling_threads"], around["ceiling_processes"]) > 0
        assert around["ceiling_processes_cpu"]["decoders_cpu_ms_per_file"] > 0
    assert one["model_core_ms_per_file"] > 0 and report["model_threads"] == 1
    # The bound's definition (bench/overhead.py): decoding's core time over decoding's plus the model's.
    decode_ms = min(2, os.cpu_count() or 1) * 1e3 / one["ceiling"]
    bound = decode_ms / (decode_ms + one["model_core_ms_per_file"])
    assert one["bound_with_model"] == pytest.approx(bound) and bound < 1
    for k, path in enumerate(("threads", "processes")):
        assert one[path]["ceiling"] == (one["ceilings"][k]["ceiling"] + one["ceilings"][k + 1]["ceiling"]) / 2
        assert min(one[path]["sort"], one[path]["daemon"]) > 0
        for run in ("sort_cpu", "daemon_cpu"):
            assert one[path][run]["main_cpu_ms_per_file"] > 0 and one[path][run]["cores_busy"] > 0
        decoders = one[path]["sort_cpu"]["decoders_cpu_ms_per_file"]
        assert decoders > 0 if path == "processes" else decoders == 0
        assert report[path]["sort_vs_ceiling"] == one[path]["sort"] / one[path]["ceiling"]
        assert report[path]["daemon_vs_ceiling"] == one[path]["daemon"] / one[path]["ceiling"]


def test_overhead_refuses_a_bad_variant_in_one_line_with_exit_2(tmp_path: Path) -> None:
    """``--decode-ahead 0`` or ``--decode-in gpu``: argparse's usage error, exit 2, no traceback."""
    for option, value in (("--decode-ahead", "2,0"), ("--decode-in", "threads,gpu")):
        done = python_process("-m", "bench.overhead", option, value, timeout=120, cwd=REPO)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].endswith(
            ("decode_ahead is 1 to 8, not 0", "'gpu' is neither threads nor processes")
        )


def test_cpu_per_file_smoke_run_reports_both_processes_and_the_thread_account(tmp_path: Path) -> None:
    """``python -m bench.cpu_per_file --quick`` exits 0: the daemon's and sort's CPU per file, and the
    daemon's threads by name (the worker and the placer among them, however little a short burst
    gave the placer to do)."""
    report = smoke("bench.cpu_per_file", tmp_path / "cpu.json")
    assert report["files"] == 40
    assert report["daemon"]["cpu_ms_per_file"] > 0 and report["daemon"]["elapsed_s"] > 0
    threads = report["daemon"]["threads_ms_per_file"]
    assert {"worker", "placer"} <= set(threads) and all(ms >= 0 for ms in threads.values()), threads
    assert report["sort"]["one_file_cpu_s"] > 0 and report["sort"]["elapsed_s"] > 0
    # Batches of at most 256 (batch_size's automatic value on a GPU host, which the bench stands for).
    assert (report["batch_size"], report["device"], report["place_in"]) == (256, "cpu", "process")
    assert 1 <= report["daemon"]["mean_batch"] <= 40, report["daemon"]
    assert 0 <= report["daemon"]["kernel_ms_per_file"] <= report["daemon"]["cpu_ms_per_file"]
    # --quick runs sort's pair of runs once; the full run's median is of three.
    assert report["sort"]["rounds_pipeline_ms_per_file"] == [report["sort"]["pipeline_ms_per_file"]]
    # The collector's share is reported (read from gc.callbacks in each run). Over 40 files it is no
    # figure: whether start-up's last full collection falls before or after the heap is settled
    # moves it by one collection (about 80 ms, 2 ms a file here).
    assert isinstance(report["sort"]["collector_ms_per_file"], float), report["sort"]
    idle = report["daemon"]["idle"]  # what its loops cost while nothing arrives
    assert idle["seconds"] == 1.0 and idle["cpu_percent"] >= 0, idle
    assert all(ms > 0 for ms in idle["threads_ms_per_second"].values()), idle
    # The model's share is measured and the pipeline's is the rest. (Over 40 files either may come
    # out above the whole: the process's CPU is read in 10 ms clock ticks, and sort's is a
    # difference of two runs; the full run's 2,000 files are what the figures are read from.)
    # sort's model share is a difference of two runs too, whose first forward passes differ.
    assert report["daemon"]["model_ms_per_file"] > 0, report["daemon"]
    for run in (report["daemon"], report["sort"]):
        assert run["pipeline_ms_per_file"] == run["cpu_ms_per_file"] - run["model_ms_per_file"]


@pytest.mark.ray  # starts a Ray of its own: not beside the session's (tests/conftest.py)
def test_cluster_smoke_run_sorts_with_both_engines_and_times_the_ray_phases(tmp_path: Path) -> None:
    """``python -m bench.cluster --quick`` exits 0: both engines placed every file (the benchmark
    checks that itself) and the ray engine's listing, classifying and placing each report a rate."""
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    report = smoke("bench.cluster", tmp_path / "cluster.json")
    found = report["models"]["near-free"]
    assert set(found) == {"local", "ray"} and all(run["files_per_second"] > 0 for run in found.values())
    phases = found["ray"]["phases"]
    assert set(phases) == {"listing", "classifying", "placing"}, phases
    assert all(phase["files"] == report["files"] for phase in phases.values()), phases


def test_model_start_smoke_run_compares_the_compiled_copy_with_transformers(tmp_path: Path) -> None:
    """``python -m bench.model_start --quick`` exits 0 with both starts' CPU, their ratio and the sizes."""
    report = smoke("bench.model_start", tmp_path / "model-start.json")
    [row] = report["models"].values()
    assert row["first_start_cpu_s"] > 0 and row["transformers_cpu_s"] > 0 and row["compiled_cpu_s"] > 0
    assert row["compiled_vs_transformers"] == row["compiled_cpu_s"] / row["transformers_cpu_s"]
    assert row["entry_mb"] > 0 and row["model_mb"] > 0
