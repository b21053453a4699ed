"""How a dataset becomes a classification target: class index, classifier, calibration, review policy."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import structlog
from PIL import Image

from clipsort.classify.calibration import Calibration, calibrate
from clipsort.classify.checkpoints import checkpoints_of, current_checkpoint
from clipsort.classify.classindex import ClassIndex, Example, build_class_index
from clipsort.classify.modes import Classifier, ClipClassifier, make_classifier, mode
from clipsort.classify.modes.finetuned import CheckpointCache, FinetunedClassifier, known_features
from clipsort.classify.review import ReviewPolicy
from clipsort.classify.unknown import (
    NEGATIVE_TEMPLATE,
    Gate,
    calibrate_gate,
    candidate_words,
    describes,
    reference_thresholds,
    references_kept,
    thresholds_from_unseen,
    within_own_references,
)
from clipsort.config import DatasetSettings, Settings
from clipsort.decode.images import DecodeLimits, input_size
from clipsort.encode.embeddings import Embedder
from clipsort.errors import ClipsortError, NoClassesError
from clipsort.layout import DatasetLayout

log = structlog.get_logger()

# A dataset's corrected examples (files a person moved to another class): the learn stage provides
# them from the journal (clipsort.learn.corrections.corrected_from); classification only uses them.
Corrected = Callable[[DatasetLayout, Embedder, Settings], Sequence[Example]]


@dataclass(frozen=True)
class Target:
    """What one dataset's files are classified with and where they go."""

    layout: DatasetLayout
    settings: DatasetSettings
    index: ClassIndex
    classifier: Classifier
    review: ReviewPolicy = field(default_factory=ReviewPolicy)
    calibration: Calibration | None = None
    gate: Gate | None = None  # the "none of these" gate; None when off (and in finetuned mode)

    @property
    def by_vectors(self) -> bool:
        """Whether its files are classified by CLIP vectors (else by a checkpoint's own pictures)."""
        return self.classifier.needs == "vectors"

    @property
    def classes(self) -> tuple[str, ...]:
        """The folders files can be sorted into: the checkpoint's classes in finetuned mode."""
        return self.classifier.classes(self.index)

    def gate_summary(self) -> dict[str, dict[str, float]]:
        """Per class the unknown gate judges by its references: its threshold and the share it keeps.

        The review page's classes view shows them (through ``status.json``); empty when the gate is
        off or no class has a reference.
        """
        gate, index = self.gate, self.index
        if isinstance(self.classifier, FinetunedClassifier):
            gate, index = self.classifier.gate, self.classifier.known or self.index
        if gate is None:
            return {}
        kept = gate.kept if gate.kept is not None else np.full(len(index.classes), np.nan)
        return {
            name: {"threshold": round(float(threshold), 4), "kept": round(float(share), 4)}
            for name, threshold, share in zip(index.classes, gate.class_thresholds, kept, strict=True)
            if not math.isnan(threshold) and not math.isnan(share)
        }


def finetuned_target(
    layout: DatasetLayout, settings: Settings, index: ClassIndex, checkpoints: CheckpointCache
) -> Target:
    """A target classifying with the dataset's current fine-tuned checkpoint."""
    path = current_checkpoint(checkpoints_of(settings.state_path, layout.name))
    if path is None:
        raise NoClassesError(
            f"dataset {layout.name!r} has no fine-tuned checkpoint yet: run `clipsort train -d {layout.name}`"
        )
    classifier = FinetunedClassifier(checkpoints.get(path))
    own = settings.for_dataset(layout.name)
    if own.unknown_gate:
        limits = DecodeLimits.from_settings(settings)
        classifier = finetuned_gate(classifier, index, limits, own.unknown_held, layout.classes)
    if set(classifier.classes(index)) != set(index.classes):
        log.warning(
            "checkpoint_classes_differ",
            dataset=layout.name,
            checkpoint=str(path),
            checkpoint_classes=list(classifier.classes(index)),
            class_folders=list(index.classes),
        )
    review = ReviewPolicy(min_confidence=_number(own.min_confidence), min_margin=own.min_margin)
    return Target(layout=layout, settings=own, index=index, classifier=classifier, review=review)


def finetuned_gate(
    classifier: FinetunedClassifier, index: ClassIndex, limits: DecodeLimits, held: float, classes: Path
) -> FinetunedClassifier:
    """``classifier`` with the unknown gate on its own features, calibrated on the references.

    The same rule as the CLIP modes (the nearest reference plus the description, thresholds from
    leave-one-out, ``Clases/_none/`` as negatives), on the checkpoint's features instead of CLIP
    vectors, its head's rows standing for the descriptions: the references are decoded and run
    through the checkpoint once per (re)build of the dataset. ``classes``: the dataset's ``Clases/``,
    which the checkpoint's record of the references it never trained on is relative to.
    """
    side = input_size(
        getattr(classifier.checkpoint.processor, "image_processor", classifier.checkpoint.processor)
    )

    def load(path: Path) -> Image.Image | None:
        try:
            return limits.load(path, side)
        except (ClipsortError, OSError):
            return None  # an unreadable reference is left out here as in the class index

    known = known_features(classifier, index, load)
    if known is None:
        log.warning(
            "unknown_gate_unavailable", dataset=index.dataset, reason="no usable references or features"
        )
        return classifier
    unseen = np.asarray(
        [relative_name(path, classes) in classifier.checkpoint.unseen for path in known.reference_paths]
    )
    thresholds = thresholds_from_unseen(known, unseen, held)
    if thresholds is None:  # a checkpoint without a record of what it trained on
        thresholds = within_own_references(known, reference_thresholds(known, held))
    kept = references_kept(known, thresholds)
    gate = Gate(class_thresholds=thresholds, held=held, kept=kept, described=describes(known))
    log.info(
        "unknown_gate",
        dataset=index.dataset,
        rule="reference (checkpoint features)",
        thresholds={
            name: round(float(value), 4)
            for name, value in zip(known.classes, gate.class_thresholds, strict=True)
            if not math.isnan(value)
        },
        negatives=len(known.negative_paths),
    )
    return replace(classifier, gate=gate, known=known)


