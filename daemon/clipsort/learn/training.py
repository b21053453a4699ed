"""``clipsort train``: fine-tune an image classifier on a dataset's class folders.

The original project's third script: a Vision Transformer (any
``AutoModelForImageClassification`` backbone, by hub name or local folder)
fine-tuned on ``Clases/<class>/`` with a stratified, seeded train/validation
split, light augmentation, AdamW with warm-up and cosine decay, early
stopping on validation accuracy and mixed precision on CUDA. The checkpoint
(safetensors weights, config with ``id2label``, image processor),
``metrics.json`` and a training-curve PNG are written into a temporary
folder in the state directory and published with one atomic replacement of
the dataset's ``current`` pointer, so a reader never sees half a checkpoint.
"""

from __future__ import annotations

import io
import json
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageEnhance, ImageOps
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoTokenizer,
    CLIPModel,
    get_cosine_schedule_with_warmup,
)

from clipsort.classify.checkpoints import CURRENT, current_checkpoint
from clipsort.classify.classindex import REFERENCE_IGNORE, class_description, class_folders
from clipsort.classify.modes.finetuned import load_checkpoint
from clipsort.config import DEFAULT_BASE, DEFAULT_TEMPLATES
from clipsort.decode.images import DecodeLimits, input_size
from clipsort.encode.cliphead import ClipHeadForImageClassification
from clipsort.encode.encoder import quiet_transformers
from clipsort.encode.hub import looks_like_path
from clipsort.errors import ImageRejected, ModelLoadError, TrainingError
from clipsort.files import scan
from clipsort.layout import DatasetLayout
from clipsort.store.mover import ensure_dir, make_state_dir, rename_noreplace, write_atomic


@dataclass(frozen=True)
class TrainOptions:
    """How to fine-tune."""

    base: str = DEFAULT_BASE
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 5e-5  # a pretrained backbone needs small steps
    validation_share: float = 0.2
    patience: int = 3
    seed: int = 0
    device: str = "cpu"


SMALL_VALIDATION = 10  # pictures; under this a validation accuracy moves in steps of over 10 points


@dataclass
class TrainResult:
    """What a training run produced.

    ``checkpoint`` is None when the run was not published: the current
    checkpoint did better on the same validation pictures
    (``current_accuracy``) and publishing was not forced.
    """

    checkpoint: Path | None
    classes: list[str]
    best_epoch: int
    validation_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    precision: dict[str, float] = field(default_factory=dict)
    recall: dict[str, float] = field(default_factory=dict)
    validation_size: int = 0
    current_accuracy: float | None = None  # the checkpoint it would replace, on the same pictures
    # The references it never trained on, as paths under Clases/ ("red/a.jpg"): the unknown gate
    # measures from them how much lower new pictures score than the pictures it learned.
    validation_files: list[str] = field(default_factory=list)


def examples(layout: DatasetLayout) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and (image file, class number) pairs; every class needs two images to split."""
    folders = class_folders(layout)
    if not folders:
        raise TrainingError(f"dataset {layout.name!r} has no class folders in {str(layout.classes)!r}")
    pairs: list[tuple[Path, int]] = []
    for label, folder in enumerate(folders):
        files = list(scan(folder, REFERENCE_IGNORE))
        if len(files) < 2:
            raise TrainingError(
                f"class {folder.name!r} has {len(files)} image(s); at least 2 are needed "
                "(one to train on, one to validate with)"
            )
        pairs += [(path, label) for path in files]
    return [folder.name for folder in folders], pairs


def stratified_split(labels: list[int], share: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices for training and validation, each class split in the same proportion."""
    rng = random.Random(seed)
    train, validation = [], []
    for label in sorted(set(labels)):
        members = [i for i, value in enumerate(labels) if value == label]
        rng.shuffle(members)
        held = max(1, round(len(members) * share))
        validation += members[:held]
        train += members[held:]
    return sorted(train), sorted(validation)


def augment(image: Image.Image, rng: random.Random) -> Image.Image:
    """Random resized crop (60-100% of the area), horizontal flip, light brightness/contrast jitter."""
    width, height = image.size
    scale = math.sqrt(rng.uniform(0.6, 1.0))
    crop_w, crop_h = max(1, int(width * scale)), max(1, int(height * scale))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1))
    return ImageEnhance.Contrast(image).enhance(rng.uniform(0.9, 1.1))


