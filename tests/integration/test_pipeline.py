"""Tests for clipsort.sort.pipeline: classification that survives inference failures, and delivery."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from clipsort.classify.modes import Decision
from clipsort.classify.targets import Target
from clipsort.decode.decoding import Decoded
from clipsort.decode.images import Crop
from clipsort.encode.encoder import Encoder
from clipsort.encode.vectors import Vectors
from clipsort.errors import ImageRejected, UnsafeDestination
from clipsort.sort.pipeline import Delivery, Outcome, classify, classify_with_fallback, deliver
from clipsort.store.journal import Journal
from clipsort.work import Job
from tests.helpers import RGB, decoded_batch

# Jobs, their decoded files, the targets by dataset, and each file's true colour.
Batch = tuple[list[Job], list[Decoded], dict[str, Target], list[str]]


def labels(verdicts: list[Decision | ImageRejected] | list[Decision | ImageRejected | None]) -> list[object]:
    """Class and rounded probability (batch size changes the last float bits)."""
    return [(v.label, round(v.score, 3)) if isinstance(v, Decision) else v for v in verdicts]


@pytest.fixture
def batch(data_root: Path, encoder: Encoder) -> Batch:
    """Nine inbox files of known colours, decoded, with their dataset's target."""
    return decoded_batch(data_root, encoder, list(RGB) * 3, seed=4)


def test_crops_from_the_decoding_threads_change_no_decision(batch: Batch, encoder: Encoder) -> None:
    """Pictures handed over already made into the model's input are classified exactly as the pictures."""
    jobs, reads, targets, _ = batch
    crop = encoder.crop
    assert crop is not None
    cropped = [replace(r, crop=crop(r.picture)) if isinstance(r.picture, Image.Image) else r for r in reads]
    assert labels(classify(jobs, cropped, targets, encoder)) == labels(
        classify(jobs, reads, targets, encoder)
    )


def test_a_batch_that_fails_is_split_until_it_fits(
    batch: Batch,
    encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of memory above two pictures: halves, then quarters, and every file still gets its class."""
    jobs, reads, targets, colors = batch
    expected = classify(jobs, reads, targets, encoder)
    real = encoder.encode_images
    sizes: list[int] = []

    def small_batches_only(images: Sequence[Image.Image | Crop]) -> Vectors:
        sizes.append(len(images))
        if len(images) > 2:
            raise RuntimeError("CUDA out of memory (injected)")
        return real(images)

    monkeypatch.setattr(encoder, "encode_images", small_batches_only)
    verdicts = classify_with_fallback(jobs, reads, targets, encoder)
    assert labels(verdicts) == labels(expected)
    assert sizes[0] == 9 and max(sizes[1:]) == 5
    assert sum(n for n in sizes if n <= 2) == 9, "every picture was encoded once, in a batch that fit"
    assert sum(isinstance(v, Decision) and v.label == c for v, c in zip(verdicts, colors, strict=True)) >= 8


def test_a_single_picture_that_fails_on_the_accelerator_goes_to_the_cpu(
    batch: Batch,
    encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The accelerator fails for every batch: each file is encoded by the CPU copy instead."""
    jobs, reads, targets, _ = batch
    expected = classify(jobs, reads, targets, encoder)
    cpu_calls = threading.local()
    cpu_calls.count = 0
    real_cpu = encoder.encode_images

    def accelerator_broken(images: Sequence[Image.Image | Crop]) -> Vectors:
        raise RuntimeError("CUDA error: out of memory (injected)")

    def on_cpu(images: Sequence[Image.Image | Crop]) -> Vectors:
        cpu_calls.count += 1
        return real_cpu(images)

    monkeypatch.setattr(encoder, "device", "cuda")
    monkeypatch.setattr(encoder, "encode_images", accelerator_broken)
    monkeypatch.setattr(encoder, "encode_images_on_cpu", on_cpu)
    assert labels(classify_with_fallback(jobs, reads, targets, encoder)) == labels(expected)
    assert cpu_calls.count == len(jobs)


def test_a_file_that_fails_everywhere_is_marked_for_retry(
    batch: Batch,
    encoder: Encoder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """None, not an exception: the other files of the batch are still classified."""
    jobs, reads, targets, _ = batch
    real = encoder.encode_images
    poisoned = reads[3].picture

    def fails_on_one(images: Sequence[Image.Image | Crop]) -> Vectors:
        if any(image is poisoned for image in images):
            raise RuntimeError("inference failed (injected)")
        return real(images)

    monkeypatch.setattr(encoder, "encode_images", fails_on_one)
    verdicts = classify_with_fallback(jobs, reads, targets, encoder)
    assert verdicts[3] is None
    assert all(isinstance(v, Decision) for k, v in enumerate(verdicts) if k != 3)


def test_a_class_folder_linked_out_of_the_dataset_is_never_written_through(
    batch: Batch,
    encoder: Encoder,
    data_root: Path,
    tmp_path: Path,
) -> None:
    """Every file bound for it stays in the inbox with the reason; the others of the batch are placed."""
    jobs, reads, targets, _ = batch
    outside = tmp_path / "outside"
    outside.mkdir()
    sorted_dir = data_root / "rgb" / "Dataset"
    sorted_dir.mkdir()
    (sorted_dir / "red").symlink_to(outside)
    verdicts = classify(jobs, reads, targets, encoder)
    items = [
        Delivery(job, verdict, "0" * 64, 1, targets["rgb"])
        for job, verdict, read in zip(jobs, verdicts, reads, strict=True)
    ]
    state = data_root / ".clipsort"
    state.mkdir()
    with Journal(state) as journal:
        results = deliver(items, models=[encoder.name] * len(items), journal=journal, dry_run=False)
        states = [entry.state for entry in journal.entries()]
    refused = [k for k, result in enumerate(results) if isinstance(result, UnsafeDestination)]
    refused_labels = [verdict.label for k in refused if isinstance(verdict := verdicts[k], Decision)]
    assert refused and refused_labels == ["red"] * len(refused)
    assert all(jobs[k].path.exists() for k in refused)
    assert list(outside.iterdir()) == []
    assert all(isinstance(r, Outcome) for k, r in enumerate(results) if k not in refused)
    assert sorted(states) == sorted(["cleared"] * len(refused) + ["moved"] * (len(jobs) - len(refused)))
