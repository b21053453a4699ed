"""The demonstration's pictures: coloured shapes on grey, and their captions (no model stack).

The demo model (:mod:`clipsort.learn.demo`) learns from these; the tests and benchmarks draw
their pictures with them too, without loading torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from clipsort.config import DEFAULT_TEMPLATES

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


def caption_corpus() -> list[str]:
    """Every caption the demo model is trained on (its tokenizer knows each word whole)."""
    return [c.format(c=color, s=shape) for c in CAPTIONS for color in COLORS for shape in SHAPES]
