"""The encode stage's parts built from the settings: decode limits, the encoder, the embedder."""

from __future__ import annotations

from daemon.config import Settings
from daemon.encode.embedcache import EmbeddingCache
from daemon.encode.embeddings import Embedder
from daemon.encode.encoder import Encoder
from daemon.encode.images import DecodeLimits


def decode_limits(settings: Settings) -> DecodeLimits:
    """What an inbox or reference file may be, as configured."""
    return DecodeLimits(tuple(settings.image_formats), settings.max_pixels, int(settings.max_file_mb * 2**20))


def make_encoder(settings: Settings) -> Encoder:
    """The configured model on the configured device, in the configured precision."""
    return Encoder(settings.model, settings.device, settings.text_model, settings.precision)


def make_embedder(settings: Settings, encoder: Encoder, cache: EmbeddingCache | None = None) -> Embedder:
    """The embedder with the configured decoding limits."""
    return Embedder(encoder, decode_limits(settings), cache)
