"""Classification with a dataset's fine-tuned checkpoint (``clipsort train``).

Unlike the CLIP modes, this classifier reads the pictures themselves through
its own image processor and network; its classes are the checkpoint's
``id2label``, which name the destination folders. Checkpoints are loaded
through a small least-recently-used cache so that several datasets can each
have one without memory growing with their number.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

import daemon.encode.cliphead  # noqa: F401  (imported for its registration with AutoModelForImageClassification)
from daemon.classify.classindex import ClassIndex
from daemon.classify.modes.base import Decision, Inputs, Needs, Scores, decide
from daemon.errors import ModelLoadError


@dataclass(frozen=True)
class Checkpoint:
    """A loaded fine-tuned model and what it sorts into."""

    path: Path
    model: Any
    processor: Any
    classes: tuple[str, ...]


def load_checkpoint(path: Path, device: str) -> Checkpoint:
    """Load ``path``; ModelLoadError if it is broken or not an image classifier.

    Plain backbones and CLIP-head checkpoints (``clipsort-clip-head``) both load.
    """
    try:
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
    return Checkpoint(path, model, processor, classes)


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
    """Logits of the checkpoint's own network over its own classes, from the pictures themselves."""

    checkpoint: Checkpoint

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
        # The checkpoint's logits carry their own scale; CLIP's temperature is not its.
        return decide(self.picture_scores(inputs.pictures), self.checkpoint.classes, 1.0)

    def check(self, index: ClassIndex) -> None:
        # The checkpoint decides the classes; a mismatch with Clases/ is only worth a warning.
        return None

    def picture_scores(self, pictures: Sequence[Image.Image]) -> Scores:
        """Logits, one row per picture, one column per checkpoint class."""
        pixels = self.checkpoint.processor(images=list(pictures), return_tensors="pt")["pixel_values"]
        device = next(self.checkpoint.model.parameters()).device
        with torch.inference_mode():
            logits = self.checkpoint.model(pixel_values=pixels.to(device)).logits
        result: Scores = logits.float().cpu().numpy()
        return result
