"""State bytes per sorted file over a long stream, with and without the retention windows.

Usage (from the repository root)::

    python -m bench.state_growth               # 100,000 files per run, two runs
    python -m bench.state_growth --quick       # seconds-long smoke run (what CI runs)

Two runs of the real daemon (``python -m clipsort run``) side by side, on one
two-layer random CLIP and tiny PNGs, so that what is measured is the state
the pipeline leaves behind, not the model:

- **baseline**: retention windows longer than the run (what every earlier
  clipsort did: nothing is ever pruned);
- **pruned**: ``vector_retention_days`` and ``journal_retention_days`` of a
  few seconds, housekeeping every few seconds, so the windows pass many
  times within the run (the days of a real deployment, compressed).

Files go in chunks; after each chunk is sorted the state folder's size is
sampled. The report gives bytes per file over time for both runs; the pruned
run's size should stay flat once its window has passed.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.reports import bench_parser, write_report
from clipsort.service.housekeeping import DAY
from clipsort.service.status import folder_size
from tests.daemonproc import Daemon
from tests.synthetic import kept_clip, make_dataset
from tests.waiting import wait_until

CLASSES = {"red": "red", "blue": "blue"}


def tiny_pictures(folder: Path, count: int) -> list[bytes]:
    """``count`` distinct 16x16 PNGs (distinct bytes: every file is a new vector and hash)."""
    rng = np.random.default_rng(0)
    pictures = []
    for k in range(count):
        pixels = np.full((16, 16, 3), (200, 30, 30) if k % 2 else (30, 30, 200), np.uint8)
        pixels[0, 0] = rng.integers(0, 255, 3)  # one pixel apart: a new file each time
        Image.fromarray(pixels).save(folder / "p.png")
        pictures.append((folder / "p.png").read_bytes())
    return pictures


def stream(
    model: Path, work: Path, pictures: list[bytes], chunk: int, windows: dict[str, float], pause: float
) -> list[dict[str, Any]]:
    """Send ``pictures`` through one daemon in chunks; a size sample after each chunk."""
    root = work / "Data"
    dataset = root / "bench"
    make_dataset(dataset, CLASSES, references=2, seed=1)
    home = work / "home"
    home.mkdir()
    daemon = Daemon(root, model, home, settle_seconds=0.05, status_seconds=1.0, **windows)
    daemon.start()
    inbox = dataset / "Images"
    samples = []
    started = time.monotonic()
    try:
        for first in range(0, len(pictures), chunk):
            for k, data in enumerate(pictures[first : first + chunk], start=first):
                (inbox / f".{k}.part").write_bytes(data)
                os.rename(inbox / f".{k}.part", inbox / f"f{k:06d}.png")
            wait_until(lambda: not any(inbox.iterdir()), timeout=600, every=0.1)
            sent = min(first + chunk, len(pictures))
            size = folder_size(daemon.state)
            samples.append(
                {
                    "files": sent,
                    "elapsed_s": round(time.monotonic() - started, 1),
                    "state_bytes": size,
                    "bytes_per_file": round(size / sent, 1),
                }
            )
            print(json.dumps(samples[-1]), flush=True)
            time.sleep(pause)
    finally:
        code = daemon.stop(timeout=60)
    if code != 0:
        raise SystemExit(f"the daemon exited {code}; see {daemon.log}")
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "state_growth", quick="a few hundred files: a smoke run")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=2_500)
    parser.add_argument("--window-s", type=float, default=60.0, help="pruned run: vectors' window")
    parser.add_argument("--pause-s", type=float, default=0.0, help="wait between chunks")
    args = parser.parse_args(argv)
    files, chunk, window, pause = (
        (400, 50, 1.0, 0.5) if args.quick else (args.files, args.chunk, args.window_s, args.pause_s)
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = {
        "baseline": {"vector_retention_days": 3650.0, "journal_retention_days": 3650.0},
        "pruned": {
            "vector_retention_days": window / DAY,
            "journal_retention_days": 2 * window / DAY,
            "housekeeping_seconds": window / 4,
        },
    }
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "files": files,
        "window_s": window,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="clipsort-bench-") as scratch:
        model = kept_clip()
        pictures = tiny_pictures(Path(scratch), files)
        for name, windows in runs.items():
            work = Path(scratch) / name
            work.mkdir()
            print(f"{name}: {windows}", flush=True)
            samples = stream(model, work, pictures, chunk, windows, pause)
            report["runs"][name] = {"settings": windows, "samples": samples}
    baseline, pruned = (report["runs"][n]["samples"] for n in ("baseline", "pruned"))
    late = [s["state_bytes"] for s in pruned[len(pruned) // 2 :]]
    report["summary"] = {
        "baseline_bytes_per_file": baseline[-1]["bytes_per_file"],
        "pruned_bytes_per_file": pruned[-1]["bytes_per_file"],
        "final_state_ratio": round(pruned[-1]["state_bytes"] / baseline[-1]["state_bytes"], 4),
        # Flat: over the second half of the run the pruned state grows by at most this factor.
        "pruned_second_half_growth": round(max(late) / min(late), 3),
    }
    write_report(args.out, report)
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
