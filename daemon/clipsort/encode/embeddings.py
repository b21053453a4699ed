"""From files and class names to vectors: decode, encode, ensemble prompts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog
from PIL import Image

from clipsort.config import Settings, resolve_batch
from clipsort.decode.images import Crop, DecodeLimits
from clipsort.encode.embedcache import EmbeddingCache, text_key
from clipsort.encode.vectors import Vectors
from clipsort.errors import ImageRejected, ModelLoadError

if TYPE_CHECKING:  # the embedder drives an encoder it is given; importing one loads torch
    from clipsort.encode.encoder import Encoder

log = structlog.get_logger()
PICTURE_SIDE = 224  # decoding's target without a CLIP model: the common input of image classifiers
TEXT_CHUNK = 256  # prompts encoded per forward pass


def normalise(vectors: Vectors) -> Vectors:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit: Vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    return unit


class Embedder:
    """Turns image files and class descriptions into unit vectors with one encoder.

    With a cache, only files and descriptions never seen with this model are
    encoded; :attr:`encoded_references` counts those that were.
    """

    def __init__(
        self, encoder: Encoder | None, limits: DecodeLimits, cache: EmbeddingCache | None = None
    ) -> None:
        # None where every dataset is classified by a fine-tuned checkpoint: no CLIP model is loaded.
        self.encoder = encoder
        self.limits = limits
        self.cache = cache
        self.encoded_references = 0

    @property
    def clip(self) -> Encoder:
        """The CLIP model; ModelLoadError where none is loaded (no dataset's mode uses one)."""
        if self.encoder is None:
            raise ModelLoadError("no CLIP model is loaded: every dataset is classified by a checkpoint")
        return self.encoder

    def batch_size(self, settings: Settings) -> int:
        """Images per forward pass: :func:`batch_size_on` the device the model runs on."""
        return batch_size_on(settings, None if self.encoder is None else self.encoder.device)

    def decoding(self, *, vectors: bool = True) -> tuple[int, Callable[[Image.Image], Crop] | None]:
        """The shortest edge pictures are decoded to, and what makes one the model's input.

        For a dataset not classified by CLIP vectors (``vectors=False``), or without a CLIP model,
        a checkpoint's own processor resizes each picture; decoding still drafts to
        :data:`PICTURE_SIDE` so the processor gets detail enough. So a fine-tuned dataset's
        pictures are the same whether or not a CLIP model is loaded beside it for other datasets.
        """
        if self.encoder is None or not vectors:
            return PICTURE_SIDE, None
        return self.encoder.image_size, self.encoder.crop

    def decode(self, path: Path) -> Image.Image:
        """The model-sized picture in ``path``; raises :class:`ImageRejected`."""
        return self.limits.load(path, self.clip.image_size)

    def images(self, paths: Sequence[Path]) -> tuple[Vectors, list[Path]]:
        """Vectors of the readable files among ``paths``, and which those were."""
        keys = {path: self._file_key(path) for path in paths}
        known = self._cached(key for key in keys.values() if key is not None)
        vectors: dict[Path, Vectors] = {}
        fresh: dict[Path, Image.Image] = {}
        for path, key in keys.items():
            if key is not None and key in known:
                vectors[path] = known[key]
                continue
            try:
                fresh[path] = self.decode(path)
            except ImageRejected as exc:
                log.warning("reference_unreadable", path=str(path), reason=str(exc))
        encoded = dict(zip(fresh, self.clip.encode_images(list(fresh.values())), strict=True))
        self.encoded_references += len(encoded)
        if self.cache is not None:
            self.cache.put(
                self.clip.identity, {key: v for p, v in encoded.items() if (key := keys[p]) is not None}
            )
        vectors.update(encoded)
        kept = [path for path in paths if path in vectors]
        if not kept:
            return np.zeros((0, self.clip.dimension), dtype=np.float32), kept
        return np.stack([vectors[path] for path in kept]), kept

    def _cached(self, keys: Iterable[str]) -> dict[str, Vectors]:
        return self.cache.get(self.clip.identity, keys) if self.cache is not None else {}

    def _file_key(self, path: Path) -> str | None:
        if self.cache is None:
            return None
        try:
            return self.cache.file_key(path)
        except OSError:
            return None  # unreadable: decoding will say why

    def descriptions(self, texts: Sequence[str], templates: Sequence[str]) -> Vectors:
        """One vector per text: the mean of its prompt-template embeddings, renormalised.

        Averaging over several phrasings is CLIP's prompt ensembling; it is
        steadier than any single template.
        """
        keys = [text_key(text, templates) for text in texts]
        known = self.cache.get(self.clip.text_identity, keys) if self.cache is not None else {}
        missing = [text for text, key in zip(texts, keys, strict=True) if key not in known]
        if missing:
            prompts = [template.format(text) for text in missing for template in templates]
            # In chunks: thousands of prompts (the unknown gate's candidate words) in one batch
            # would hold every layer's attention for all of them at once.
            chunks = [
                self.clip.encode_texts(prompts[k : k + TEXT_CHUNK])
                for k in range(0, len(prompts), TEXT_CHUNK)
            ]
            vectors = np.concatenate(chunks).reshape(len(missing), len(templates), -1)
            new = dict(
                zip([text_key(t, templates) for t in missing], normalise(vectors.mean(axis=1)), strict=True)
            )
            if self.cache is not None:
                self.cache.put(self.clip.text_identity, new)
            known = {**known, **new}
        if not keys:
            return np.zeros((0, self.clip.dimension), dtype=np.float32)
        return np.stack([known[key] for key in keys]).astype(np.float32)


def batch_size_on(settings: Settings, device: str | None = None) -> int:
    """Images per forward pass: the ``batch_size`` setting, or where it is automatic (0) the size
    for ``device`` (:func:`~clipsort.config.resolve_batch`), by default the one ``settings.device``
    names, where a model not loaded yet will run."""
    if device is None:
        from clipsort.encode.encoder import resolve_device  # noqa: PLC0415  (it loads torch)

        device = resolve_device(settings.device)
    return resolve_batch(settings.batch_size, device)
