"""Synthetic pictures and a tiny CLIP that has really learned them.

No pretrained weights can be fetched here, so the tests train their own
few-layer CLIP on coloured shapes with captions (``clipsort.learn.demo``, the same
model ``clipsort demo-model`` makes). It learns colours (and shapes) well
enough that accuracy can be asserted, not just shapes of arrays; training is
deterministic and takes about 20 s on 2 CPU cores.

``python -m tests.synthetic DIR`` writes the example dataset shipped in Data/.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipsort.learn.shapes import COLORS, IMAGE_SIZE, SHAPES, draw
from tests.kept import kept_folder

# torch and transformers load only in the functions that build a model: drawing pictures (the unit
# tier's and most tests' use of this module) leaves the model stack unloaded.

__all__ = [
    "COLORS",
    "MISLEADING",
    "SHAPES",
    "draw",
    "grid",
    "make_dataset",
    "random_clip",
    "save",
    "tiny_vit",
]


# Reference folders that mislead: Clases/red shows green things, Clases/blue orange ones, so blue
# pictures land in red/ (the tiny model puts blue nearest green: cosine 0.46 against orange's 0.14,
# 4 logits at its scale) until a person's corrections teach the blue class what blue looks like.
MISLEADING = {"red": "green", "blue": "orange"}


def grid(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A picture of a kind the tiny model never saw: black-and-white lines, no colour, no shape."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    step, width = int(rng.integers(5, 12)), int(rng.integers(1, 3))
    for offset in range(width):
        pixels[:, offset::step] = 255
        if rng.random() < 0.5:
            pixels[offset::step, :] = 255
    return Image.fromarray(pixels)


def random_clip(out: Path, *, seed: int = 0, small: bool = False, width: int = 32, patch: int = 32) -> Path:
    """A CLIP with the ViT-B/32 architecture (or, ``small``, a two-layer one) and random weights.

    Real compute, no accuracy: for speed and memory measurements only. ``small`` takes ``width``
    (hidden size) and ``patch`` (224: one patch per picture, a forward pass next to free).
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    from clipsort.learn.demo import build_tokenizer
    from clipsort.learn.shapes import caption_corpus

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(caption_corpus())
    processor: CLIPProcessor = CLIPProcessor(  # type: ignore[no-untyped-call]
        image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer
    )
    text: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision: dict[str, Any] = {"patch_size": 32}
    sizes: dict[str, Any] = {}
    if small:
        tiny = {
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        }
        text, vision, sizes = text | tiny, vision | tiny | {"patch_size": patch}, {"projection_dim": width}
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, **sizes))
    model.eval()  # type: ignore[no-untyped-call]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def kept_clip(*, seed: int = 0, width: int = 32, patch: int = 32) -> Path:
    """A small :func:`random_clip`, made once per machine and kept (:mod:`tests.kept`), as the
    tests keep their tiny CLIP.

    Why: a benchmark that made its model afresh paid transformers' import to make it (about 4.6 s
    of CPU) and, at the first daemon or ``sort`` it started, the model's compiled copy (its folder
    and times are what the copy is keyed by); the smoke runs CI makes paid both in each run. The
    key holds the arguments, this module and the tokenizer's code. Measurements start after the
    model is loaded, so a kept one changes none of them; :mod:`bench.model_start`, which measures
    making the copy, makes it in a cache of its own run.
    """
    learn = Path(str(sys.modules["clipsort.learn.shapes"].__file__)).parent  # imported above
    sources = [f"{seed}:{width}:{patch}".encode()]
    sources += [code.read_bytes() for code in (Path(__file__), learn / "demo.py", learn / "shapes.py")]

    def make(folder: Path) -> None:
        random_clip(folder, seed=seed, small=True, width=width, patch=patch)

    return kept_folder("clipsort-bench", f"clip-{width}-{patch}", sources, make)


def tiny_vit(out: Path, *, seed: int = 0) -> Path:
    """A randomly initialised two-layer ViT image classifier folder, as a base for fine-tuning."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=2,  # type: ignore[call-arg]  # a PretrainedConfig keyword the stubs do not name
    )
    ViTForImageClassification(config).save_pretrained(out)
    ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(out)
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
            # Drawn as varied as the inbox's pictures, as real references are: the unknown gate
            # learns from their spread how far a picture of the class may stray.
            picture = draw(rng, color, SHAPES[k % 3], size=int(rng.integers(40, 160)))
            save(picture, root / "Clases" / name / f"ref{k}.png")
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
