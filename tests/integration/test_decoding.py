"""Tests for clipsort.decode.decoding: files read once, decoded in threads, and a time limit."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsort.decode.decoding import Decoded, DecodePool, collect
from clipsort.decode.images import DecodeLimits
from clipsort.encode.encoder import Encoder
from clipsort.errors import ImageRejected
from tests.synthetic import save

LIMITS = DecodeLimits(formats=("JPEG", "PNG"), max_pixels=50_000_000, max_bytes=10_000_000)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """A 640x480 JPEG, a 300x900 PNG and a file that is not a picture."""
    photo, tall, bad = tmp_path / "photo.jpg", tmp_path / "tall.png", tmp_path / "bad.jpg"
    save(Image.new("RGB", (640, 480), (200, 30, 30)), photo)
    save(Image.new("RGB", (300, 900), (30, 30, 200)), tall)
    bad.write_bytes(b"not a picture")
    return [photo, tall, bad]


def test_each_file_is_read_once_hashed_and_shrunk(files: list[Path]) -> None:
    """Each picture comes back shortest edge 224, with the hash and size of the bytes read."""
    with DecodePool(LIMITS, 2) as pool:
        photo, tall, bad = collect(pool.start(files, 224), timeout=60)
    assert isinstance(photo.picture, Image.Image) and photo.picture.size == (299, 224)
    assert isinstance(tall.picture, Image.Image) and tall.picture.size == (224, 672)
    assert photo.sha256 == hashlib.sha256(files[0].read_bytes()).hexdigest()
    assert photo.size == files[0].stat().st_size
    assert isinstance(bad.picture, ImageRejected) and bad.size == len(b"not a picture")


def test_the_model_input_is_prepared_beside_the_picture(files: list[Path], encoder: Encoder) -> None:
    """With the encoder's crop each picture also comes back as the model's input; a bad file has none.

    The JPEG stays as drafted (its crop is its one resize); the PNG, over twice the input, is shrunk first.
    """
    crop = encoder.crop
    assert crop is not None
    side = encoder.image_size
    with DecodePool(LIMITS, 2) as pool:
        photo, tall, bad = collect(pool.start(files, side, crop), timeout=60)
    assert isinstance(photo.picture, Image.Image) and photo.picture.size == (80, 60)  # 1/8 scale
    assert isinstance(tall.picture, Image.Image) and tall.picture.size == (side, 3 * side)
    for read in (photo, tall):
        assert isinstance(read.picture, Image.Image) and read.crop is not None
        assert read.crop.shape == (side, side, 3)
        assert np.array_equal(read.crop, crop(read.picture))
    assert bad.crop is None


def test_a_decode_past_its_time_limit_is_rejected() -> None:
    """A file whose decoding hangs no longer holds up its batch."""
    done: Future[Decoded] = Future()
    done.set_result(Decoded(ImageRejected("x"), "", 1))
    stuck: Future[Decoded] = Future()
    first, second = collect([done, stuck], timeout=0.2)
    assert first.size == 1
    assert isinstance(second.picture, ImageRejected) and "longer than 0.2 s" in str(second.picture)
