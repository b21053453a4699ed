"""Drop-to-move latency and burst throughput of the real daemon, beside one forward pass.

Usage (from the repository root)::

    python -m bench.daemon_latency                 # ViT-B/32 with random weights, a few minutes on 2 cores
    python -m bench.daemon_latency --quick         # seconds-long smoke run (what CI runs)
    python -m bench.daemon_latency --model DIR     # any local model folder

It builds everything itself (model, images), starts ``python -m clipsort run``
like systemd would, drops single files one at a time (renamed in, as a
finished upload would be) and then a burst, and reports p50/p95 latency
from the rename to the file's arrival in ``Dataset/<class>/``, files per
second for the burst, and the model's own single-image forward time (the
floor for single-file latency). Results go to a JSON file.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.reports import bench_parser, write_report
from clipsort.encode.encoder import Encoder
from tests.daemonproc import Daemon
from tests.synthetic import draw, kept_clip, make_dataset, random_clip
from tests.waiting import wait_until

CLASSES = {"red": "red", "green": "green", "blue": "blue"}


def photo(rng: np.random.Generator, color: str) -> Image.Image:
    """A 640x480 picture: the small-JPEG case of the benchmarks."""
    return draw(rng, color, "circle", size=480).resize((640, 480))


def forward_ms(encoder: Encoder, repeats: int = 10) -> float:
    """Median time of encoding one pre-decoded picture."""
    picture = photo(np.random.default_rng(0), "red").resize((encoder.image_size, encoder.image_size))
    encoder.encode_images([picture])  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        encoder.encode_images([picture])  # returns on the CPU, so the device has finished
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def arrived(dataset: Path, name: str) -> bool:
    """Filed into a class, or held in Review/ (the unknown gate judges a random model's vectors too)."""
    folders = [dataset / "Dataset" / label for label in CLASSES] + [dataset / "Review"]
    return any((folder / name).exists() for folder in folders)


def measure(
    model: Path,
    work: Path,
    delay_ms: int,
    singles: int,
    burst: int,
    device: str = "cpu",
    precision: str = "auto",
) -> dict[str, Any]:
    """One daemon run: single-file latencies, then a burst."""
    root = work / "Data"
    dataset = root / "bench"
    make_dataset(dataset, CLASSES, references=2, seed=1)
    staging = work / "staging"
    staging.mkdir()
    rng = np.random.default_rng(delay_ms)
    colors = list(CLASSES)
    for k in range(singles + burst):
        photo(rng, colors[k % 3]).save(staging / f"f{k:05d}.jpg", quality=90)
    home = work / "home"
    home.mkdir()
    daemon = Daemon(
        root,
        model,
        home,
        max_batch_delay_ms=delay_ms,
        settle_seconds=0.5,
        log_format="json",
        device=device,
        precision=precision,
    )
    daemon.start()
    try:
        latencies = []
        for k in range(singles):
            name = f"f{k:05d}.jpg"
            shutil.copy(staging / name, dataset / "Images" / f".{name}")
            started = time.perf_counter()
            os.rename(dataset / "Images" / f".{name}", dataset / "Images" / name)
            wait_until(functools.partial(arrived, dataset, name), timeout=60, every=0.002)
            latencies.append(1000 * (time.perf_counter() - started))
        names = [f"f{k:05d}.jpg" for k in range(singles, singles + burst)]
        for name in names:
            shutil.copy(staging / name, dataset / "Images" / f".{name}")
        started = time.perf_counter()
        for name in names:
            os.rename(dataset / "Images" / f".{name}", dataset / "Images" / name)
        wait_until(lambda: all(arrived(dataset, name) for name in names), timeout=1800, every=0.05)
        elapsed = time.perf_counter() - started
    finally:
        code = daemon.stop()
    ordered = sorted(latencies)
    return {
        "max_batch_delay_ms": delay_ms,
        "single_p50_ms": round(statistics.median(ordered), 1),
        "single_p95_ms": round(ordered[max(0, round(0.95 * len(ordered)) - 1)], 1),
        "burst_files": burst,
        "burst_files_per_s": round(burst / elapsed, 2) if burst else None,
        "exit_code": code,
    }


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "daemon_latency", quick="tiny model, few files: a smoke run")
    parser.add_argument("--model", type=Path, help="local model folder (default: random ViT-B/32)")
    parser.add_argument("--delays", default="0,25,100", help="max_batch_delay_ms values to compare")
    parser.add_argument("--singles", type=int, default=20)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="clipsort-bench-") as scratch:
        model = args.model or (kept_clip() if args.quick else random_clip(Path(scratch) / "model"))
        delays = [25] if args.quick else [int(d) for d in args.delays.split(",")]
        singles, burst = (3, 12) if args.quick else (args.singles, args.burst)
        runs = []
        for delay in delays:
            work = Path(scratch) / f"run-{delay}"
            work.mkdir()
            runs.append(measure(model, work, delay, singles, burst))
            print(json.dumps(runs[-1]))
        report = {
            "machine": {
                "cpus": os.cpu_count(),
                "processor": platform.processor(),
                "python": platform.python_version(),
            },
            "model": "random ViT-B/32"
            if args.model is None and not args.quick
            else str(args.model or "tiny"),
            "forward_1_image_ms": round(forward_ms(Encoder(str(model), "cpu")), 1),  # the daemon's precision
            "runs": runs,
        }
    write_report(args.out, report)
    print(f"forward pass, 1 image: {report['forward_1_image_ms']} ms")
    print(f"{'delay ms':>9} {'p50 ms':>8} {'p95 ms':>8} {'burst files/s':>14}")
    for run in runs:
        print(
            f"{run['max_batch_delay_ms']:>9} {run['single_p50_ms']:>8} {run['single_p95_ms']:>8}"
            f" {run['burst_files_per_s']:>14}"
        )


if __name__ == "__main__":
    main()