def zero_shot_text(clip: Any, base: str, descriptions: list[str]) -> torch.Tensor:
    """Prompt-ensembled, normalised text embeddings of ``descriptions`` by ``clip`` (from ``base``)."""
    clip.eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    prompts = [template.format(text) for text in descriptions for template in DEFAULT_TEMPLATES]
    with torch.inference_mode():
        output = clip.get_text_features(**tokenizer(prompts, padding=True, return_tensors="pt"))
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    features = torch.nn.functional.normalize(features, dim=-1).reshape(
        len(descriptions), len(DEFAULT_TEMPLATES), -1
    )
    return torch.nn.functional.normalize(features.mean(dim=1), dim=-1)


def _load_base(options: TrainOptions, classes: list[str], descriptions: list[str]) -> tuple[Any, Any]:
    try:
        processor = AutoImageProcessor.from_pretrained(options.base)  # type: ignore[no-untyped-call]
        if AutoConfig.from_pretrained(options.base).model_type == "clip":
            clip: Any = CLIPModel.from_pretrained(options.base)
            head: Any = ClipHeadForImageClassification.from_clip(
                clip, zero_shot_text(clip, options.base, descriptions), classes
            )
            return head.to(options.device), processor
        model = AutoModelForImageClassification.from_pretrained(
            options.base,
            num_labels=len(classes),
            id2label=dict(enumerate(classes)),
            label2id={name: k for k, name in enumerate(classes)},
            ignore_mismatched_sizes=True,  # a new head for these classes
        )
    except Exception as exc:
        kind = "folder" if looks_like_path(options.base) else "hub model"
        raise TrainingError(
            f"cannot load the base {kind} {options.base!r} ({type(exc).__name__}: {exc}); "
            "an offline machine needs a local folder"
        ) from None
    return model.to(options.device), processor


@dataclass
class _Data:
    """Decoded pictures, their labels and the split."""

    pictures: list[Image.Image]
    labels: torch.Tensor
    train: list[int]
    validation: list[int]
    paths: list[Path]


def _decode(pairs: list[tuple[Path, int]], size: int, limits: DecodeLimits, options: TrainOptions) -> _Data:
    pictures, labels, paths = [], [], []
    for path, label in pairs:
        try:
            pictures.append(limits.load(path, size))
        except ImageRejected:
            continue  # an unreadable reference is skipped, as when indexing
        labels.append(label)
        paths.append(path)
    train_rows, validation_rows = stratified_split(labels, options.validation_share, options.seed)
    return _Data(pictures, torch.tensor(labels, device=options.device), train_rows, validation_rows, paths)


def _fit(
    model: Any, processor: Any, data: _Data, options: TrainOptions, step: Callable[[str, float], None]
) -> tuple[int, float, list[dict[str, float]]]:
    """Train with early stopping; leaves the best epoch's weights in ``model``."""
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)

    def pixels(rows: list[int], augmented: bool) -> torch.Tensor:
        batch = [augment(data.pictures[i], rng) if augmented else data.pictures[i] for i in rows]
        values: torch.Tensor = processor(images=batch, return_tensors="pt")["pixel_values"]
        return values.to(options.device)

    per_epoch = math.ceil(len(data.train) / options.batch_size)
    optimiser = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimiser, max(1, per_epoch // 2), per_epoch * options.epochs)
    validation = pixels(data.validation, augmented=False)
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=options.device.startswith("cuda"))
    best, best_loss, best_epoch, best_state, stale = -1.0, math.inf, 0, None, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, options.epochs + 1):
        model.train()
        order = data.train[:]
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), options.batch_size):
            rows = order[start : start + options.batch_size]
            with autocast:
                loss = model(pixel_values=pixels(rows, augmented=True), labels=data.labels[rows]).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
        accuracy, validation_loss = _validate(model, validation, data.labels[data.validation])
        history.append(
            {
                "epoch": epoch,
                "loss": float(np.mean(losses)),
                "validation_accuracy": accuracy,
                "validation_loss": validation_loss,
            }
        )
        step("epoch", accuracy)
        # Ties in accuracy go to the lower validation loss: a small split is often right on every
        # picture after the first epoch, and keeping that epoch threw the rest of training away.
        if (accuracy, -validation_loss) > (best, -best_loss):
            best, best_loss, best_epoch, stale = accuracy, validation_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= options.patience:
                break  # early stopping: validation accuracy stopped improving
    model.load_state_dict(best_state)
    return best_epoch, best, history


