"""How a dataset becomes a classification target: class index, classifier, calibration, review policy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from daemon.classify.calibration import Calibration, calibrate
from daemon.classify.checkpoints import checkpoints_of, current_checkpoint
from daemon.classify.classindex import ClassIndex, Example, build_class_index
from daemon.classify.modes import Classifier, ClipClassifier, make_classifier
from daemon.classify.modes.finetuned import CheckpointCache, FinetunedClassifier
from daemon.classify.review import ReviewPolicy
from daemon.config import DatasetSettings, Settings
from daemon.encode.embeddings import Embedder
from daemon.encode.encoder import resolve_device
from daemon.errors import NoClassesError
from daemon.layout import DatasetLayout

log = structlog.get_logger()

# A dataset's corrected examples (files a person moved to another class): the learn stage provides
# them from the journal (daemon.learn.corrections.corrected_from); classification only uses them.
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

    @property
    def classes(self) -> tuple[str, ...]:
        """The folders files can be sorted into: the checkpoint's classes in finetuned mode."""
        return self.classifier.classes(self.index)


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
    if set(classifier.classes(index)) != set(index.classes):
        log.warning(
            "checkpoint_classes_differ",
            dataset=layout.name,
            checkpoint=str(path),
            checkpoint_classes=list(classifier.classes(index)),
            class_folders=list(index.classes),
        )
    own = settings.for_dataset(layout.name)
    review = ReviewPolicy(min_confidence=_number(own.min_confidence), min_margin=own.min_margin)
    return Target(layout=layout, settings=own, index=index, classifier=classifier, review=review)


def choose_classifier(
    own: DatasetSettings, index: ClassIndex, logit_scale: float
) -> tuple[ClipClassifier, Calibration | None]:
    """The classifier of ``own.mode`` on ``index``, calibrated by leave-one-out where anything is auto."""
    calibration = None
    auto_weights = own.mode == "mixed" and "auto" in (own.alpha, own.beta)
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
    if own.mode == "finetuned":  # the checkpoint classifies the pictures: no CLIP vectors are needed
        index = build_class_index(layout, None, own.prompt_templates, own.descriptions)
        cache = checkpoints or CheckpointCache(settings.checkpoints_loaded, resolve_device(settings.device))
        return finetuned_target(layout, settings, index, cache)
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
    )


def _number(value: object) -> float | None:
    """A configured number, or None for "auto" and unset."""
    return float(value) if isinstance(value, int | float) else None
