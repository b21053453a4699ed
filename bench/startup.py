"""Start-up time of the commands that classify nothing, side by side with ``python -c pass``.

Usage (from the repository root)::

    python -m bench.startup              # 5 runs of each, medians
    python -m bench.startup --quick      # one run of each (what CI runs)

Each command runs in a fresh interpreter on a data root with a journal, as a
user would type it; the report gives its median wall time, the ratio to a
bare interpreter, and which parts of the model stack (torch, transformers,
sentence-transformers) it loaded, which should be none
(``tests/system/test_startup.py`` holds them to that).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.reports import bench_parser, write_report
from tests.startupprobe import LIGHT_COMMANDS, launch, prepare


def bare_interpreter() -> float:
    """Seconds for ``python -c pass``: the floor every command starts from."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def measure(repeats: int) -> dict[str, Any]:
    """Median seconds of each light command and of a bare interpreter, in alternating rounds."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = prepare(work)
        times: dict[str, list[float]] = {name: [] for name in ["python -c pass", *LIGHT_COMMANDS]}
        loaded: dict[str, list[str]] = {}
        for _ in range(repeats):
            times["python -c pass"].append(bare_interpreter())
            for name, args in LIGHT_COMMANDS.items():
                run = launch(args, root, work)
                times[name].append(run["seconds"])
                loaded[name] = run["model_stack"]
    floor = statistics.median(times["python -c pass"])
    commands = {
        name: {
            "median_s": statistics.median(values),
            "vs_bare_python": statistics.median(values) / floor,
            "model_stack": loaded.get(name, []),
        }
        for name, values in times.items()
    }
    return {"repeats": repeats, "python": sys.version.split()[0], "commands": commands}


def main() -> None:
    parser = bench_parser(__doc__, "startup", quick="one run of each command")
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    report = measure(1 if options.quick else options.repeats)
    write_report(options.out, report)
    print(f"{'command':<20} {'median s':>9} {'x python':>9}  model stack")
    for name, row in report["commands"].items():
        stack = ", ".join(row["model_stack"]) or "none"
        print(f"{name:<20} {row['median_s']:>9.3f} {row['vs_bare_python']:>9.1f}  {stack}")


if __name__ == "__main__":
    main()
