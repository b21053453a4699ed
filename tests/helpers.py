"""Small test helpers: folder trees as dicts, a disk whose renames stall, clipsort as a process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pytest

from clipsort.classify.classindex import ClassIndex
from clipsort.cli import app
from clipsort.config import load_settings
from clipsort.layout import discover
from clipsort.store import mover
from tests.synthetic import SHAPES, draw, save

if TYPE_CHECKING:  # the model stack loads in the helpers that classify, not for the unit tier
    from typer.testing import CliRunner, Result

    from clipsort.classify.targets import Target
    from clipsort.decode.decoding import Decoded
    from clipsort.encode.encoder import Encoder
    from clipsort.service.wiring import Service
    from clipsort.sort.pipeline import Outcome
    from clipsort.work import Job

REPO = Path(__file__).resolve().parents[1]
RGB = {"red": "red", "green": "green", "blue": "blue"}  # class folder -> the colour its pictures show
# `clipsort train`'s own defaults (train_into's are faster for tests that only need some checkpoint).
DEFAULT_TRAINING = ("--epochs", "10", "--learning-rate", "5e-5", "--patience", "3")


def unit(*rows: list[float]) -> npt.NDArray[np.float32]:
    """Rows scaled to unit length: hand-written vectors for the classification maths."""
    array = np.asarray(rows, dtype=np.float32)
    scaled: npt.NDArray[np.float32] = array / np.linalg.norm(array, axis=1, keepdims=True)
    return scaled


def hand_index(
    refs: npt.NDArray[np.float32],
    labels: list[int],
    text: npt.NDArray[np.float32],
    *,
    negatives: npt.NDArray[np.float32] | None = None,
    descriptions: tuple[str, ...] | None = None,
) -> ClassIndex:
    """A class index of hand-written vectors: class ``k`` is ``c{k}``, described by row ``k`` of ``text``."""
    names = tuple(f"c{k}" for k in range(len(text)))
    return ClassIndex(
        dataset="d",
        classes=names,
        descriptions=descriptions or names,
        text_vectors=text,
        reference_vectors=refs,
        reference_labels=np.asarray(labels, dtype=np.int64),
        reference_paths=tuple(Path(f"r{k}") for k in range(len(labels))),
        reference_weights=np.ones(len(labels), dtype=np.float32),
        corrected=np.zeros(len(labels), dtype=np.bool_),
        negative_vectors=np.zeros((0, text.shape[1]), np.float32) if negatives is None else negatives,
        negative_paths=() if negatives is None else tuple(Path(f"n{k}") for k in range(len(negatives))),
    )


def python_process(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` in a real process importing this checkout (offline unless ``env`` says otherwise)."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"} if env is None else dict(env)
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env={**environment, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def clipsort_process(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m clipsort ARGS``: clipsort as its console script runs it."""
    return python_process("-m", "clipsort", *args, env=env, timeout=timeout)


def tree(root: Path) -> dict[str, list[str]]:
    """Each folder under ``root`` (relative, '/'-joined) -> sorted file names in it."""
    result: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() or path.is_symlink():
            result.setdefault(path.parent.relative_to(root).as_posix(), []).append(path.name)
    return {folder: sorted(names) for folder, names in result.items()}


class GatedRenames(mover.Syscalls):
    """Every rename waits until the gate opens: a disk that stalls while a batch is being placed."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.waiting = threading.Event()

    def renameat2(self, source: mover.At, target: mover.At) -> None:
        self.waiting.set()
        if not self.gate.wait(timeout=60):
            raise OSError("the test never opened the gate")
        super().renameat2(source, target)


def held_out(root: Path, classes: Mapping[str, str], per_class: int = 10, seed: int = 77) -> dict[str, str]:
    """Unseen pictures in ``root``'s Images/, ``classes`` mapping a name to a colour: file -> name."""
    rng = np.random.default_rng(seed)
    truth = {}
    for name, color in classes.items():
        for k in range(per_class):
            file = f"{name}-{k}.png"
            save(draw(rng, color, SHAPES[k % 3], size=int(rng.integers(40, 160))), root / "Images" / file)
            truth[file] = name
    return truth


def decoded_batch(
    root: Path, encoder: Encoder, colours: list[str], seed: int
) -> tuple[list[Job], list[Decoded], dict[str, Target], list[str]]:
    """Inbox files of ``colours`` in a dataset ``rgb`` under ``root``, decoded, with its target and
    each file's true colour."""
    from clipsort.classify.targets import make_target
    from clipsort.decode.decoding import DecodePool, collect
    from clipsort.encode.factory import make_embedder
    from clipsort.layout import DatasetLayout
    from clipsort.sort.oneshot import job_for
    from tests.synthetic import make_dataset

    truth = make_dataset(root / "rgb", RGB, references=3, inbox=colours, seed=seed)
    settings = load_settings(None, {"root": root})
    embedder = make_embedder(settings, encoder)
    target = make_target(DatasetLayout(root / "rgb"), settings, embedder)
    jobs = [job_for("rgb", root / "rgb" / "Images" / name) for name in sorted(truth)]
    with DecodePool(embedder.limits, 2) as pool:
        decoded = collect(pool.start([job.path for job in jobs], encoder.image_size), 30)
    return jobs, decoded, {"rgb": target}, [truth[n] for n in sorted(truth)]


