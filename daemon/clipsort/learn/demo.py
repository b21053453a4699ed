"""A small demonstration CLIP, trained here on generated pictures: clipsort without a network.

``clipsort demo-model DIR`` and the test suite both use it. The model learns
six colours and three shapes from coloured-shape pictures with captions ("a
photo of a red circle."), well enough that the shipped ``Data/example``
(red, green and blue) sorts correctly and tests can assert accuracy. It is
no general image model.

Training is deterministic: seeded generators, deterministic kernels and one
CPU thread. The thread matters twice: the reduction order (and so the bits
of the weights) would otherwise depend on the machine's core count, and on
two busy cores one thread is about five times faster than two threads
fighting over them (49 against 267 ms a step, measured beside a test run).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import pre_tokenizers
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

from clipsort.encode.encoder import quiet_transformers
from clipsort.learn.shapes import CAPTIONS, COLORS, IMAGE_SIZE, SHAPES, caption_corpus, draw

TRAINING_PICTURES = 3000
BATCH = 128
STEPS = 300


def build_tokenizer(corpus: list[str]) -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary holds every word of ``corpus`` whole.

    Built by hand rather than by a BPE trainer, whose tie-breaking varies from
    run to run: the same corpus must give the same token ids, or the "same"
    tiny model would differ between runs. Each word gets a left-to-right chain
    of merges; any other text falls back to bytes.
    """
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    words: list[str] = sorted(
        {word for text in corpus for word in re.findall(r"[a-z]+|[^\sa-z]", text.lower())}
    )
    for word in words:
        current, *rest = [*word[:-1], word[-1] + "</w>"]
        for symbol in rest:
            if current + symbol not in vocab:
                vocab[current + symbol] = len(vocab)
                merges.append((current, symbol))
            current += symbol
    # Pairs are what the tokenizers backend takes; transformers' annotation names only strings.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=32)  # type: ignore[arg-type]


def small_processor(tokenizer: CLIPTokenizer) -> CLIPProcessor:
    """CLIP's processor at the demo model's 32-pixel input (the PIL backend: no torchvision needed)."""
    images = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor: CLIPProcessor = CLIPProcessor(image_processor=images, tokenizer=tokenizer)  # type: ignore[no-untyped-call]
    return processor


@contextmanager
def deterministic() -> Iterator[None]:
    """One CPU thread and deterministic kernels for the block; the process's own choice after."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(strict)
        torch.set_num_threads(threads)


def train_tiny_clip(
    out: Path,
    *,
    seed: int = 0,
    steps: int = STEPS,
    hidden: int = 64,
    progress: Callable[[int], None] = lambda step: None,
) -> Path:
    """Train a two-layer CLIP on coloured shapes and save it where sentence-transformers loads it.

    ``progress`` is called after each training step with the number done.
    """
    draw_rng, pick_rng = random.Random(seed), np.random.default_rng(seed)
    items = [(draw_rng.choice(list(COLORS)), draw_rng.choice(SHAPES)) for _ in range(TRAINING_PICTURES)]
    captions = [draw_rng.choice(CAPTIONS).format(c=c, s=s) for c, s in items]
    pictures = [draw(pick_rng, c, s) for c, s in items]
    return train_clip(
        out, pictures, captions, caption_corpus(), seed=seed, steps=steps, hidden=hidden, progress=progress
    )


def train_clip(
    out: Path,
    pictures: Sequence[Image.Image],
    captions: Sequence[str],
    corpus: list[str],
    *,
    seed: int = 0,
    steps: int = STEPS,
    hidden: int = 64,
    progress: Callable[[int], None] = lambda step: None,
) -> Path:
    """Train a two-layer CLIP on ``pictures`` and their ``captions``; saved for sentence-transformers.

    ``corpus`` holds every text the model should tokenize whole (the captions' words at least). The
    pictures are seen at the demo model's 32-pixel input; training is contrastive on random batches.
    """
    quiet_transformers()
    tokenizer = build_tokenizer(corpus)
    processor = small_processor(tokenizer)
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
    with deterministic():
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # the weights' initialisation draws from the global generator
        model = CLIPModel(config)
        pixels = processor(images=list(pictures), return_tensors="pt")["pixel_values"]
        text = tokenizer(list(captions), padding=True, return_tensors="pt")
        optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
        model.train()
        for step in range(steps):
            pick = torch.randint(0, len(pictures), (BATCH,), generator=generator)
            loss = model(
                input_ids=text.input_ids[pick],
                attention_mask=text.attention_mask[pick],
                pixel_values=pixels[pick],
                return_loss=True,
            ).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            progress(step + 1)
    model.eval()  # type: ignore[no-untyped-call]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
