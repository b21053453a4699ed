"""``clipsort eval``: which mode works best on *these* classes, measured on their reference images.

Stratified k-fold cross-validation over ``Clases/<class>/`` images: each fold
is classified by an index built from the other folds' references (nothing is
re-encoded; the vectors are sliced), exactly as ``clipsort sort`` would
classify those pictures if only the other folds were in ``Clases/``. Mixed
mode is calibrated inside each fold from that fold's training references
only, as the daemon would. The "none of these" gate is calibrated in each
fold the same way and judges the held-out references (the share it keeps)
and the held-out pictures of ``Clases/_none/`` (the share it keeps out).
Pure maths over the class index; plotting lives in :func:`write_report`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from clipsort.classify.classindex import ClassIndex, build_class_index
from clipsort.classify.modes.base import ClipClassifier, Familiarity
from clipsort.classify.modes.finetuned import FinetunedClassifier, load_checkpoint
from clipsort.classify.targets import choose_classifier, finetuned_gate
from clipsort.classify.unknown import Gate, calibrate_gate, own_scores
from clipsort.config import EVALUATED_MODES, DatasetSettings, Settings
from clipsort.decode.images import DecodeLimits
from clipsort.encode.encoder import resolve_device
from clipsort.encode.vectors import Vectors
from clipsort.errors import NoClassesError
from clipsort.layout import DatasetLayout
from clipsort.store.mover import ensure_dir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MODES = EVALUATED_MODES
CURVE = (0.02, 0.05, 0.07, 0.1, 0.15, 0.2)  # unknown_held settings `clipsort eval` reports


@dataclass(frozen=True)
class Prediction:
    """One held-out reference image and what a mode made of it."""

    file: str
    fold: int
    truth: str
    predicted: str


@dataclass
class GateResult:
    """Cross-validated results of one mode's unknown gate.

    A margin is how far a picture's score lies on the known side of its
    threshold (negative: held back as unknown), so every rule and class
    shares one axis with the threshold at 0.
    """

    rule: str
    references_kept: float  # held-out references the gate let through
    negatives: int  # pictures in Clases/_none/
    negatives_kept_out: float | None  # of those, held out, the share the gate stopped; None without any
    reference_margins: list[float] = field(default_factory=list)
    negative_margins: list[float] = field(default_factory=list)
    curve: list[CurvePoint] = field(default_factory=list)  # the knob's trade, at CURVE's settings


@dataclass(frozen=True)
class CurvePoint:
    """What the gate does at one ``unknown_held`` setting, estimated from the references alone.

    ``in_class_held``: held-out references (cross-validated) the gate holds back as unknown,
    judged against the class the mode gives them. ``strangers_kept_out``: each class in turn left
    out of the dataset, its references classified among the others and judged, the share held
    (look-alikes: the strangers a dataset's own classes are to each other).
    """

    unknown_held: float
    in_class_held: float
    strangers_kept_out: float | None  # None: a single class, no other to play the stranger


@dataclass
class ModeResult:
    """Cross-validated results of one mode."""

    accuracy: float
    precision: dict[str, float]
    recall: dict[str, float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    predictions: list[Prediction] = field(default_factory=list)
    gate: GateResult | None = None


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
    why: str = ""  # why the recommended mode (a tie says what broke it)

    def as_dict(self) -> dict[str, object]:
        return {
            "dataset": self.dataset,
            "folds": self.folds,
            "classes": self.classes,
            "recommended": self.recommended,
            "why": self.why,
            "corrections": self.corrections,
            "modes": {
                name: {
                    "accuracy": result.accuracy,
                    "precision": result.precision,
                    "recall": result.recall,
                    "confusion": result.confusion,
                    "predictions": [vars(p) for p in result.predictions],
                    "gate": None if result.gate is None else asdict(result.gate),
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
    negatives = index.negative_vectors
    negative_fold = fold_of(np.zeros(len(negatives), dtype=np.int64), folds)
    classes = list(index.classes)
    confusion = {mode: np.zeros((len(classes), len(classes)), dtype=np.int64) for mode in modes}
    predictions: dict[str, list[Prediction]] = {mode: [] for mode in modes}
    margins: dict[str, tuple[list[float], list[float]]] = {mode: ([], []) for mode in modes}
    held_at: dict[str, dict[float, list[bool]]] = {mode: {h: [] for h in CURVE} for mode in modes}
    for fold in range(folds):
        held = assignment == fold
        train = replace(subset(index, ~held), negative_vectors=negatives[negative_fold != fold])
        vectors = index.reference_vectors[held]
        truth = index.reference_labels[held]
        strangers = negatives[negative_fold == fold]
        files = [str(p) for p, h in zip(index.reference_paths, held, strict=True) if h]
        # The gate is one rule for every mode: calibrated once per fold, at each setting reported.
        gates = (
            {
                h: calibrate_gate(train, held=h, label_scale=logit_scale)
                for h in {settings.unknown_held, *CURVE}
            }
            if settings.unknown_gate
            else {}
        )
        for mode in modes:
            classifier = classifier_for(mode, train, settings, logit_scale)
            guessed = np.argmax(classifier.scores(vectors, train), axis=1)
            np.add.at(confusion[mode], (truth, guessed), 1)
            predictions[mode] += [
                Prediction(file, fold, classes[t], classes[g])
                for file, t, g in zip(files, truth, guessed, strict=True)
            ]
            if gates:
                gate = gates[settings.unknown_held]
                given = (
                    np.argmax(classifier.scores(strangers, train), axis=1) if len(strangers) else guessed[:0]
                )
                judged = ((vectors, guessed), (strangers, given))
                for found, (pictures, labels) in zip(margins[mode], judged, strict=True):
                    found += [margin(f) for f in gate.judge(pictures, labels, train) if f is not None]
                for held, out in held_at[mode].items():
                    out += [f is not None and not f.known for f in gates[held].judge(vectors, guessed, train)]
            step()
    results = {}
    left_out = left_out_gates(index, logit_scale) if settings.unknown_gate else []
    rule = calibrate_gate(index, held=settings.unknown_held, label_scale=logit_scale).rule
    for mode in modes:
        precision, recall = _metrics(confusion[mode], classes)
        matrix = confusion[mode]
        results[mode] = ModeResult(
            accuracy=float(np.trace(matrix) / matrix.sum()),
            precision=precision,
            recall=recall,
            confusion=matrix.tolist(),
            predictions=predictions[mode],
            gate=gate_result(
                rule,
                index,
                strangers_kept_out(mode, left_out, settings, logit_scale),
                *margins[mode],
                held_at[mode],
            )
            if settings.unknown_gate
            else None,
        )
    recommended, why = recommend(results)
    return EvalReport(index.dataset, folds, classes, results, recommended, effect, why)


def _kept(result: ModeResult) -> float:
    """The share of held-out references its gate lets through (all of them without a gate)."""
    return 1.0 if result.gate is None else result.gate.references_kept


def recommend(results: dict[str, ModeResult]) -> tuple[str, str]:
    """The mode to use and why: the most accurate; among equals, the one whose gate keeps most references.

    A gate that holds back a quarter of a class's own references sends a quarter of its real
    arrivals to Review/, which the accuracy (taken without the gate) does not show. Remaining ties go
    to the earlier (simpler) mode in MODES order.
    """
    best = max(results, key=lambda mode: (results[mode].accuracy, _kept(results[mode]), -MODES.index(mode)))
    tied = [mode for mode in results if mode != best and results[mode].accuracy == results[best].accuracy]
    if not tied:
        return best, f"the most accurate ({results[best].accuracy:.1%})"
    others = ", ".join(f"{mode} {_kept(results[mode]):.0%}" for mode in tied)
    return best, (
        f"tied at {results[best].accuracy:.1%} with {', '.join(tied)}; its gate keeps "
        f"{_kept(results[best]):.0%} of the held-out references ({others})"
    )


def margin(familiar: Familiarity) -> float:
    """How far a picture is on the known side of its threshold (negative: unknown)."""
    distance = abs(familiar.score - familiar.threshold)
    return distance if familiar.known else -distance


def gate_result(
    rule: str,
    index: ClassIndex,
    outside: dict[float, float],
    references: list[float],
    negatives: list[float],
    held_at: dict[float, list[bool]],
) -> GateResult:
    """The gate figures of one mode from the folds' margins, and the knob's curve."""
    return GateResult(
        rule=rule,
        references_kept=float(np.mean([m >= 0 for m in references])) if references else 0.0,
        negatives=len(index.negative_vectors),
        negatives_kept_out=float(np.mean([m < 0 for m in negatives])) if negatives else None,
        reference_margins=[round(m, 6) for m in references],
        negative_margins=[round(m, 6) for m in negatives],
        curve=[
            CurvePoint(held, float(np.mean(judged)) if judged else 0.0, outside.get(held))
            for held, judged in held_at.items()
        ],
    )


def without_class(index: ClassIndex, label: int) -> ClassIndex:
    """``index`` as if class ``label`` were not in the dataset (its references gone, labels renumbered)."""
    keep = index.reference_labels != label
    kept = subset(index, keep)
    others = [k for k in range(len(index.classes)) if k != label]
    renumber = np.full(len(index.classes), -1, dtype=np.int64)
    renumber[others] = np.arange(len(others))
    return replace(
        kept,
        classes=tuple(index.classes[k] for k in others),
        descriptions=tuple(index.descriptions[k] for k in others),
        text_vectors=index.text_vectors[others],
        reference_labels=renumber[kept.reference_labels],
    )


LeftOut = tuple[ClassIndex, Vectors, dict[float, Gate]]  # the others, the left-out pictures, gates


def left_out_gates(index: ClassIndex, logit_scale: float) -> list[LeftOut]:
    """Each class in turn left out: the other classes, its references, and their gate per CURVE setting.

    Mode-free, so computed once for every mode :func:`strangers_kept_out` reports.
    """
    if len(index.classes) < 2:
        return []
    found = []
    for label in range(len(index.classes)):
        members = index.reference_labels == label
        rest = without_class(index, label)
        if members.any() and len(rest.reference_labels):
            gates = {held: calibrate_gate(rest, held=held, label_scale=logit_scale) for held in CURVE}
            found.append((rest, index.reference_vectors[members], gates))
    return found


def strangers_kept_out(
    mode: str, left_out: list[LeftOut], settings: DatasetSettings, logit_scale: float
) -> dict[float, float]:
    """Per ``unknown_held`` of CURVE, the share of each class's references kept out with it left out.

    Each class in turn plays the stranger: its references are classified by ``mode`` among the
    other classes and judged by their gate. Empty for a dataset of one class.
    """
    out: dict[float, list[bool]] = {held: [] for held in CURVE}
    for rest, pictures, gates in left_out:
        given = np.argmax(classifier_for(mode, rest, settings, logit_scale).scores(pictures, rest), axis=1)
        for held, judged in out.items():
            judged += [f is not None and not f.known for f in gates[held].judge(pictures, given, rest)]
    return {held: float(np.mean(judged)) for held, judged in out.items() if judged}


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


def checkpoint_gate(settings: Settings, layout: DatasetLayout, checkpoint: Path) -> GateResult | None:
    """The fine-tuned mode's unknown gate figures: leave-one-out over the references' features.

    As for the CLIP modes, each reference is judged by the others (its nearest same-class reference
    against its class's threshold), and each picture of ``Clases/_none/`` by its nearest reference.
    """
    own = settings.for_dataset(layout.name)
    if not own.unknown_gate:
        return None
    index = build_class_index(layout, None, own.prompt_templates, own.descriptions)
    loaded = FinetunedClassifier(load_checkpoint(checkpoint, resolve_device(settings.device)))
    limits = DecodeLimits.from_settings(settings)
    gated = finetuned_gate(loaded, index, limits, own.unknown_held, layout.classes)
    if gated.gate is None or gated.known is None:
        return None
    known, gate = gated.known, gated.gate
    scores = own_scores(known, np.arange(len(known.reference_labels)))
    usable = np.isfinite(scores)
    references = (scores - gate.class_thresholds[known.reference_labels])[usable].tolist()
    negatives: list[float] = []
    if len(known.negative_vectors):
        # Each negative judged against the class of its nearest reference, as the page shows it.
        nearest = (known.negative_vectors @ known.reference_vectors.T).argmax(axis=1)
        judged = gate.judge(known.negative_vectors, known.reference_labels[nearest], known)
        negatives = [margin(f) for f in judged if f is not None]
    return GateResult(
        rule="reference (checkpoint features)",
        references_kept=float(np.mean([m >= 0 for m in references])) if references else 0.0,
        negatives=len(known.negative_vectors),
        negatives_kept_out=float(np.mean([m < 0 for m in negatives])) if negatives else None,
        reference_margins=[round(float(m), 6) for m in references],
        negative_margins=[round(float(m), 6) for m in negatives],
    )


def add_finetuned(report: EvalReport, checkpoint: Path, gate: GateResult | None = None) -> None:
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
        gate=gate,
    )
    best = report.modes.get(report.recommended)
    if best is None or report.modes["finetuned"].accuracy > best.accuracy:
        report.recommended = "finetuned"
        report.why = f"the most accurate ({report.modes['finetuned'].accuracy:.1%} on its validation split)"


def checkpoint_report(
    dataset: str, classes: Sequence[str], checkpoint: Path, gate: GateResult | None = None
) -> EvalReport:
    """The report of a dataset evaluated only by its checkpoint (no CLIP mode asked for)."""
    report = EvalReport(dataset, 0, list(classes), {}, "finetuned")
    add_finetuned(report, checkpoint, gate)
    return report


def _figure(width: float, height: float) -> Figure:
    """A matplotlib figure of that size in inches; matplotlib imported only when one is drawn (half a
    second that importing this module, in the CLI and in every test worker, need not pay)."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    return Figure(figsize=(width, height))


def write_report(report: EvalReport, folder: Path) -> list[Path]:
    """A bar chart of accuracy per mode and the best cross-validated mode's confusion matrix, as PNGs."""
    ensure_dir(folder, boundary=folder)
    bars = folder / f"{report.dataset}-accuracy.png"
    # matplotlib's object API: no pyplot state, no display needed on a server.
    figure = _figure(6, 3.5)
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
    figure = _figure(size, size)
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
    return [bars, matrix, *gate_chart(report, folder)]


def gate_chart(report: EvalReport, folder: Path) -> list[Path]:
    """Per mode, the margins of the held-out references and negatives around the gate's threshold."""
    gated = {name: result.gate for name, result in report.modes.items() if result.gate is not None}
    if not gated:
        return []
    chart = folder / f"{report.dataset}-unknown-gate.png"
    figure = _figure(4 * len(gated), 3.5)
    for axes, (name, gate) in zip(np.atleast_1d(figure.subplots(1, len(gated))), gated.items(), strict=True):
        bins = np.linspace(
            min([-0.1, *gate.reference_margins, *gate.negative_margins]),
            max([0.1, *gate.reference_margins, *gate.negative_margins]),
            30,
        )
        axes.hist(gate.reference_margins, bins=bins, alpha=0.7, color="#4c72b0", label="references")
        if gate.negative_margins:
            axes.hist(gate.negative_margins, bins=bins, alpha=0.7, color="#c44e52", label="Clases/_none")
        axes.axvline(0.0, color="black", linestyle="--", label="threshold")
        kept_out = (
            "" if gate.negatives_kept_out is None else f", {gate.negatives_kept_out:.0%} of negatives out"
        )
        axes.set_title(f"{name} ({gate.rule} rule)\n{gate.references_kept:.0%} kept{kept_out}", fontsize=9)
        axes.set_xlabel("score minus threshold")
        axes.legend(fontsize=7)
    figure.suptitle(f"{report.dataset}: the unknown gate, held-out pictures")
    figure.tight_layout()
    figure.savefig(chart)
    return [chart]