def train(
    layout: DatasetLayout,
    options: TrainOptions,
    checkpoints: Path,
    limits: DecodeLimits,
    step: Callable[[str, float], None] = lambda phase, value: None,
    *,
    force: bool = False,
) -> TrainResult:
    """Fine-tune, then publish the checkpoint in ``checkpoints`` as its current one.

    Only a checkpoint at least as accurate as the current one on the same
    validation pictures is published, unless ``force``: a worse run must not
    silently replace a better model that the daemon is using.
    """
    quiet_transformers()
    classes, pairs = examples(layout)
    descriptions = [class_description(layout.classes / name, {}) for name in classes]
    model, processor = _load_base(options, classes, descriptions)
    data = _decode(pairs, input_size(processor), limits, options)
    best_epoch, best, history = _fit(model, processor, data, options, step)
    pictures = [data.pictures[i] for i in data.validation]
    validation = processor(images=pictures, return_tensors="pt")
    guessed = predict(model, validation["pixel_values"].to(options.device)).cpu().numpy()
    truth = data.labels[data.validation].cpu().numpy()
    precision, recall = {}, {}
    for k, name in enumerate(classes):
        chosen, actual = guessed == k, truth == k
        precision[name] = float((chosen & actual).sum() / chosen.sum()) if chosen.any() else 0.0
        recall[name] = float((chosen & actual).sum() / actual.sum()) if actual.any() else 0.0
    result = TrainResult(None, classes, best_epoch, best, history, precision, recall, len(pictures))
    result.validation_files = [data.paths[i].relative_to(layout.classes).as_posix() for i in data.validation]
    current = current_checkpoint(checkpoints)
    if current is not None:
        result.current_accuracy = checkpoint_accuracy(current, pictures, [classes[k] for k in truth], options)
    if force or result.current_accuracy is None or best >= result.current_accuracy:
        result.checkpoint = publish(model, processor, result, checkpoints, options)
    return result


def checkpoint_accuracy(
    path: Path, pictures: list[Image.Image], truth: list[str], options: TrainOptions
) -> float:
    """How often the checkpoint at ``path`` names the right class of ``pictures`` (0 if unusable)."""
    try:
        checkpoint = load_checkpoint(path, options.device)
    except ModelLoadError:
        return 0.0  # a broken current checkpoint is no reason to keep it
    values = checkpoint.processor(images=pictures, return_tensors="pt")["pixel_values"]
    guessed = predict(checkpoint.model, values.to(options.device)).cpu().tolist()
    return float(np.mean([checkpoint.classes[k] == name for k, name in zip(guessed, truth, strict=True)]))


def _validate(model: Any, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on the validation pictures."""
    model.eval()
    with torch.inference_mode():
        logits: torch.Tensor = model(pixel_values=pixels).logits.float()
    accuracy = float((logits.argmax(dim=1) == labels).float().mean())
    return accuracy, float(torch.nn.functional.cross_entropy(logits, labels))


def predict(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """The most likely class of each picture."""
    model.eval()
    with torch.inference_mode():
        logits: torch.Tensor = model(pixel_values=pixels).logits
    return logits.argmax(dim=1)


def publish(model: Any, processor: Any, result: TrainResult, folder: Path, options: TrainOptions) -> Path:
    """Write everything into a temporary folder, rename it into place, then swap the pointer."""
    make_state_dir(folder)
    staging = folder / f".training-{uuid.uuid4().hex}"
    ensure_dir(staging, boundary=folder)
    model.save_pretrained(staging, safe_serialization=True)
    processor.save_pretrained(staging)
    summary = {k: v for k, v in asdict(result).items() if k != "checkpoint"} | {"base": options.base}
    # transformers writes the weights into the staging folder; what is ours goes through the mover.
    write_atomic(staging / "metrics.json", json.dumps(summary, indent=2).encode())
    write_atomic(staging / "training.png", _plot(result.history))
    # A timestamp names the checkpoint for people; the suffix keeps two runs in one second apart.
    final = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    rename_noreplace(staging, final)
    write_atomic(folder / CURRENT, final.name.encode())
    return final


def _plot(history: list[dict[str, float]]) -> bytes:
    """The training curve as a PNG."""
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    epochs = [row["epoch"] for row in history]
    axes.plot(epochs, [row["loss"] for row in history], label="training loss")
    axes.plot(epochs, [row["validation_accuracy"] for row in history], label="validation accuracy")
    axes.set_xlabel("epoch")
    axes.legend()
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()
