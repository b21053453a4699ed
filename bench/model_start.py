"""CPU to start a command that loads the CLIP model: with the compiled copy, and loading with transformers.

Usage (from the repository root)::

    python -m bench.model_start            # the two-layer model and a ViT-B/32-sized one, 3 rounds
    python -m bench.model_start --quick    # the two-layer model, one round (what CI runs)

Each round runs ``clipsort sort --dry-run`` in a fresh process on a root of two classes and one
inbox file (a fresh state folder each time, so the references are embedded each time too), once
with ``compiled_cache = false`` (the folder loaded with transformers, the baseline) and once with
the compiled copy made by a first run beforehand; the report gives each run's CPU (user + system
of the process and its children), the medians, their ratio, the first run's (which compiles),
and the sizes of the model folder and of its compiled entry.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.reports import bench_parser, machine, write_report

REPO = Path(__file__).resolve().parents[1]


def cpu_of(args: list[str], env: dict[str, str]) -> float:
    """CPU seconds (user + system) of a command and its children."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, env=env, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def measure(model: Path, work: Path, rounds: int) -> dict[str, Any]:
    """The medians of ``rounds`` alternating runs with and without the compiled copy."""
    from tests.synthetic import make_dataset  # noqa: PLC0415  (numpy and Pillow only)

    root = work / f"Data-{model.name}"
    make_dataset(root / "ds", {"red": "red", "blue": "blue"}, references=2, inbox=["red"])
    cache = work / f"cache-{model.name}"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": str(cache),
        "CLIPSORT_MODEL": str(model),
        "CLIPSORT_DEVICE": "cpu",
        "PYTHONPATH": os.pathsep.join([str(REPO / "daemon"), str(REPO)]),
    }
    env.pop("CACHE_DIRECTORY", None)

    def run(state: str, compiled: bool) -> float:
        args = [sys.executable, "-m", "clipsort", "sort", "--root", str(root), "--dry-run"]
        flags = {"CLIPSORT_STATE_DIR": str(work / state), "CLIPSORT_COMPILED_CACHE": str(compiled).lower()}
        return cpu_of(args, env | flags)

    first = run(f"state-{model.name}-first", True)
    found: dict[str, list[float]] = {"transformers": [], "compiled": []}
    for index in range(rounds):
        found["transformers"].append(run(f"state-{model.name}-t{index}", False))
        found["compiled"].append(run(f"state-{model.name}-c{index}", True))
    medians = {key: statistics.median(values) for key, values in found.items()}
    return {
        "first_start_cpu_s": first,
        "runs_cpu_s": found,
        "transformers_cpu_s": medians["transformers"],
        "compiled_cpu_s": medians["compiled"],
        "compiled_vs_transformers": medians["compiled"] / medians["transformers"],
        "model_mb": size_mb(model),
        "entry_mb": size_mb(cache / "clipsort" / "compiled"),
    }


def main() -> None:
    parser = bench_parser(__doc__, "model-start", quick="the two-layer model, one round")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    from tests.synthetic import kept_clip, random_clip  # noqa: PLC0415  (torch: after the arguments are read)

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clipsort-bench-") as scratch:
        work = Path(scratch)
        # The kept small model: its compiled copy is made afresh in the run's own cache (measure).
        models = {"two-layer": kept_clip()}
        if not options.quick:
            models["ViT-B/32 (random weights)"] = random_clip(work / "vit")
        for name, model in models.items():
            results[name] = measure(model, work, 1 if options.quick else options.rounds)
            row = results[name]
            print(
                f"{name}: {row['transformers_cpu_s']:.2f} s of CPU loading with transformers, "
                f"{row['compiled_cpu_s']:.2f} s with the compiled copy "
                f"({row['compiled_vs_transformers']:.2f}x); "
                f"the first start {row['first_start_cpu_s']:.2f} s; "
                f"entry {row['entry_mb']:.0f} MB for a {row['model_mb']:.0f} MB folder",
                flush=True,
            )
    write_report(options.out, {"machine": machine(), "models": results})


if __name__ == "__main__":
    main()
