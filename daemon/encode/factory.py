"""The encode stage's parts built from the settings: decode limits, the encoder, the embedder.

The CLIP model is loaded only where some dataset's mode uses it: a root whose
datasets are all classified by fine-tuned checkpoints needs none (and so no
hub download and no memory for it).
"""

from __future__ import annotations

from collections.abc import Iterable

from daemon.config import Settings
from daemon.encode.embedcache import EmbeddingCache
from daemon.encode.embeddings import Embedder
from daemon.encode.encoder import Encoder
from daemon.encode.images import DecodeLimits


def make_encoder(settings: Settings) -> Encoder:
    """The configured model on the configured device, in the configured precision."""
    return Encoder(
        settings.model, settings.device, settings.text_model, settings.precision, settings.model_threads
    )


def needs_clip(settings: Settings, datasets: Iterable[str] | None = None) -> bool:
    """Whether some dataset classifies CLIP vectors (every mode does but ``finetuned``).

    With ``datasets`` (a one-shot run's) only those count; without, every
    dataset the daemon may meet: one without a ``[datasets.<name>]`` table
    follows the global mode.
    """
    if datasets is not None:
        return any(settings.for_dataset(name).mode != "finetuned" for name in datasets)
    tables = (own.mode for own in settings.datasets.values())
    return settings.mode != "finetuned" or any(mode not in (None, "finetuned") for mode in tables)


def clip_for(settings: Settings, datasets: Iterable[str] | None = None) -> Encoder | None:
    """The CLIP model where :func:`needs_clip`, else None."""
    return make_encoder(settings) if needs_clip(settings, datasets) else None


def make_embedder(
    settings: Settings, encoder: Encoder | None, cache: EmbeddingCache | None = None
) -> Embedder:
    """The embedder with the configured decoding limits."""
    return Embedder(encoder, DecodeLimits.from_settings(settings), cache)
