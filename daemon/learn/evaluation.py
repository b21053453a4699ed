"""``clipsort eval``: which mode works best on *these* classes, measured on their reference images.

Stratified k-fold cross-validation over ``Clases/<class>/`` images: each fold
is classified by an index built from the other folds' references (nothing is
re-encoded; the vectors are sliced), exactly as ``clipsort sort`` would
classify those pictures if only the other folds were in ``Clases/``. Mixed
mode is calibrated inside each fold from that fold's training references
only, as the daemon would. Pure maths over the class index; plotting lives
in :func:`write_report`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.figure import Figure

from daemon.classify.classindex import ClassIndex
from daemon.classify.modes.base import ClipClassifier
from daemon.classify.targets import choose_classifier
from daemon.config import EVALUATED_MODES, DatasetSettings
from daemon.errors import NoClassesError
from daemon.store.mover import ensure_dir

MODES = EVALUATED_MODES


@dataclass(frozen=True)
class Prediction:
    """One held-out reference image and what a mode made of it."""

    file: str
    fold: int
    truth: str
    predicted: str


@dataclass
class ModeResult:
    """Cross-validated results of one mode."""

    accuracy: float
    precision: dict[str, float]
    recall: dict[str, float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    predictions: list[Prediction] = field(default_factory=list)


@dataclass
class EvalReport:
    """Every mode's results on one dataset, and the mode to use."""

    dataset: str
    folds: int
    classes: list[str]
    modes: dict[str, ModeResult]
    recommended: str
    # mode -> accuracy on the corrected examples "without" and "with" the other corrections
    corrections: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "folds": self.folds,
            "classes": self.classes,
            "recommended": self.recommended,
            "corrections": self.corrections,
            "modes": {
                name: {
                    "accuracy": result.accuracy,
                    "precision": result.precision,
                    "recall": result.recall,
                    "confusion": result.confusion,
                    "predictions": [vars(p) for p in result.predictions],
                }
                for name, result in self.modes.items()
            },
        }


def fold_of(labels: npt.NDArray[np.int64], folds: int) -> npt.NDArray[np.int64]:
    """A fold number per reference: within each class, a fixed shuffle dealt round-robin."""
    assignment = np.zeros(len(labels), dtype=np.int64)
    rng = np.random.default_rng(0)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        assignment[members] = np.arange(len(members)) % folds
    return assignment


def subset(index: ClassIndex, keep: npt.NDArray[np.bool_]) -> ClassIndex:
    """The same classes with only the ``keep`` references."""
    return replace(
        index,
        reference_vectors=index.reference_vectors[keep],
        reference_labels=index.reference_labels[keep],
        reference_paths=tuple(p for p, k in zip(index.reference_paths, keep, strict=True) if k),
        reference_weights=index.reference_weights[keep],
        corrected=index.corrected[keep],
    )


def classifier_for(
    mode: str, index: ClassIndex, settings: DatasetSettings, logit_scale: float
) -> ClipClassifier:
    """The classifier ``clipsort sort`` would use for ``mode`` on ``index`` (no review threshold)."""
    chosen, _, aggregate = mode.partition("-")
    own = settings.model_copy(
        update={"mode": chosen, "aggregate": aggregate or settings.aggregate, "min_confidence": None}
    )
    classifier, _ = choose_classifier(own, index, logit_scale)
    return classifier


def _metrics(
    confusion: npt.NDArray[np.int64], classes: Sequence[str]
) -> tuple[dict[str, float], dict[str, float]]:
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    hits = np.diag(confusion)
    precision = {c: float(hits[i] / predicted[i]) if predicted[i] else 0.0 for i, c in enumerate(classes)}
    recall = {c: float(hits[i] / actual[i]) if actual[i] else 0.0 for i, c in enumerate(classes)}
    return precision, recall


def evaluate(
    index: ClassIndex,
    settings: DatasetSettings,
    logit_scale: float,
    *,
    modes: Sequence[str] = MODES,
    folds: int = 5,
    step: Callable[[], None] = lambda: None,
) -> EvalReport:
    """Cross-validate ``modes`` over the reference images of ``index``; corrected examples apart.

    The reference images are cross-validated as if no correction existed;
    the corrected examples are then classified once with the references
    alone and once with the references and every *other* correction, so
    the report shows what the corrections changed.
    """
    effect = corrections_effect(index, settings, logit_scale, modes)
    index = subset(index, ~index.corrected)
    if len(index.reference_labels) < 2:
        raise NoClassesError(
            f"dataset {index.dataset!r} needs reference images in Clases/<class>/ to be evaluated"
        )
    folds = max(2, min(folds, int(np.bincount(index.reference_labels).max())))
    assignment = fold_of(index.reference_labels, folds)
    classes = list(index.classes)
    confusion = {mode: np.zeros((len(classes), len(classes)), dtype=np.int64) for mode in modes}
    predictions: dict[str, list[Prediction]] = {mode: [] for mode in modes}
    for fold in range(folds):
        held = assignment == fold
        train = subset(index, ~held)
        vectors = index.reference_vectors[held]
        truth = index.reference_labels[held]
        files = [str(p) for p, h in zip(index.reference_paths, held, strict=True) if h]
        for mode in modes:
            classifier = classifier_for(mode, train, settings, logit_scale)
            guessed = np.argmax(classifier.scores(vectors, train), axis=1)
            np.add.at(confusion[mode], (truth, guessed), 1)
            predictions[mode] += [
                Prediction(file, fold, classes[t], classes[g])
                for file, t, g in zip(files, truth, guessed, strict=True)
            ]
            step()
    results = {}
    for mode in modes:
        precision, recall = _metrics(confusion[mode], classes)
        matrix = confusion[mode]
        results[mode] = ModeResult(
            accuracy=float(np.trace(matrix) / matrix.sum()),
            precision=precision,
            recall=recall,
            confusion=matrix.tolist(),
            predictions=predictions[mode],
        )
    # Ties go to the earlier (simpler) mode in MODES order.
    recommended = max(modes, key=lambda mode: (results[mode].accuracy, -MODES.index(mode)))
    return EvalReport(index.dataset, folds, classes, results, recommended, effect)


