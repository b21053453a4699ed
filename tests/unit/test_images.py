"""Tests for clipsort.decode.images: decoding untrusted files safely and cheaply."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clipsort.config import DEFAULT_IMAGE_FORMATS
from clipsort.decode.images import DecodeLimits
from clipsort.errors import ImageIncomplete, ImageRejected

FORMATS = ("JPEG", "PNG", "GIF")


def load(path: Path, target: int = 32, max_pixels: int = 10**8) -> Image.Image:
    return DecodeLimits(FORMATS, max_pixels, 2**30).load(path, target)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """A portrait photo stored sideways with an EXIF rotation comes out upright."""
    picture = Image.new("RGB", (80, 40), (0, 0, 0))
    picture.paste((255, 0, 0), (0, 0, 40, 40))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    picture.save(tmp_path / "p.jpg", exif=exif, quality=95)
    upright = load(tmp_path / "p.jpg", target=40)
    assert upright.size == (40, 80)
    top = np.asarray(upright)[:10].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 60  # red ends up on top


def test_large_jpeg_is_draft_decoded_to_about_model_size(tmp_path: Path) -> None:
    """A big JPEG comes back with its short edge at the target, never full-size."""
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(tmp_path / "big.jpg")
    picture = load(tmp_path / "big.jpg", target=224)
    assert min(picture.size) == 224
    assert picture.mode == "RGB"


def test_slack_keeps_a_drafted_jpeg_and_still_shrinks_what_is_larger(tmp_path: Path) -> None:
    """Under twice the target a picture stays as decoded; a PNG (never drafted) at or above that is shrunk."""
    Image.new("RGB", (640, 480), (10, 200, 30)).save(tmp_path / "photo.jpg")
    Image.new("RGB", (640, 480), (10, 200, 30)).save(tmp_path / "photo.png")
    limits = DecodeLimits(FORMATS, 10**8, 2**30)
    assert limits.decode((tmp_path / "photo.jpg").read_bytes(), 224, slack=2.0).size == (320, 240)
    assert limits.decode((tmp_path / "photo.png").read_bytes(), 224, slack=2.0).size == (299, 224)
    assert limits.decode((tmp_path / "photo.jpg").read_bytes(), 224).size == (299, 224)


def test_transparency_is_flattened_onto_white(tmp_path: Path) -> None:
    """A transparent PNG shows white where it is transparent, as viewers show it."""
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(tmp_path / "t.png")
    assert load(tmp_path / "t.png").getpixel((5, 5)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello, world", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),
    ],
)
def test_non_images_are_rejected_with_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    """Empty files, text and broken headers are rejected, never crash."""
    (tmp_path / "bad.jpg").write_bytes(content)
    with pytest.raises(ImageRejected, match=reason):
        load(tmp_path / "bad.jpg")


def test_truncated_jpeg_is_rejected(tmp_path: Path) -> None:
    """Half a JPEG is not silently padded with grey (no LOAD_TRUNCATED_IMAGES)."""
    Image.effect_noise((256, 256), 60).convert("RGB").save(tmp_path / "whole.jpg", quality=95)
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageRejected, match=r"truncated|corrupt"):
        load(tmp_path / "half.jpg", target=256)


def test_pixel_cap_rejects_before_decoding(tmp_path: Path) -> None:
    """A decompression bomb is refused from its header."""
    Image.new("L", (1000, 1000)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageRejected, match="exceeds the 10000-pixel limit"):
        load(tmp_path / "bomb.png", max_pixels=10_000)


def test_format_outside_allow_list_is_rejected(tmp_path: Path) -> None:
    """A real image in a format that is not allowed is still rejected."""
    Image.new("RGB", (8, 8)).save(tmp_path / "x.bmp")
    with pytest.raises(ImageRejected, match="allowed format"):
        load(tmp_path / "x.bmp")


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    """Opening refuses a symlink even if it points at a good image."""
    Image.new("RGB", (8, 8)).save(tmp_path / "real.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    with pytest.raises(ImageRejected, match="cannot open"):
        load(tmp_path / "link.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillows_limit_applies_even_above_our_own_cap(tmp_path: Path) -> None:
    """With max_pixels raised past Pillow's limit, a file Pillow would only warn about is refused."""
    Image.new("L", (120, 120)).save(tmp_path / "big.png")  # between 1x and 2x the limit: a warning
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 10_000  # make Pillow's warning fire for a small test file
    try:
        with pytest.raises(ImageRejected, match="exceeds the 10000-pixel limit"):
            load(tmp_path / "big.png", max_pixels=10**9)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_file_size_cap_rejects_without_reading(tmp_path: Path) -> None:
    """A file above max_bytes is refused from its size alone."""
    Image.effect_noise((64, 64), 60).save(tmp_path / "big.png")
    with pytest.raises(ImageRejected, match="file size limit"):
        DecodeLimits(FORMATS, 10**8, 100).load(tmp_path / "big.png", 32)


