"""End-to-end throughput against the original one-image-at-a-time loop and the model's own ceiling.

Usage (from the repository root)::

    python -m bench.throughput                  # CPU: ViT-B/32 with random weights, a few minutes
    python -m bench.throughput --quick          # seconds-long smoke run (what CI runs)
    python -m bench.throughput --device cuda    # the GPU run (see bench/gpu.sh)

Everything is built here (no downloads): a CLIP with the ViT-B/32
architecture and random weights (the real model's compute; accuracy is
irrelevant), and three image sets: 12-megapixel JPEGs, 1-megapixel PNGs and
640x480 JPEGs. For each set, in one run on one machine:

- ``baseline``: the original scripts' loop: open the full image with Pillow,
  ``SentenceTransformer.encode`` it alone, ``shutil.move`` it;
- ``model_only``: forward passes on pre-decoded, pre-cropped uint8 pixels
  already on the device, at the configured batch size (the ceiling);
- ``sort``: ``clipsort sort``'s pipeline (model already loaded), journal on;
- ``daemon``: the real daemon process fed a burst of renames, from the first
  rename to the last file's arrival in ``Dataset/<class>/``;
- with ``--jpeg-decoders pillow,torchvision``, ``sort`` and ``daemon`` again on the
  JPEG sets with ``jpeg_decoder = "torchvision"`` (``*_torchvision`` keys, and their
  ratio to the CPU path, ``*_torchvision_vs_pillow``).

Then single-file drop-to-move latency (p50/p95, next to one forward pass)
and the daemon's peak RSS after a 1,000- and a 10,000-file burst (small
files and the two-layer model: this measures the pipeline's memory, not
the model's). Results go to a JSON file; a table is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from sentence_transformers import SentenceTransformer

from bench.daemon_latency import CLASSES, forward_ms, measure
from bench.reports import bench_parser, write_report
from clipsort.config import Settings, load_settings
from clipsort.encode.encoder import Encoder, load_model
from clipsort.encode.factory import make_embedder
from clipsort.heap import keep_freed_memory
from clipsort.layout import discover
from clipsort.logs import configure_logging
from clipsort.sort.oneshot import batches_of, decoders_for, gather, placing_for, run
from clipsort.store.journal import Journal
from clipsort.store.mover import make_state_dir
from tests.daemonproc import Daemon, cpu_seconds_of
from tests.synthetic import draw, kept_clip, make_dataset, random_clip
from tests.waiting import wait_until

SETS = {"jpeg12mp": (4000, 3000, "jpg"), "png1mp": (1000, 1000, "png"), "jpeg640": (640, 480, "jpg")}
DISTINCT = 6  # pictures drawn per set; the rest are copies under other names


def picture(rng: np.random.Generator, color: str, width: int, height: int) -> Image.Image:
    """A shape on a background, upscaled, with sensor-like noise, so it compresses like a photo."""
    base = np.asarray(draw(rng, color, "circle", size=300).resize((width, height), Image.Resampling.BICUBIC))
    noise = rng.integers(-10, 11, size=base.shape, dtype=np.int16)
    return Image.fromarray(np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8))


def make_set(folder: Path, kind: str, count: int, seed: int) -> list[Path]:
    """``count`` files of one kind in ``folder``."""
    width, height, ext = SETS[kind]
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    colors = list(CLASSES)
    made = []
    for k in range(min(count, DISTINCT)):
        path = folder / f"{kind}-{k:05d}.{ext}"
        options: dict[str, Any] = {"quality": 90} if ext == "jpg" else {}
        picture(rng, colors[k % 3], width, height).save(path, **options)
        made.append(path)
    for k in range(len(made), count):
        path = folder / f"{kind}-{k:05d}.{ext}"
        shutil.copyfile(made[k % len(made)], path)
        made.append(path)
    return made


def fill(inbox: Path, files: list[Path]) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, inbox / path.name)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def baseline(encoder: Encoder, original: SentenceTransformer, files: list[Path], work: Path) -> float:
    """Images/s of the original loop: full decode, ``original`` encodes one image, shutil.move.

    It has no start-up or overlap to amortise, so a few hundred files give its steady rate.
    """
    inbox, out = work / "inbox", work / "out"
    fill(inbox, files)
    classes = list(CLASSES)
    class_vectors = encoder.encode_texts(classes)
    for label in classes:
        (out / label).mkdir(parents=True)
    started = time.perf_counter()
    for source in sorted(inbox.iterdir()):
        image = Image.open(source).convert("RGB")
        vector = original.encode(
            image, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        label = classes[int(np.argmax(class_vectors @ vector))]
        shutil.move(source, out / label / source.name)
    return len(files) / (time.perf_counter() - started)


def model_only(
    encoder: Encoder, count: int, batch_size: int, *, eager: bool = False, busy: bool = False
) -> float:
    """Images/s of forward passes alone on a batch of pixels already on the device.

    As clipsort runs them (the traced graph), or ``eager`` through the Python modules; ``busy``
    runs a pure-Python loop in a second thread meanwhile, as the daemon's other threads are.
    """
    tower = encoder._tower
    assert tower is not None, "model_only needs a plain CLIPModel"
    side = encoder.image_size
    one = draw(np.random.default_rng(0), "red", "circle", size=side)
    batch = tower.pixels([one] * batch_size).to(encoder.device)  # uint8, in the crops' layout
    run = tower.eager if eager else tower.forward

    def forward(values: torch.Tensor) -> None:
        with torch.inference_mode():
            run(values)

    forward(batch)  # warm-up
    sync(encoder.device)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    if busy:
        spinner.start()
    rounds = max(1, count // batch_size)
    started = time.perf_counter()
    for _ in range(rounds):
        forward(batch)
    sync(encoder.device)
    elapsed = time.perf_counter() - started
    stop.set()
    if busy:
        spinner.join()
    return rounds * batch_size / elapsed


def gil_effect(encoder: Encoder, count: int, batch_size: int) -> dict[str, float]:
    """Forward rates of the traced graph and of eager PyTorch, alone and beside a busy Python thread."""
    return {
        f"{way}_{company}": model_only(
            encoder, count, batch_size, eager=way == "eager", busy=company == "busy"
        )
        for way in ("graph", "eager")
        for company in ("alone", "busy")
    }


def sort_pipeline(
    encoder: Encoder,
    files: list[Path],
    work: Path,
    options: dict[str, Any],
    usage: dict[str, float] | None = None,
) -> float:
    """Images/s of `clipsort sort`'s pipeline, with the model, the class index and the decoders ready.

    `clipsort sort` starts its decoding processes and its placing process before it loads the
    model, so by its first batch they have started; here they are started, and waited for, before
    the clock.

    With ``usage``, it gets the run's CPU per file (:func:`cpu_per_file`).
    """
    root = work / "Data"
    make_dataset(root / "bench", CLASSES, references=2, seed=1)
    fill(root / "bench" / "Images", files)
    settings = load_settings(None, {"root": root, "state_dir": work / "state", **options})
    embedder = make_embedder(settings, encoder)
    jobs = gather(discover(root), settings, embedder, named=False)
    make_state_dir(settings.state_path)
    journal = Journal(settings.state_path)
    done: list[object] = []
    batches = batches_of({"bench": files}, settings)
    with decoders_for(settings) as decoders, placing_for(settings, batches=batches, dry_run=False) as placing:
        pids: list[int] = []
        if (processes := decoders.processes) is not None:
            wait_until(lambda: len(processes.pids) == settings.decode_workers, timeout=60)
            pids = processes.pids
        before = own_and_workers_cpu(pids)
        started = time.perf_counter()
        run(
            jobs,
            settings,
            embedder,
            journal=journal,
            dry_run=False,
            on_outcome=done.append,
            decoders=decoders,
            placing=placing,
        )
        elapsed = time.perf_counter() - started
        if usage is not None:  # read while the workers live: their start is not the run's
            usage |= cpu_per_file(before, own_and_workers_cpu(pids), elapsed, len(files))
    journal.close()
    assert len(done) == len(files)
    return len(files) / elapsed


def own_and_workers_cpu(workers: list[int]) -> tuple[float, float]:
    """User + system seconds of this process (every thread) and of the live processes ``workers``."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime, sum(cpu_seconds_of(pid) for pid in workers)


