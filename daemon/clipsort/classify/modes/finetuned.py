"""Classification with a dataset's fine-tuned checkpoint (``clipsort train``).

Unlike the CLIP modes, this classifier reads the pictures themselves through
its own image processor and network; its classes are the checkpoint's
``id2label``, which name the destination folders. Checkpoints are loaded
through a small least-recently-used cache so that several datasets can each
have one without memory growing with their number.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from clipsort.classify.classindex import ClassIndex
from clipsort.classify.modes.base import Decision, Inputs, Needs, decide
from clipsort.classify.scoring import Scores
from clipsort.classify.unknown import Gate
from clipsort.encode.vectors import Vectors
from clipsort.errors import ModelLoadError


@dataclass(frozen=True)
class Checkpoint:
    """A loaded fine-tuned model and what it sorts into."""

    path: Path
    model: Any
    processor: Any
    classes: tuple[str, ...]
    # References it was not trained on (paths under Clases/, from its metrics.json): empty for a
    # checkpoint made elsewhere or before clipsort recorded them.
    unseen: frozenset[str] = frozenset()


def load_checkpoint(path: Path, device: str) -> Checkpoint:
    """Load ``path``; ModelLoadError if it is broken or not an image classifier.

    Plain backbones and CLIP-head checkpoints (``clipsort-clip-head``) both load.
    """
    try:
        # The model stack loads here, not on import: the class index and the unit tests need none of it.
        from transformers import AutoImageProcessor, AutoModelForImageClassification  # noqa: PLC0415

        from clipsort.encode import cliphead  # noqa: PLC0415

        cliphead.register()  # a checkpoint may hold a CLIP head: the Auto classes must know it
        processor = AutoImageProcessor.from_pretrained(path)  # type: ignore[no-untyped-call]
        model = AutoModelForImageClassification.from_pretrained(path).to(device).eval()
        labels = model.config.id2label
        classes = tuple(str(labels[k]) for k in range(len(labels)))
    except Exception as exc:
        raise ModelLoadError(
            f"checkpoint {str(path)!r} cannot be used: {type(exc).__name__}: {exc}"
        ) from None
    if not classes or any(not name or "/" in name or name.startswith(".") for name in classes):
        raise ModelLoadError(f"checkpoint {str(path)!r} has unusable class names {classes!r}")
    return Checkpoint(path, model, processor, classes, validation_files(path))


def validation_files(path: Path) -> frozenset[str]:
    """The references checkpoint ``path`` never trained on, as its training recorded them."""
    try:
        recorded = json.loads((path / "metrics.json").read_text()).get("validation_files", [])
    except (OSError, ValueError, AttributeError):
        return frozenset()  # no record: the gate falls back to its training references alone
    return frozenset(str(name) for name in recorded) if isinstance(recorded, list) else frozenset()


class CheckpointCache:
    """At most ``size`` checkpoints in memory, least recently used dropped first."""

    def __init__(self, size: int, device: str) -> None:
        self.size = size
        self.device = device
        self._loaded: OrderedDict[Path, Checkpoint] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> Checkpoint:
        with self._lock:
            if path in self._loaded:
                self._loaded.move_to_end(path)
                return self._loaded[path]
        checkpoint = load_checkpoint(path, self.device)
        with self._lock:
            self._loaded[path] = checkpoint
            while len(self._loaded) > self.size:
                self._loaded.popitem(last=False)
        return checkpoint

    def resize(self, size: int) -> None:
        """Keep at most ``size`` checkpoints from now on, dropping the least recently used at once."""
        with self._lock:
            self.size = size
            while len(self._loaded) > self.size:
                self._loaded.popitem(last=False)

    def __len__(self) -> int:
        return len(self._loaded)


@dataclass(frozen=True)
class FinetunedClassifier:
    """Logits of the checkpoint's own network over its own classes, from the pictures themselves.

    With a ``gate`` ("none of these", on by default as in the CLIP modes) each picture is also judged
    by the reference rule on the checkpoint's own features (its pooled output, the head's input):
    ``known`` holds those features for the references in ``Clases/`` (:func:`known_features`).
    """

    checkpoint: Checkpoint
    gate: Gate | None = None
    known: ClassIndex | None = None

    needs: ClassVar[Needs] = "pictures"

    @property
    def name(self) -> str:
        return "finetuned"

    @property
    def decided_by(self) -> str:
        return str(self.checkpoint.path)

    def classes(self, index: ClassIndex) -> tuple[str, ...]:
        return self.checkpoint.classes

    def classify(self, inputs: Inputs, index: ClassIndex, clip_scale: float) -> list[Decision]:
        logits, features = self.forward(inputs.pictures)
        # The checkpoint's logits carry their own scale; CLIP's temperature is not its.
        decisions = decide(logits, self.checkpoint.classes, 1.0)
        if self.gate is None or self.known is None:
            return decisions
        return self.gate.apply(decisions, features, self.known)

    def check(self, index: ClassIndex) -> None:
        # The checkpoint decides the classes; a mismatch with Clases/ is only worth a warning.
        return None

    def picture_scores(self, pictures: Sequence[Image.Image]) -> Scores:
        """Logits, one row per picture, one column per checkpoint class."""
        return self.forward(pictures)[0]

    def forward(self, pictures: Sequence[Image.Image]) -> tuple[Scores, Vectors]:
        """Logits and unit-length features (the head's input), one row per picture, in one pass."""
        import torch  # noqa: PLC0415  (a checkpoint is loaded, so torch is)

        model = self.checkpoint.model
        pixels = self.checkpoint.processor(images=list(pictures), return_tensors="pt")["pixel_values"]
        device = next(model.parameters()).device
        seen: list[torch.Tensor] = []
        head = getattr(model, "classifier", None)  # ViT's, the CLIP head's and most others' name
        hook = head.register_forward_pre_hook(lambda _, args: seen.append(args[0])) if head else None
        try:
            with torch.inference_mode():
                logits = model(pixel_values=pixels.to(device)).logits
        finally:
            if hook is not None:
                hook.remove()
        scores: Scores = logits.float().cpu().numpy()
        if not seen:
            return scores, np.zeros((len(scores), 0), np.float32)
        features = seen[0].float()
        features = features.reshape(len(features), -1)
        unit: Vectors = torch.nn.functional.normalize(features, dim=1).cpu().numpy()
        return scores, unit

    def head_rows(self) -> Vectors:
        """The head's weight rows at unit length, one per class: each class's direction in the features.

        The CLIP head starts as the descriptions' text vectors, so its rows play the descriptions'
        part in the unknown gate; (classes, 0) when the head is no plain linear layer.
        """
        import torch  # noqa: PLC0415  (a checkpoint is loaded, so torch is)

        head = getattr(self.checkpoint.model, "classifier", None)
        weight = getattr(head, "weight", None)
        classes = len(self.checkpoint.classes)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[0] != classes:
            return np.zeros((classes, 0), np.float32)
        rows: Vectors = torch.nn.functional.normalize(weight.detach().float(), dim=1).cpu().numpy()
        return rows


def known_features(
    classifier: FinetunedClassifier,
    index: ClassIndex,
    load: Callable[[Path], Image.Image | None],
    batch: int = 32,
) -> ClassIndex | None:
    """The references and negatives of ``index`` as the checkpoint sees them, labelled by its classes.

    ``load`` decodes a file (None: unreadable, left out). None when the checkpoint's head has no
    input to read, or no reference names a class the checkpoint knows.
    """
    classes = classifier.checkpoint.classes

    def features(paths: Sequence[Path]) -> tuple[Vectors, list[Path]]:
        kept = [(path, picture) for path in paths if (picture := load(path)) is not None]
        rows = [
            classifier.forward([picture for _, picture in kept[start : start + batch]])[1]
            for start in range(0, len(kept), batch)
        ]
        width = rows[0].shape[1] if rows else 0
        return (np.concatenate(rows) if rows else np.zeros((0, width), np.float32)), [p for p, _ in kept]

    named = [
        (path, classes.index(index.classes[label]))
        for path, label in zip(index.reference_paths, index.reference_labels.tolist(), strict=True)
        if index.classes[label] in classes
    ]
    vectors, kept = features([path for path, _ in named])
    if not kept or vectors.shape[1] == 0:
        return None
    label_of = dict(named)
    negatives, negative_paths = features(index.negative_paths)
    return ClassIndex(
        dataset=index.dataset,
        classes=classes,
        descriptions=classes,
        text_vectors=classifier.head_rows(),
        reference_vectors=vectors,
        reference_labels=np.asarray([label_of[path] for path in kept], dtype=np.int64),
        reference_paths=tuple(kept),
        reference_weights=np.ones(len(kept), dtype=np.float32),
        corrected=np.zeros(len(kept), dtype=np.bool_),
        negative_vectors=negatives if len(negatives) else np.zeros((0, vectors.shape[1]), np.float32),
        negative_paths=tuple(negative_paths),
    )
