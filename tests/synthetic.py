"""Synthetic pictures and a tiny CLIP that has really learned them.

No pretrained weights can be fetched here, so the tests train their own
few-layer CLIP on coloured shapes with captions ("a photo of a red circle.").
It learns colours (and shapes) well enough that accuracy can be asserted,
not just shapes of arrays. Training takes seconds on 2 CPU cores.

``python -m tests.synthetic DIR`` writes the example dataset shipped in Data/.
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tokenizers import pre_tokenizers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from daemon.config import DEFAULT_TEMPLATES

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 40),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
CAPTIONS = (
    "a photo of a {c} {s}.",
    "a {c} {s}",
    "{c}",
    "a photo of a {s}.",
    *(template.replace("{}", "{c}") for template in DEFAULT_TEMPLATES),
)
IMAGE_SIZE = 32


def draw(rng: np.random.Generator, color: str, shape: str = "circle", size: int = 64) -> Image.Image:
    """One shape of ``color`` at a random place and size on a random grey background."""
    background = tuple(int(v) for v in rng.integers(90, 170, 3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    side = int(rng.integers(size // 3, size * 3 // 4))
    x, y = (int(v) for v in rng.integers(0, size - side, 2))
    fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLORS[color])
    if shape == "circle":
        pen.ellipse([x, y, x + side, y + side], fill=fill)
    elif shape == "square":
        pen.rectangle([x, y, x + side, y + side], fill=fill)
    else:
        pen.polygon([(x + side // 2, y), (x, y + side), (x + side, y + side)], fill=fill)
    return image


def grid(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A picture of a kind the tiny model never saw: black-and-white lines, no colour, no shape."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    step, width = int(rng.integers(5, 12)), int(rng.integers(1, 3))
    for offset in range(width):
        pixels[:, offset::step] = 255
        if rng.random() < 0.5:
            pixels[offset::step, :] = 255
    return Image.fromarray(pixels)


def build_tokenizer(corpus: list[str]) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary holds every word of ``corpus`` whole.

    Built by hand rather than by a BPE trainer, whose tie-breaking varies from
    run to run: the same corpus must give the same token ids, or the "same"
    tiny model would differ between test sessions. Each word gets a
    left-to-right chain of merges; any other text falls back to bytes.
    """
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    words = sorted({word for text in corpus for word in re.findall(r"[a-z]+|[^\sa-z]", text.lower())})
    for word in words:
        current, *rest = [*word[:-1], word[-1] + "</w>"]
        for symbol in rest:
            if current + symbol not in vocab:
                vocab[current + symbol] = len(vocab)
                merges.append((current, symbol))
            current += symbol
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=32)


def train_tiny_clip(out: Path, *, seed: int = 0, steps: int = 300, hidden: int = 64) -> Path:
    """Train a two-layer CLIP on coloured shapes and save it where sentence-transformers loads it."""
    random.seed(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    corpus = [c.format(c=color, s=shape) for c in CAPTIONS for color in COLORS for shape in SHAPES]
    tokenizer = build_tokenizer(corpus)
    images = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = CLIPProcessor(image_processor=images, tokenizer=tokenizer)
    layer = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={
            **layer,
            "vocab_size": len(tokenizer),
            "num_attention_heads": 2,
            "max_position_embeddings": 32,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={**layer, "image_size": IMAGE_SIZE, "patch_size": 8, "num_attention_heads": 2},
        projection_dim=32,
    )
    model = CLIPModel(config)
    count = 3000
    items = [(random.choice(list(COLORS)), random.choice(SHAPES)) for _ in range(count)]
    pixels = processor(images=[draw(rng, c, s) for c, s in items], return_tensors="pt")["pixel_values"]
    text = tokenizer(
        [random.choice(CAPTIONS).format(c=c, s=s) for c, s in items], padding=True, return_tensors="pt"
    )
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        pick = torch.randint(0, count, (128,))
        loss = model(
            input_ids=text.input_ids[pick],
            attention_mask=text.attention_mask[pick],
            pixel_values=pixels[pick],
            return_loss=True,
        ).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def random_clip(out: Path, *, seed: int = 0, small: bool = False) -> Path:
    """A CLIP with the ViT-B/32 architecture (or, ``small``, a two-layer one) and random weights.

    Real compute, no accuracy: for speed and memory measurements only.
    """
    torch.manual_seed(seed)
    corpus = [c.format(c=color, s=shape) for c in CAPTIONS for color in COLORS for shape in SHAPES]
    tokenizer = build_tokenizer(corpus)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={"patch_size": 32},
    )
    if small:
        tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
        config = CLIPConfig(
            text_config={**config.text_config.to_dict(), **tiny},
            vision_config={**config.vision_config.to_dict(), **tiny},
            projection_dim=32,
        )
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def tiny_vit(out: Path, *, seed: int = 0) -> Path:
    """A randomly initialised two-layer ViT image classifier folder, as a base for fine-tuning."""
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=2,
    )
    ViTForImageClassification(config).save_pretrained(out)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(out)
    return out


def save(image: Image.Image, path: Path) -> Path:
    """Write ``image`` (format from the suffix), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def make_dataset(
    root: Path,
    classes: Mapping[str, str],
    *,
    references: int = 4,
    inbox: Iterable[str] = (),
    seed: int = 1,
) -> dict[str, str]:
    """``root/Clases/<class>/`` with ``references`` pictures of the class's colour, and inbox files.

    ``classes`` maps a class folder name to the colour its pictures show;
    ``inbox`` lists colours to drop into ``Images/``. Returns inbox file
    name -> the colour it shows.
    """
    rng = np.random.default_rng(seed)
    for name, color in classes.items():
        (root / "Clases" / name).mkdir(parents=True, exist_ok=True)
        for k in range(references):
            save(draw(rng, color, SHAPES[k % 3]), root / "Clases" / name / f"ref{k}.png")
    (root / "Images").mkdir(parents=True, exist_ok=True)
    truth = {}
    for k, color in enumerate(inbox):
        name = f"img{k:04d}.{'jpg' if k % 2 else 'png'}"
        size = int(rng.integers(40, 160))
        save(draw(rng, color, SHAPES[int(rng.integers(3))], size=size), root / "Images" / name)
        truth[name] = color
    return truth


if __name__ == "__main__":
    target = Path(sys.argv[1])
    colors = ["red", "green", "blue"]
    make_dataset(target, {c: c for c in colors}, references=3, inbox=colors * 3, seed=7)
    print(f"wrote {target}")