def relative_name(path: Path, classes: Path) -> str:
    """``path`` as training records it: relative to ``Clases/`` ("" for a file elsewhere)."""
    try:
        return path.relative_to(classes).as_posix()
    except ValueError:
        return ""


def choose_classifier(
    own: DatasetSettings, index: ClassIndex, logit_scale: float
) -> tuple[ClipClassifier, Calibration | None]:
    """The classifier of ``own.mode`` on ``index``, calibrated by leave-one-out where anything is auto."""
    calibration = None
    auto_weights = mode(own.mode).calibrated and "auto" in (own.alpha, own.beta)
    if auto_weights or own.min_confidence == "auto":
        calibration = calibrate(
            index,
            logit_scale,
            mode=make_classifier(own).name,
            alpha=_number(own.alpha),
            beta=_number(own.beta),
            keep=own.auto_keep if own.min_confidence == "auto" else None,
        )
    # A calibration carries explicit numbers through unchanged and fills in "auto".
    if calibration is not None:
        alpha, beta = calibration.alpha, calibration.beta
    else:
        alpha, beta = _number(own.alpha) or 0.0, _number(own.beta) or 1.0
    return make_classifier(own, alpha, beta), calibration


def make_target(
    layout: DatasetLayout,
    settings: Settings,
    embedder: Embedder,
    checkpoints: CheckpointCache | None = None,
    corrected: Corrected | None = None,
) -> Target:
    """Index a dataset's classes (with its corrected examples), calibrate what is ``auto``, check the mode."""
    own = settings.for_dataset(layout.name)
    if mode(own.mode).model == "checkpoint":  # it classifies the pictures: no CLIP vectors are needed
        index = build_class_index(layout, None, own.prompt_templates, own.descriptions)
        if checkpoints is None:  # the model stack, only for a checkpoint to load (not on import)
            from clipsort.encode.encoder import resolve_device  # noqa: PLC0415

            checkpoints = CheckpointCache(settings.checkpoints_loaded, resolve_device(settings.device))
        return finetuned_target(layout, settings, index, checkpoints)
    learned = list(corrected(layout, embedder, settings)) if corrected is not None else []
    index = build_class_index(layout, embedder, own.prompt_templates, own.descriptions, learned)
    classifier, calibration = choose_classifier(own, index, embedder.clip.logit_scale)
    if calibration is not None:
        log.info(
            "calibrated",
            dataset=layout.name,
            alpha=calibration.alpha,
            beta=calibration.beta,
            visual_weight=round(calibration.visual_weight, 4),
            references=calibration.samples,
            loo_accuracy={mode: round(value, 4) for mode, value in calibration.accuracy.items()},
            min_confidence=calibration.min_confidence,
        )
    classifier.check(index)
    threshold = calibration.min_confidence if calibration is not None else None
    minimum = threshold if own.min_confidence == "auto" else _number(own.min_confidence)
    review = ReviewPolicy(min_confidence=minimum, min_margin=own.min_margin)
    return Target(
        layout=layout,
        settings=own,
        index=index,
        classifier=classifier,
        review=review,
        calibration=calibration,
        gate=make_gate(own, index, embedder) if own.unknown_gate else None,
    )


def make_gate(own: DatasetSettings, index: ClassIndex, embedder: Embedder) -> Gate:
    """The unknown gate of ``index`` in ``own.mode``; a dataset without references gets negative labels."""
    words: tuple[str, ...] = ()
    vectors = None
    if not len(index.reference_labels):  # nothing to calibrate on: NegLabel's words stand in
        words = candidate_words(embedder.clip.vocabulary())
        vectors = embedder.descriptions(words, (NEGATIVE_TEMPLATE,))
    gate = calibrate_gate(
        index, held=own.unknown_held, label_scale=embedder.clip.logit_scale, words=words, word_vectors=vectors
    )
    log.info(
        "unknown_gate",
        dataset=index.dataset,
        rule=gate.rule,
        held=own.unknown_held,
        thresholds={
            name: round(float(value), 4)
            for name, value in zip(index.classes, gate.class_thresholds, strict=True)
            if not math.isnan(value)
        },
        text_threshold=None if gate.text_threshold is None else round(gate.text_threshold, 4),
        negatives=len(index.negative_paths),
        negative_labels=len(gate.words),
    )
    return gate


def _number(value: object) -> float | None:
    """A configured number, or None for "auto" and unset."""
    return float(value) if isinstance(value, int | float) else None