def test_a_file_that_grows_while_it_is_read_is_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes beyond the size fstat gave mean the file is still being written: not ready, not rejected."""
    Image.effect_noise((64, 64), 60).save(tmp_path / "growing.png")
    fstat = os.fstat

    def earlier(fd: int) -> os.stat_result:  # the size as it was a moment before the last write
        status = list(fstat(fd))
        status[stat.ST_SIZE] -= 10
        return os.stat_result(status)

    monkeypatch.setattr(os, "fstat", earlier)  # what read_file calls, for the length of this test
    with pytest.raises(ImageIncomplete, match="grew while it was read"):
        load(tmp_path / "growing.png")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opening a FIFO (no writer) would block forever; it is refused at once."""
    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageRejected, match="not a regular file"):
        load(tmp_path / "pipe.jpg")


def test_an_unreadable_file_is_rejected_with_the_reason(tmp_path: Path) -> None:
    """Permissions: the error names the cause (root reads anything, so a child drops to nobody)."""
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    (tmp_path / "secret.png").chmod(0o000)
    tmp_path.chmod(0o755)
    script = (
        "import os, sys, pathlib\n"
        "from clipsort.decode.images import DecodeLimits\n"
        "from clipsort.errors import ImageRejected\n"
        "if os.geteuid() == 0:\n    os.setgid(65534); os.setuid(65534)\n"
        "try:\n    DecodeLimits(('PNG',), 10**8, 2**30).load(pathlib.Path(sys.argv[1]), 8)\n"
        "except ImageRejected as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "secret.png")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=True,
    )
    assert "cannot open: Permission denied" in result.stdout


@pytest.mark.parametrize(
    ("suffix", "options"),
    [
        ("avif", {}),  # phones and the web: Pillow's own AVIF plugin wrote it
        ("gif", {"save_all": True}),  # animated: the first frame is the picture
        ("webp", {"save_all": True, "lossless": True}),
        ("tiff", {"save_all": True}),  # multi-page
    ],
)
def test_the_default_formats_decode_the_first_frame(
    tmp_path: Path, suffix: str, options: dict[str, Any]
) -> None:
    """AVIF, animated GIF and WebP, multi-page TIFF: decoded under the default allow-list, first frame."""
    frames = [Image.new("RGB", (64, 48), color) for color in ((220, 30, 30), (30, 30, 220))]
    path = tmp_path / f"p.{suffix}"
    frames[0].save(path, append_images=frames[1:], **options)
    picture = DecodeLimits(DEFAULT_IMAGE_FORMATS, 10**8, 2**30).load(path, 32)
    red, green, blue = np.asarray(picture, dtype=np.float64).mean(axis=(0, 1))
    assert red > 150 and blue < 100, (red, green, blue)


FIXTURES = Path(__file__).parents[1] / "fixtures"


