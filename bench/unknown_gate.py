"""The unknown gate's cost per file, next to the rest of the pipeline's, in one run.

Usage (from the repository root)::

    python -m bench.unknown_gate            # 20 classes x 50 references, 100 negatives, 512-d
    python -m bench.unknown_gate --quick    # seconds-long smoke run (what CI runs)

Per file, in batches of 64, on one thread of this machine:

- **decode**: ``read_and_decode`` of a 640x480 JPEG to the model's 224 pixels
  (read, sha256, draft decode, resize), the daemon's own input step;
- **encode**: the two-layer random CLIP's forward pass (the "overhead" model
  that stands in for a GPU: nearly free, so what remains is the pipeline);
- **decide**: each CLIP mode's classification maths on 512-d vectors
  (ViT-B/32's width), the baseline the gate sits beside;
- **gate**: ``Gate.apply`` on the same vectors and decisions.

It also times the gate's calibration, which the daemon repeats on every edit
of ``Clases/`` and every correction. Ratios are what to quote: absolute times
drift with the machine.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.reports import bench_parser, write_report
from clipsort.classify.classindex import ClassIndex
from clipsort.classify.modes import make_classifier
from clipsort.classify.modes.base import Inputs
from clipsort.classify.unknown import calibrate_gate
from clipsort.config import load_settings
from clipsort.decode.decoding import read_and_decode
from clipsort.decode.images import DecodeLimits
from clipsort.encode.encoder import Encoder
from clipsort.encode.vectors import Vectors
from tests.synthetic import kept_clip

BATCH = 64
DIM = 512  # ViT-B/32's embedding width
LIMITS = DecodeLimits(formats=("JPEG",), max_pixels=50_000_000, max_bytes=50 * 2**20)


def unit(rows: np.ndarray[Any, Any]) -> Vectors:
    scaled: Vectors = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return scaled


def synthetic_index(classes: int, references: int, negatives: int, seed: int = 0) -> ClassIndex:
    """Class centres in 512 dimensions, references scattered about them, negatives about others."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((classes + 1, DIM)))
    labels = np.repeat(np.arange(classes), references)
    refs = unit(centres[labels] + 0.04 * rng.standard_normal((len(labels), DIM)))
    away = unit(centres[classes] + 0.04 * rng.standard_normal((negatives, DIM)))
    names = tuple(f"class{k}" for k in range(classes))
    return ClassIndex(
        dataset="bench",
        classes=names,
        descriptions=names,
        text_vectors=unit(centres[:classes] + 0.5 * rng.standard_normal((classes, DIM))),
        reference_vectors=refs,
        reference_labels=labels.astype(np.int64),
        reference_paths=tuple(Path(f"r{k}") for k in range(len(labels))),
        reference_weights=np.ones(len(labels), np.float32),
        corrected=np.zeros(len(labels), np.bool_),
        negative_vectors=away,
        negative_paths=tuple(Path(f"n{k}") for k in range(negatives)),
    )


def per_file_us(work: Callable[[], object], files: int, seconds: float) -> float:
    """Microseconds per file of ``work`` (which handles ``files``), the best of repeats over ``seconds``."""
    work()  # warm: first-call allocations and imports are not the steady state
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            return best / files * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser(__doc__, "unknown_gate", quick="small sizes, short measurements")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--references", type=int, default=50, help="per class")
    parser.add_argument("--negatives", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = parser.parse_args(argv)
    classes, references, negatives, seconds = (
        (4, 5, 4, 0.05) if args.quick else (args.classes, args.references, args.negatives, args.seconds)
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    index = synthetic_index(classes, references, negatives)
    rng = np.random.default_rng(1)
    near = index.reference_vectors[rng.integers(0, len(index.reference_labels), BATCH)]
    vectors = unit(near + 0.05 * rng.standard_normal(near.shape))
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "classes": classes,
        "references_per_class": references,
        "negatives": negatives,
        "batch": BATCH,
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="clipsort-bench-") as scratch:
        jpeg = Path(scratch) / "p.jpg"
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(jpeg, quality=90)
        encoder = Encoder(str(kept_clip()), device="cpu")
        size = encoder.image_size
        decoded = read_and_decode(jpeg, LIMITS, size).picture
        assert isinstance(decoded, Image.Image), decoded
        pictures = [decoded] * BATCH
        report["decode_us_per_file"] = per_file_us(lambda: read_and_decode(jpeg, LIMITS, size), 1, seconds)
        report["encode_us_per_file"] = per_file_us(lambda: encoder.encode_images(pictures), BATCH, seconds)
        settings = load_settings(None, {"root": Path(scratch)})
    pipeline = report["decode_us_per_file"] + report["encode_us_per_file"]
    for mode in ("reference", "text", "mixed"):
        own = settings.for_dataset("bench").model_copy(update={"mode": mode})
        classifier = make_classifier(own, alpha=0.5)
        inputs = Inputs(pictures=[], vectors=vectors)
        decisions = classifier.classify(inputs, index, 100.0)
        start = time.perf_counter()
        gate = calibrate_gate(index, held=own.unknown_held, label_scale=100.0)
        calibrate_ms = (time.perf_counter() - start) * 1e3
        decide = per_file_us(lambda: classifier.classify(inputs, index, 100.0), BATCH, seconds)  # noqa: B023
        judge = per_file_us(lambda: gate.apply(decisions, vectors, index), BATCH, seconds)  # noqa: B023
        report["modes"][mode] = {
            "rule": gate.rule,
            "decide_us_per_file": decide,
            "gate_us_per_file": judge,
            "gate_vs_decide": judge / decide,
            "gate_share_of_pipeline": judge / (pipeline + decide + judge),
            "calibrate_ms": calibrate_ms,
        }
        print(
            f"{mode:9s} decide {decide:7.1f} us/file  gate {judge:7.1f} us/file  "
            f"gate/decide {judge / decide:5.2f}  gate share {judge / (pipeline + decide + judge):6.2%}  "
            f"calibration {calibrate_ms:6.1f} ms",
            flush=True,
        )
    print(
        f"decode {report['decode_us_per_file']:.0f} us/file, encode (two-layer) "
        f"{report['encode_us_per_file']:.0f} us/file",
        flush=True,
    )
    write_report(args.out, report)


if __name__ == "__main__":
    main()
