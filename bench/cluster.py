"""The cluster engine against the local one: ``clipsort sort --engine ray`` on a local Ray, side by side.

Usage (from the repository root; the ray extra installed)::

    python -m bench.cluster             # 1,000 distinct 640x480 JPEGs, two models, both engines
    python -m bench.cluster --quick     # seconds-long smoke run (what CI runs): 24 files, one model

Each engine sorts the same files, from a fresh copy of the data root, as a process of its own:
first one file (what starting costs: the interpreter, Ray's start on this machine for the ray
engine, the model, the class index), then every file. Reported per engine and model:

- **start-up**: the one-file run's elapsed seconds;
- **files/s** end to end (every file over the whole run) and **steady** (the files after the first
  over the time the full run took beyond the one-file run);
- **driver CPU per file**: the ``clipsort sort`` process's own utime + stime (never its children:
  the local engine's decoding processes, or Ray's processes) of the full run less the one-file run,
  per file. For the ray engine this is the part that does not scale out: listing's bookkeeping,
  collecting decisions, writing shards, placing;
- for the ray engine, each phase's own rate from its ``ray_phase`` log line: listing, classifying
  and **placing alone** (this machine's file system, the journal and the mover).

Models: the near-free CLIP (two layers of width 8, one 224-pixel patch: what a GPU leaves of the
model on a CPU) and ViT-B/32 with random weights in bf16 (real compute). On two cores the ray
engine's actor and decoding tasks share them with the driver, so the local engine, with no Ray
processes to feed, is the one to beat here; the ray engine is for many machines.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cpu_per_file import SORT_LAUNCHER
from bench.reports import bench_parser, files_for, machine, write_report

ENGINES = ("local", "ray")


def sort_run(model: Path, precision: str, files: list[Path], work: Path, engine: str) -> dict[str, Any]:
    """One ``clipsort sort`` process over ``files`` (a fresh data root): elapsed, own CPU, phases."""
    from bench.daemon_latency import CLASSES
    from tests.synthetic import make_dataset

    root = work / "Data"
    make_dataset(root / "bench", CLASSES, references=2, seed=1)
    for path in files:
        shutil.copyfile(path, root / "bench" / "Images" / path.name)
    out = work / "cpu.txt"
    command = [sys.executable, "-c", SORT_LAUNCHER, str(out), "sort", "--root", str(root), "--engine", engine]
    environment = {
        **os.environ,
        "CLIPSORT_MODEL": str(model),
        "CLIPSORT_PRECISION": precision,
        "CLIPSORT_STATE_DIR": str(work / "state"),
        "CLIPSORT_LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1",
    }
    started = time.perf_counter()
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False, cwd=work)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"clipsort sort --engine {engine} failed ({done.returncode}): {done.stderr[-3000:]}")
    placed = sum(1 for path in (root / "bench").rglob("*") if path.is_file() and "Images" not in path.parts)
    references = sum(1 for path in (root / "bench" / "Clases").rglob("*") if path.is_file())
    if placed - references != len(files):
        raise SystemExit(f"--engine {engine} placed {placed - references} of {len(files)} files")
    cpu = ast.literal_eval(out.read_text())[0]  # SORT_LAUNCHER's (all, the model's, the collector's)
    return {"elapsed_s": elapsed, "cpu_s": float(cpu), "phases": phases(done.stdout + done.stderr)}


def phases(output: str) -> dict[str, dict[str, float]]:
    """The ``ray_phase`` lines of a run's log: per phase, its files, seconds and rate."""
    found = {}
    for line in output.splitlines():
        if '"ray_phase"' in line:
            record = json.loads(line[line.index("{") :])
            found[record["phase"]] = {key: record[key] for key in ("files", "seconds", "files_per_second")}
    return found


def compare(model: Path, precision: str, files: list[Path], work: Path, *, quick: bool) -> dict[str, Any]:
    """Both engines on ``files``: a one-file run (start-up), then all of them."""
    found: dict[str, Any] = {}
    for engine in ENGINES:
        one = None if quick else sort_run(model, precision, files[:1], work / engine / "one", engine)
        many = sort_run(model, precision, files, work / engine / "many", engine)
        result: dict[str, Any] = {
            "elapsed_s": round(many["elapsed_s"], 3),
            "files_per_second": round(len(files) / many["elapsed_s"], 1),
        }
        if one is not None:
            beyond = max(many["elapsed_s"] - one["elapsed_s"], 1e-9)
            result |= {
                "startup_s": round(one["elapsed_s"], 3),
                "steady_files_per_second": round((len(files) - 1) / beyond, 1),
                "driver_cpu_ms_per_file": round((many["cpu_s"] - one["cpu_s"]) * 1e3 / (len(files) - 1), 3),
            }
        if many["phases"]:
            result["phases"] = many["phases"]
        found[engine] = result
        print(f"  {engine:<6} {json.dumps(result)}", flush=True)
    return found


def main(argv: list[str] | None = None) -> None:
    args = bench_parser(
        __doc__, "cluster", quick="24 files, the near-free model: a smoke run", files=1000
    ).parse_args(argv)
    count = files_for(args, quick=24)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The model stack, once the command line is read (a bad flag is refused in a fraction of a second).
    from bench.overhead import distinct_jpegs
    from tests.synthetic import kept_clip, random_clip

    report: dict[str, Any] = {
        "machine": machine(),
        "files": count,
        "ray": "a local Ray started by each run (no --address), Ray Data's defaults otherwise",
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="clipsort-bench-") as scratch:
        work = Path(scratch)
        files = distinct_jpegs(work / "files", count)
        models = {"near-free": (kept_clip(width=8, patch=224), "fp32")}
        if not args.quick:
            models["ViT-B/32 bf16"] = (random_clip(work / "vit"), "bf16")
        for name, (model, precision) in models.items():
            print(f"{name}:", flush=True)
            report["models"][name] = compare(
                model, precision, files, work / name.replace("/", ""), quick=args.quick
            )
    report["machine"]["load_after"] = os.getloadavg()
    write_report(args.out, report)


if __name__ == "__main__":
    main()