def sort_all(root: Path, encoder: Encoder, **flags: object) -> list[Outcome]:
    """What `clipsort sort --dry-run` decides for every inbox file under ``root``, with ``flags``."""
    from clipsort.encode.factory import make_embedder
    from clipsort.sort.oneshot import gather, run

    settings = load_settings(None, {"root": root, **flags})
    embedder = make_embedder(settings, encoder)
    outcomes: list[Outcome] = []
    run(
        gather(discover(root), settings, embedder, named=False),
        settings,
        embedder,
        journal=None,
        dry_run=True,
        on_outcome=outcomes.append,
    )
    return outcomes


def accuracy(outcomes: list[Outcome], truth: Mapping[str, str]) -> float:
    """Share of ``outcomes`` whose decided class is the file's true one."""
    return float(
        np.mean([o.decision is not None and o.decision.label == truth[o.source.name] for o in outcomes])
    )


def predicted(record: Mapping[str, Any]) -> str | None:
    """The class a decision's JSON line names: where it went, or its guess when held in Review/."""
    label = record["class"] if record["class"] is not None else record.get("guess")
    return None if label is None else str(label)


def remove_deep(top: Path) -> None:
    """Delete a folder tree of any depth, iteratively: shutil.rmtree (and pytest's clean-up of old
    temporary folders) recurse, and a 1,200-deep chain left behind would crash them later."""
    if not top.exists():
        return
    here = top
    while True:
        entries = list(os.scandir(here))
        folder = next((entry for entry in entries if entry.is_dir(follow_symlinks=False)), None)
        if folder is not None:
            here = Path(folder.path)
            continue
        for entry in entries:
            os.unlink(entry.path)
        os.rmdir(here)
        if here == top:
            return
        here = here.parent


def shares(outcomes: list[Outcome], truth: dict[str, str], classes: tuple[str, ...]) -> dict[str, float]:
    """Strangers kept out of the class folders; in-class pictures filed right, and held back."""
    return gate_shares(
        [
            (
                o.source.name,
                o.status == "sorted",
                o.decision.label if o.decision else None,
                o.status != "sorted",
            )
            for o in outcomes
        ],
        truth,
        classes,
    )


def gate_shares(
    filed: list[tuple[str, bool, str | None, bool]], truth: dict[str, str], classes: tuple[str, ...]
) -> dict[str, float]:
    """The gate's three shares from (file name, sorted, class, kept out) per picture, however sorted."""
    inside = [row for row in filed if truth[row[0]] in classes]
    strangers = [row for row in filed if truth[row[0]] not in classes]
    return {
        "kept_out": float(np.mean([out for _, _, _, out in strangers])),
        "right": float(np.mean([done and label == truth[name] for name, done, label, _ in inside])),
        "held": float(np.mean([not done for _, done, _, _ in inside])),
    }


def train_into(
    runner: CliRunner, base: Path, root: Path, dataset: str, *extra: str, expect: int = 0
) -> Result:
    """`clipsort train` with settings that fit the tiny models in seconds (later ``extra`` options win)."""
    result = runner.invoke(
        app,
        [
            "train",
            "--dataset",
            dataset,
            "--root",
            str(root),
            "--base",
            str(base),
            "--epochs",
            "40",
            "--learning-rate",
            "0.002",
            "--patience",
            "8",
            *extra,
        ],
    )
    assert result.exit_code == expect, result.output
    return result


@contextlib.contextmanager
def running_service(data_root: Path, model: Path) -> Iterator[Service]:
    """The in-process service on ``data_root``: watcher, intake, learner and worker, stopped after."""
    from clipsort.service.wiring import Service

    settings = load_settings(
        None, {"root": data_root, "model": str(model), "settle_seconds": 0.1, "status_seconds": 0.2}
    )
    service = Service(settings, None, {})
    service.start()
    try:
        yield service
    finally:
        service.stop()


def publish_copy(checkpoint: Path, folder: Path, name: str) -> Path:
    """A trained ``checkpoint`` copied into ``folder`` as ``name`` and made current, as a person may:
    the folder staged under a dot-name and renamed into place, then the pointer replaced atomically."""
    import shutil

    from clipsort.classify.checkpoints import CURRENT

    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".copying-{name}"
    shutil.copytree(checkpoint, staging)
    staging.rename(folder / name)
    mover.write_atomic(folder / CURRENT, name.encode())
    return folder / name


def work_beside(folder: Path, patch: pytest.MonkeyPatch) -> None:
    """Work in ``folder`` with no ``CLIPSORT_*`` setting: no ./config.toml of the developer's, nor
    their environment, leaks into a test (``patch`` undoes both)."""
    patch.chdir(folder)
    for key in list(os.environ):
        if key.startswith("CLIPSORT_"):
            patch.delenv(key)