def corrections_effect(
    index: ClassIndex,
    settings: DatasetSettings,
    logit_scale: float,
    modes: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Per mode using references, accuracy on the corrected examples without and with corrections.

    "with" is leave-one-out: each example is classified by an index holding
    the references and every other corrected example.
    """
    rows = np.flatnonzero(index.corrected)
    if not len(rows):
        return {}
    truth = index.reference_labels[rows]
    queries = index.reference_vectors[rows]
    plain = subset(index, ~index.corrected)
    effect = {}
    for mode in (m for m in modes if m != "text"):
        without = np.argmax(classifier_for(mode, plain, settings, logit_scale).scores(queries, plain), axis=1)
        hits = 0
        for row, vector, label in zip(rows, queries, truth, strict=True):
            keep = np.ones(len(index.corrected), dtype=np.bool_)
            keep[row] = False
            others = subset(index, keep)
            scores = classifier_for(mode, others, settings, logit_scale).scores(vector[np.newaxis], others)
            hits += int(np.argmax(scores[0]) == label)
        effect[mode] = {
            "examples": float(len(rows)),
            "without": float(np.mean(without == truth)),
            "with": hits / len(rows),
        }
    return effect


def add_finetuned(report: EvalReport, checkpoint: Path) -> None:
    """Report a published checkpoint beside the CLIP modes, from its own validation split.

    Cross-validating it on the references would test it on its training
    images, so its held-out validation results from training are used
    instead (``metrics.json``); the mode is recommended only if it beats the others.
    """
    metrics = json.loads((checkpoint / "metrics.json").read_text())
    classes = [str(name) for name in metrics["classes"]]
    report.modes["finetuned"] = ModeResult(
        accuracy=float(metrics["validation_accuracy"]),
        precision={name: float(metrics["precision"].get(name, 0.0)) for name in classes},
        recall={name: float(metrics["recall"].get(name, 0.0)) for name in classes},
        confusion=[],
    )
    best = report.modes.get(report.recommended)
    if best is None or report.modes["finetuned"].accuracy > best.accuracy:
        report.recommended = "finetuned"


def checkpoint_report(dataset: str, classes: Sequence[str], checkpoint: Path) -> EvalReport:
    """The report of a dataset evaluated only by its checkpoint (no CLIP mode asked for)."""
    report = EvalReport(dataset, 0, list(classes), {}, "finetuned")
    add_finetuned(report, checkpoint)
    return report


def write_report(report: EvalReport, folder: Path) -> list[Path]:
    """A bar chart of accuracy per mode and the best cross-validated mode's confusion matrix, as PNGs."""
    ensure_dir(folder, boundary=folder)
    bars = folder / f"{report.dataset}-accuracy.png"
    # matplotlib's object API: no pyplot state, no display needed on a server.
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    names = list(report.modes)
    axes.bar(names, [report.modes[name].accuracy for name in names], color="#4c72b0")
    axes.set_ylim(0, 1)
    axes.set_ylabel(f"accuracy ({report.folds}-fold)")
    axes.set_title(f"{report.dataset}: recommended mode {report.recommended}")
    figure.tight_layout()
    figure.savefig(bars)

    crossed = [name for name in report.modes if report.modes[name].confusion]
    if not crossed:  # a checkpoint alone: its validation split kept no confusion matrix
        return [bars]
    shown = max(crossed, key=lambda n: report.modes[n].accuracy)
    matrix = folder / f"{report.dataset}-confusion-{shown}.png"
    confusion = np.asarray(report.modes[shown].confusion)
    size = max(4.0, 0.5 * len(report.classes) + 2)
    figure = Figure(figsize=(size, size))
    axes = figure.subplots()
    axes.imshow(confusion, cmap="Blues")
    axes.set_xticks(range(len(report.classes)), report.classes, rotation=45, ha="right")
    axes.set_yticks(range(len(report.classes)), report.classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true class")
    for (row, column), count in np.ndenumerate(confusion):
        ink = "white" if count > confusion.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=ink)
    axes.set_title(f"{report.dataset}, {shown}")
    figure.tight_layout()
    figure.savefig(matrix)
    return [bars, matrix]