def dominant_channel(path: Path) -> int:
    """The channel (0 red, 1 green, 2 blue) strongest in ``path`` decoded to 32 pixels, default formats."""
    picture = DecodeLimits(DEFAULT_IMAGE_FORMATS, 10**8, 2**30).load(path, 32)
    assert picture.mode == "RGB" and min(picture.size) == 32
    return int(np.argmax(np.asarray(picture, dtype=np.float64).mean(axis=(0, 1))))


@pytest.mark.parametrize(("name", "channel"), [("red.heic", 0), ("blue.heic", 2)])
def test_heic_from_libheif_decodes_under_the_default_formats(name: str, channel: int) -> None:
    """A phone's HEIC (written by libheif's own encoder): decoded by pi-heif, its colour intact."""
    assert dominant_channel(FIXTURES / name) == channel


def test_heic_obeys_the_pixel_cap_and_a_truncated_one_is_rejected(tmp_path: Path) -> None:
    """The same limits as every format: the header's size is checked first; cut bytes are an error."""
    with pytest.raises(ImageRejected, match="exceeds the 1000-pixel limit"):
        DecodeLimits(DEFAULT_IMAGE_FORMATS, 1000, 2**30).load(FIXTURES / "red.heic", 32)
    cut = tmp_path / "cut.heic"
    cut.write_bytes((FIXTURES / "red.heic").read_bytes()[:600])
    with pytest.raises(ImageRejected):
        DecodeLimits(DEFAULT_IMAGE_FORMATS, 10**8, 2**30).load(cut, 32)


def test_heic_outside_the_allow_list_is_refused() -> None:
    """An administrator who leaves HEIF out of image_formats gets it rejected, not decoded."""
    with pytest.raises(ImageRejected, match="not an image in an allowed format"):
        DecodeLimits(("JPEG", "PNG"), 10**8, 2**30).load(FIXTURES / "red.heic", 32)


requires_rawpy = pytest.mark.skipif(
    importlib.util.find_spec("rawpy") is None, reason="the raw extra (rawpy) is part of the test extras"
)


@requires_rawpy
@pytest.mark.parametrize(("name", "channel"), [("red.dng", 0), ("blue.dng", 2)])
def test_a_camera_raw_file_decodes_by_its_sensor_data(name: str, channel: int) -> None:
    """A DNG that PiDNG wrote (no embedded preview): LibRaw's half-size demosaic, colour intact."""
    assert dominant_channel(FIXTURES / name) == channel


@requires_rawpy
def test_a_raw_file_obeys_the_pixel_cap_and_the_allow_list() -> None:
    """The sensor's size is checked before any demosaic; without RAW listed, TIFF's plugin refuses it."""
    with pytest.raises(ImageRejected, match="exceeds the 10000-pixel limit"):
        DecodeLimits(DEFAULT_IMAGE_FORMATS, 10_000, 2**30).load(FIXTURES / "red.dng", 32)
    without = tuple(name for name in DEFAULT_IMAGE_FORMATS if name != "RAW")
    with pytest.raises(ImageRejected):
        DecodeLimits(without, 10**8, 2**30).load(FIXTURES / "red.dng", 32)


def test_a_plain_tiff_still_goes_to_pillow_when_raw_is_allowed(tmp_path: Path) -> None:
    """TIFF shares RAW's signature: LibRaw declines it and Pillow decodes it as before."""
    Image.new("RGB", (64, 48), (220, 30, 30)).save(tmp_path / "p.tiff")
    picture = DecodeLimits(DEFAULT_IMAGE_FORMATS, 10**8, 2**30).load(tmp_path / "p.tiff", 32)
    assert np.asarray(picture)[..., 0].mean() > 200


@requires_rawpy
def test_a_truncated_raw_file_is_rejected_not_a_crash(tmp_path: Path) -> None:
    """Half a DNG: a one-line reason, no exception out of the decoder."""
    cut = tmp_path / "cut.dng"
    cut.write_bytes((FIXTURES / "red.dng").read_bytes()[:20_000])
    with pytest.raises(ImageRejected):
        DecodeLimits(DEFAULT_IMAGE_FORMATS, 10**8, 2**30).load(cut, 32)