def cpu_per_file(
    before: tuple[float, float], after: tuple[float, float], elapsed: float, files: int
) -> dict[str, float]:
    """Where a run's CPU went: the interpreter's and the decoding processes' ms per file, cores busy."""
    own, spawned = after[0] - before[0], after[1] - before[1]
    return {
        "main_cpu_ms_per_file": own * 1e3 / files,
        "decoders_cpu_ms_per_file": spawned * 1e3 / files,
        "cores_busy": (own + spawned) / elapsed,
    }


def arrived_count(dataset: Path) -> int:
    """Files filed into a class or held in Review/ (the unknown gate judges a random model's vectors too)."""
    folders = [dataset / "Dataset" / label for label in CLASSES] + [dataset / "Review"]
    return sum(1 for folder in folders if folder.is_dir() for _ in folder.iterdir())


def daemon_burst(model: Path, files: list[Path], work: Path, options: dict[str, Any]) -> dict[str, float]:
    """Images/s of the real daemon from the first rename of a burst to the last arrival, and its peak RSS."""
    root = work / "Data"
    dataset = root / "bench"
    make_dataset(dataset, CLASSES, references=2, seed=1)
    home = work / "home"
    home.mkdir()
    # The status file as often as a deployed daemon writes it (the tests' helper writes it faster).
    status_seconds = Settings.model_fields["status_seconds"].default
    daemon = Daemon(root, model, home, settle_seconds=0.05, status_seconds=status_seconds, **options)
    daemon.start(wait=True)
    try:
        for path in files:
            shutil.copyfile(path, dataset / "Images" / f".{path.name}")
        before = daemon.cpu_seconds()
        started = time.perf_counter()
        for path in files:
            os.rename(dataset / "Images" / f".{path.name}", dataset / "Images" / path.name)
        wait_until(lambda: arrived_count(dataset) == len(files), timeout=3600, every=0.01)
        elapsed = time.perf_counter() - started
        usage = cpu_per_file(before, daemon.cpu_seconds(), elapsed, len(files))
        peak = daemon.peak_rss_mb()
    finally:
        daemon.stop()
    return {"files_per_s": len(files) / elapsed, "peak_rss_mb": peak, **usage}


