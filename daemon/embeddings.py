"""From files and class names to vectors: decode, encode, ensemble prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from PIL import Image

from daemon.encoder import Encoder, Vectors
from daemon.errors import ImageRejected
from daemon.images import load_image

log = structlog.get_logger()


@dataclass(frozen=True)
class DecodeLimits:
    """What an untrusted file may be to get decoded at all."""

    formats: tuple[str, ...]
    max_pixels: int


def normalise(vectors: Vectors) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit: Vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return unit


class Embedder:
    """Turns image files and class descriptions into unit vectors with one encoder."""

    def __init__(self, encoder: Encoder, limits: DecodeLimits) -> None:
        self.encoder = encoder
        self.limits = limits

    def decode(self, path: Path) -> Image.Image:
        """The model-sized picture in ``path``; raises :class:`ImageRejected`."""
        return load_image(
            path,
            target=self.encoder.image_size,
            formats=self.limits.formats,
            max_pixels=self.limits.max_pixels,
        )

    def images(self, paths: Sequence[Path]) -> tuple[Vectors, list[Path]]:
        """Vectors of the readable files among ``paths``, and which those were."""
        pictures: list[Image.Image] = []
        kept: list[Path] = []
        for path in paths:
            try:
                pictures.append(self.decode(path))
            except ImageRejected as exc:
                log.warning("reference_unreadable", path=str(path), reason=str(exc))
                continue
            kept.append(path)
        return self.encoder.encode_images(pictures), kept

    def descriptions(self, texts: Sequence[str], templates: Sequence[str]) -> Vectors:
        """One vector per text: the mean of its prompt-template embeddings, renormalised.

        Averaging over several phrasings is CLIP's prompt ensembling; it is
        steadier than any single template.
        """
        if not texts:
            return np.zeros((0, self.encoder.dimension), dtype=np.float32)
        prompts = [template.format(text) for text in texts for template in templates]
        vectors = self.encoder.encode_texts(prompts).reshape(len(texts), len(templates), -1)
        return normalise(vectors.mean(axis=1))
