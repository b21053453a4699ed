"""A plain Hugging Face ``CLIPModel`` folder, loaded with transformers alone.

sentence-transformers wraps such a folder in one generic module and encodes
through it; importing it costs about 1.3 s of CPU on every start (measured on
2 cores, beside torch's 1.35 and transformers' 2.9), in the daemon, in each
`clipsort sort` and in every Ray actor. A folder holding only a CLIP model
(``config.json`` of model type ``clip`` and no ``modules.json``: what
``clipsort demo-model`` and ``CLIPModel.save_pretrained`` write) needs none of
that, so :class:`PlainClip` loads it directly and encodes as
sentence-transformers would: text padded to the batch's longest and truncated
to the tokenizer's limit, features from ``get_text_features`` and
``get_image_features``, L2-normalised (a test holds the two paths to 1e-6).
Everything else, hub names and folders with a ``modules.json`` among them,
stays with sentence-transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from PIL import Image

MODALITIES = ("text", "image")


def is_plain_clip(folder: Path) -> bool:
    """Whether ``folder`` holds a bare ``CLIPModel`` (no sentence-transformers modules around it)."""
    if (folder / "modules.json").exists():
        return False
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "clip"


class OneModule:
    """A model that is its own one module, as the encoder reads a sentence-transformers one: ``self[0]``
    is itself, so what the encoder looks up on the module is found the same way on both."""

    modalities = MODALITIES

    def __len__(self) -> int:
        return 1

    def __getitem__(self, position: int) -> Self:
        if position != 0:
            raise IndexError(position)
        return self


class PlainClip(OneModule):
    """A CLIP model and its processor in the shape the encoder reads from a sentence-transformers one
    (its ``model`` and ``processor`` hold the direct image tower and the logit scale)."""

    def __init__(self, folder: Path, device: str) -> None:
        import transformers  # noqa: PLC0415  (4.6 s of CPU: not where a compiled copy serves)

        self.model = transformers.CLIPModel.from_pretrained(str(folder), local_files_only=True)
        self.processor = transformers.CLIPProcessor.from_pretrained(str(folder), local_files_only=True)
        self.device = device
        self._module().to(device).eval()

    def _module(self) -> torch.nn.Module:
        """The model as torch types it (transformers' own stubs type ``to`` and ``half`` oddly)."""
        module: torch.nn.Module = self.model
        return module

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def half(self) -> PlainClip:
        self._module().half()
        return self

    def get_embedding_dimension(self) -> int:
        return int(self.model.config.projection_dim or 0)

    def encode(self, items: Sequence[str] | Sequence[Image.Image], **_: object) -> np.ndarray:
        """L2-normalised float32 rows of texts or pictures (the sentence-transformers options are
        its defaults here: one batch, NumPy out, normalised)."""
        with torch.inference_mode():
            if items and isinstance(items[0], str):
                tokens = self.processor.tokenizer(
                    list(items), padding=True, truncation="longest_first", return_tensors="pt"
                ).to(self.device)
                found = self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                )
            else:
                pixels = self.processor.image_processor(images=list(items), return_tensors="pt")[
                    "pixel_values"
                ]
                found = self.model.get_image_features(
                    pixel_values=pixels.to(self.device, dtype=self.model.logit_scale.dtype)
                )
            features = found if isinstance(found, torch.Tensor) else found.pooler_output
            normalised = torch.nn.functional.normalize(features.float(), dim=-1)
        return np.asarray(normalised.cpu().numpy(), dtype=np.float32)
