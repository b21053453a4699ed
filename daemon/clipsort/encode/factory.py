"""The encode stage's parts built from the settings: decode limits, the encoder, the embedder.

The CLIP model is loaded only where some dataset's mode uses it: a root whose
datasets are all classified by fine-tuned checkpoints needs none (and so no
hub download and no memory for it).
"""

from __future__ import annotations

from clipsort.config import Settings
from clipsort.decode.images import DecodeLimits
from clipsort.encode import compiled
from clipsort.encode.embedcache import EmbeddingCache
from clipsort.encode.embeddings import Embedder
from clipsort.encode.encoder import Encoder


def make_encoder(settings: Settings) -> Encoder:
    """The configured model on the configured device, in the configured precision."""
    return Encoder(
        settings.model,
        settings.device,
        settings.text_model,
        settings.precision,
        settings.model_threads,
        compiled_in=compiled.cache_root() if settings.compiled_cache else None,
    )


def make_embedder(
    settings: Settings, encoder: Encoder | None, cache: EmbeddingCache | None = None
) -> Embedder:
    """The embedder with the configured decoding limits."""
    return Embedder(encoder, DecodeLimits.from_settings(settings), cache)