def rss_flatness(work: Path, bursts: tuple[int, int], options: dict[str, Any]) -> dict[str, float]:
    """Peak RSS of a fresh daemon after each burst of small files (two-layer model)."""
    model = kept_clip()
    small = make_set(work / "small", "jpeg640", 1, seed=3)[0]
    tiny = work / "tiny.jpg"
    Image.open(small).resize((96, 72)).save(tiny)
    peaks = {}
    for count in bursts:
        files = [work / f"rss-{count}" / f"r{k:05d}.jpg" for k in range(count)]
        files[0].parent.mkdir()
        for path in files:
            shutil.copyfile(tiny, path)
        peaks[f"peak_rss_mb_{count}"] = daemon_burst(model, files, work / f"rss-run-{count}", options)[
            "peak_rss_mb"
        ]
    return peaks


def report(label: str, value: float, started: float) -> float:
    print(f"  {label}: {value:.2f} images/s ({time.perf_counter() - started:.1f} s)", flush=True)
    return value


def measure_set(
    kind: str,
    count: int,
    model: Path,
    encoder: Encoder,
    original: SentenceTransformer,
    scratch: Path,
    options: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Baseline once, then ``args.rounds`` rounds of model-only, sort and daemon images/s on one set.

    Each round measures the ceiling next to the pipelines it is compared with, because the rate of
    this shared machine drifts by more than the differences measured; the row holds the medians
    and the median of each round's ratio.
    """
    print(f"{kind} x {count}", flush=True)
    files = make_set(scratch / "sets" / kind, kind, count, seed=len(kind))
    started = time.perf_counter()
    rate = baseline(encoder, original, files[: args.baseline_files], scratch / "baseline" / kind)
    row: dict[str, Any] = {"files": count, "baseline": report("baseline", rate, started)}
    rounds = []
    for k in range(args.rounds):
        started = time.perf_counter()
        ceiling = model_only(encoder, args.model_only, args.batch_size)
        one = {"model_only": report("model_only", ceiling, started)}
        for decoder in decoders_for_set(kind, args.jpeg_decoders):
            suffix = "" if decoder == "pillow" else f"_{decoder}"  # the CPU path keeps the plain names
            chosen = options | {"jpeg_decoder": decoder}
            name = f"{kind}-{k}{suffix}"
            started = time.perf_counter()
            one[f"sort{suffix}"] = report(
                f"sort{suffix}", sort_pipeline(encoder, files, scratch / "sort" / name, chosen), started
            )
            started = time.perf_counter()
            burst = daemon_burst(model, files, scratch / "daemon" / name, chosen)
            one[f"daemon{suffix}"] = report(f"daemon{suffix}", burst["files_per_s"], started)
            one[f"daemon{suffix}_peak_rss_mb"] = burst["peak_rss_mb"]
        rounds.append(one)
    row |= {key: statistics.median(one[key] for one in rounds) for key in rounds[0]}
    for pipeline in ("sort", "daemon"):
        row[f"{pipeline}_vs_baseline"] = row[pipeline] / rate
        row[f"{pipeline}_vs_model_only"] = statistics.median(
            one[pipeline] / one["model_only"] for one in rounds
        )
        if f"{pipeline}_torchvision" in row:  # the decision rule for the default: >= 1.5 on jpeg12mp
            row[f"{pipeline}_torchvision_vs_pillow"] = statistics.median(
                one[f"{pipeline}_torchvision"] / one[pipeline] for one in rounds
            )
    row["rounds"] = rounds
    return row


def decoders_for_set(kind: str, asked: str) -> list[str]:
    """The JPEG decoders a set is measured with: Pillow always, the others on JPEG sets only."""
    return ["pillow"] + [name for name in asked.split(",") if name != "pillow" and kind.startswith("jpeg")]


def latency_and_rss(
    model: Path, encoder: Encoder, scratch: Path, args: argparse.Namespace, options: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """Single-file drop-to-move latency next to one forward pass, and peak RSS per burst size."""
    latency_work = scratch / "latency"
    latency_work.mkdir()
    latency = measure(model, latency_work, 0, args.singles, 0, device=args.device, precision=args.precision)
    one_forward = forward_ms(encoder)
    small, large = (int(c) for c in args.rss.split(","))
    return {
        "latency": {
            "single_p50_ms": latency["single_p50_ms"],
            "single_p95_ms": latency["single_p95_ms"],
            "forward_1_image_ms": round(one_forward, 1),
        },
        "rss": rss_flatness(scratch / "rss", (small, large), options),
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser(__doc__, "throughput", quick="two-layer model, a few files: a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (the daemon's setting)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--decode-workers", type=int, default=2)
    parser.add_argument(
        "--baseline-files", type=int, default=384, help="at most this many files per set for the baseline"
    )
    parser.add_argument("--sets", default=",".join(SETS), help="which image sets, comma-separated")
    parser.add_argument("--sets-only", action="store_true", help="skip single-file latency and peak RSS")
    parser.add_argument(
        "--counts", default="16,32,96", help="files per set: 12 MP JPEG, 1 MP PNG, 640x480 JPEG"
    )
    parser.add_argument("--model-only", type=int, default=128, help="images for the model-only ceiling")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds of model-only, sort and daemon per set (medians kept)"
    )
    parser.add_argument(
        "--jpeg-decoders",
        default="pillow",
        help="pillow, or pillow,torchvision: sort and daemon on JPEG sets with each jpeg_decoder",
    )
    parser.add_argument("--singles", type=int, default=20, help="single drops for latency")
    parser.add_argument("--rss", default="1000,10000", help="burst sizes compared for peak RSS")
    args = parser.parse_args(argv)
    if args.quick:  # a few files of each kind, each step a few times
        args.counts, args.model_only, args.singles, args.rss = "2,2,4", 8, 3, "20,60"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    keep_freed_memory()  # `sort`'s pipeline runs in this process: set up as the `clipsort` command's
    configure_logging("console", "warning")  # one line per sorted file would drown the results
    counts = [int(c) for c in args.counts.split(",")]
    options = {
        "device": args.device,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "decode_workers": args.decode_workers,
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clipsort-bench-") as scratch_name:
        scratch = Path(scratch_name)
        model = kept_clip() if args.quick else random_clip(scratch / "model")
        encoder = Encoder(str(model), args.device, precision=args.precision)
        # The baseline's own copy, as the original scripts loaded it (the pipeline's may hold bf16 weights).
        original = load_model(str(model), args.device)
        forward = gil_effect(encoder, args.model_only, args.batch_size)
        print("  forward, images/s: " + ", ".join(f"{k} {v:.1f}" for k, v in forward.items()), flush=True)
        chosen = args.sets.split(",")
        for kind, count in zip(SETS, counts, strict=True):
            if kind not in chosen:
                continue
            results[kind] = measure_set(kind, count, model, encoder, original, scratch, options, args)
        extras = {} if args.sets_only else latency_and_rss(model, encoder, scratch, args, options)
    summary = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "model": "two-layer CLIP" if args.quick else "ViT-B/32 (random weights)",
        "options": options | {"precision": encoder.precision},
        "forward": forward,
        "sets": results,
        **extras,
    }
    write_report(args.out, summary)
    for kind, row in results.items():
        if "sort_torchvision" in row:
            print(
                f"{kind}: jpeg_decoder torchvision / pillow: sort {row['sort_torchvision_vs_pillow']:.2f}x,"
                f" daemon {row['daemon_torchvision_vs_pillow']:.2f}x"
            )
    header = ("set", "baseline", "sort", "daemon", "model", "d/base", "d/model", "s/model")
    print("\nimages/s\n" + " ".join(f"{name:>9}" for name in header))
    for kind, row in results.items():
        cells = [row[k] for k in ("baseline", "sort", "daemon", "model_only")]
        ratios = [row["daemon_vs_baseline"], row["daemon_vs_model_only"], row["sort_vs_model_only"]]
        print(
            f"{kind:>9} "
            + " ".join(f"{v:>9.1f}" for v in cells)
            + " "
            + " ".join(f"{v:>9.2f}" for v in ratios)
        )
    if extras:
        latency, rss = extras["latency"], extras["rss"]
        print(
            f"single file: p50 {latency['single_p50_ms']} ms, p95 {latency['single_p95_ms']} ms;"
            f" one forward pass {latency['forward_1_image_ms']} ms"
        )
        print("peak RSS: " + ", ".join(f"{k.rsplit('_', 1)[1]} files {v:.0f} MiB" for k, v in rss.items()))


if __name__ == "__main__":
    main()
