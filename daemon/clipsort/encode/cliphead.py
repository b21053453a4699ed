"""CLIP's vision tower with a zero-shot classification head, as a transformers model.

Work on fine-tuning CLIP (WiSE-FT, FLYP, "Fine-tuning can distort pretrained
features") finds that starting the classifier from the zero-shot head, the
normalised text embeddings of the class descriptions scaled by CLIP's
temperature, keeps what CLIP knows and needs fewer images than a fresh head.
Before any training this model *is* the text-mode classifier.

:func:`register` tells ``AutoModelForImageClassification`` of it (the checkpoint
loader calls it), so a published checkpoint reloads like any other.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import ImageClassifierOutput

MODEL_TYPE = "clipsort-clip-head"


class ClipHeadConfig(PretrainedConfig):  # type: ignore[no-untyped-call]
    """The CLIP vision configuration plus the projection size."""

    model_type = MODEL_TYPE

    def __init__(
        self, vision_config: dict[str, Any] | None = None, projection_dim: int = 512, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.vision_config = vision_config or {}
        self.projection_dim = projection_dim


class ClipHeadForImageClassification(PreTrainedModel):  # type: ignore[no-untyped-call]
    """Normalised CLIP image features times a linear head (initialised as the zero-shot head)."""

    config_class = ClipHeadConfig
    main_input_name = "pixel_values"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        vision: Any = CLIPVisionConfig(**config.vision_config)
        self.vision = CLIPVisionModel(vision)
        self.projection = nn.Linear(vision.hidden_size, int(config.projection_dim), bias=False)
        self.classifier = nn.Linear(int(config.projection_dim), int(config.num_labels))
        self.post_init()  # type: ignore[no-untyped-call]

    def _init_weights(self, module: nn.Module) -> None:
        # Weights come from a CLIP model or a checkpoint, never from random init.
        return None

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> ImageClassifierOutput:
        pooled = self.vision(pixel_values=pixel_values).pooler_output
        features = nn.functional.normalize(self.projection(pooled), dim=-1)
        logits = self.classifier(features)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_clip(
        cls, clip: Any, text_embeddings: torch.Tensor, classes: list[str]
    ) -> ClipHeadForImageClassification:
        """CLIP's vision tower and projection, with the zero-shot head for ``classes``."""
        assert isinstance(clip, CLIPModel)
        clip_config: Any = clip.config  # transformers' own annotations are looser than its objects
        config = ClipHeadConfig(
            vision_config=clip_config.vision_config.to_dict(),
            projection_dim=int(clip_config.projection_dim),
            id2label=dict(enumerate(classes)),
            label2id={name: k for k, name in enumerate(classes)},
        )
        model = cls(config)
        # transformers 5 flattened CLIPVisionModel; older versions wrap a .vision_model.
        tower: Any = getattr(model.vision, "vision_model", model.vision)
        tower.load_state_dict(clip.vision_model.state_dict())
        model.projection.load_state_dict(clip.visual_projection.state_dict())
        with torch.no_grad():
            unit = nn.functional.normalize(text_embeddings.float(), dim=-1)
            model.classifier.weight.copy_(clip.logit_scale.exp() * unit)
            model.classifier.bias.zero_()
        return model


@functools.cache
def register() -> None:
    """Let transformers' Auto classes load a saved CLIP head (once per process, before loading one).

    Called where checkpoints are loaded, not when this module is imported.
    """
    AutoConfig.register(MODEL_TYPE, ClipHeadConfig)
    AutoModelForImageClassification.register(ClipHeadConfig, ClipHeadForImageClassification)
