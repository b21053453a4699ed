"""Decoding untrusted image files into model-sized RGB pictures.

Limits: an allow-list of formats, a pixel cap checked from the header before
any pixel is decoded (so a decompression bomb costs nothing), no
``LOAD_TRUNCATED_IMAGES``. JPEGs are decoded in draft mode at the smallest
DCT scale that still covers the model's input, so a 12-megapixel photo is
never fully decoded to make a 224-pixel input.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from clipsort import imageplugins
from clipsort.decode import rawimages
from clipsort.errors import ImageIncomplete, ImageRejected

if TYPE_CHECKING:
    from clipsort.config import Settings

Crop = npt.NDArray[np.uint8]  # a picture as an image tower's input: size x size x 3


def _flatten(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited onto white (as a viewer shows it)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _shrink(image: Image.Image, target: int, slack: float) -> Image.Image:
    """Shortest edge down to ``target`` (as CLIP's processor does), unless under ``slack`` times that."""
    short = min(image.size)
    if short <= target or short < slack * target:
        return image
    scale = target / short
    size = (max(target, round(image.width * scale)), max(target, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def centre_crop(image: Image.Image, side: int) -> Crop:
    """side x side x 3 uint8: shortest edge to ``side`` (bicubic, as CLIP's processor), centre crop.

    Pure Pillow and numpy, so decoding threads and decoding processes (which never import torch) make
    the model's input themselves.
    """
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    short, long = min(rgb.size), max(rgb.size)
    scaled = int(side * long / short)  # the long edge after scaling, rounded down as the processor does
    along = long / scaled  # picture pixels per crop pixel along the long edge
    start, end = (scaled - side) // 2 * along, ((scaled - side) // 2 + side) * along
    box = (start, 0.0, end, float(short)) if rgb.width >= rgb.height else (0.0, start, float(short), end)
    if short == side:  # decoding shrank it already
        return np.asarray(rgb.crop((round(box[0]), round(box[1]), round(box[2]), round(box[3]))))
    # Only the crop's part of the picture is resized: Pillow's filter still reads the pixels
    # around the box, so this equals resizing everything and then cropping (but for rounding:
    # a few pixels differ by a few levels) at three quarters of the work for a 4:3 picture.
    return np.asarray(rgb.resize((side, side), Image.Resampling.BICUBIC, box=box))


def input_size(image_processor: object, default: int = 224) -> int:
    """The side of the square a Hugging Face image processor feeds its model.

    The crop if it crops (CLIP), else the resize target (ViT); transformers
    keeps these as dicts or as its ``SizeDict``.
    """
    for field, key in (("crop_size", "height"), ("size", "height"), ("size", "shortest_edge")):
        size = getattr(image_processor, field, None)
        value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
        if value:
            return int(value)
    return default


def read_file(path: Path, *, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes`` of them.

    Raises :class:`ImageRejected` for what is not a readable regular file of
    an acceptable size, :class:`ImageIncomplete` for an empty one or one that
    grew while it was read (it is still being written).
    """
    try:
        # O_NOFOLLOW: a symlink swapped in after the scan is refused, not read.
        # O_NONBLOCK: a FIFO swapped in cannot block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageRejected(f"cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ImageRejected("not a regular file")
        if status.st_size == 0:
            raise ImageIncomplete("empty file")
        if status.st_size > max_bytes:
            raise ImageRejected(f"{status.st_size} bytes exceeds the {max_bytes}-byte file size limit")
        try:
            # The size it has, plus one byte to notice growth. Asking for max_bytes instead made
            # Python allocate (and the kernel map, then unmap) that much per file, with the GIL held.
            data = handle.read(status.st_size + 1)
        except OSError as exc:
            raise ImageRejected(f"cannot read: {exc.strerror}") from None
    if len(data) > status.st_size:
        raise ImageIncomplete("it grew while it was read")
    return data


def pillow_warnings_off() -> None:
    """Keep Pillow's DecompressionBombWarning off the terminal wherever files are decoded.

    Pillow warns, in ``Image.open``, of a picture between its MAX_IMAGE_PIXELS and twice that;
    :func:`decode_image` rejects such a picture itself, from the header, and its rejection line says
    it all. Unfiltered, the warning printed its raw text and source line before that line. An
    "ignore" filter (unlike an "error" one, see below) loses nothing if another filter undoes it.
    """
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def pixel_limit(max_pixels: int) -> int:
    """The most pixels a picture may have: ``max_pixels``, or Pillow's own cap where lower."""
    return min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)


def decode_image(
    data: bytes, *, target: int, formats: Sequence[str], max_pixels: int, slack: float = 1.0
) -> Image.Image:
    """Decode ``data`` as an RGB image whose shortest edge is about ``target``.

    With ``slack`` above 1 a picture whose shortest edge is under ``slack``
    times ``target`` is returned as decoded (a drafted JPEG is), for a caller that
    resizes it once more anyway; larger ones are still shrunk, so a picture
    never holds more than ``slack``² times the pixels it needs.

    Raises :class:`ImageRejected` with a human-readable reason when the bytes
    are not an allowed, complete, reasonably sized image.
    """
    if rawimages.FORMAT in formats and rawimages.maybe_raw(data):
        picture = rawimages.decode_raw(
            data,
            target=target,
            max_pixels=max_pixels,
            decode_jpeg=lambda jpeg: decode_image(
                jpeg, target=target, formats=("JPEG",), max_pixels=max_pixels, slack=slack
            ),
        )
        if picture is not None:
            return _shrink(_flatten(picture), target, slack)
    imageplugins.register()  # HEIF (once per process, cached): here rather than when this module loads
    try:
        image = Image.open(io.BytesIO(data), formats=[name for name in formats if name != rawimages.FORMAT])
    except UnidentifiedImageError:
        raise ImageRejected(f"not an image in an allowed format ({', '.join(formats)})") from None
    except (
        Image.DecompressionBombError,
        OSError,
        ValueError,
        SyntaxError,
    ) as exc:
        raise ImageRejected(f"unreadable image header: {exc}") from None
    # Pillow itself only *warns* between MAX_IMAGE_PIXELS and twice that.
    # Treating the warning as an error through a warnings filter would be
    # process-global and undone by any catch_warnings() elsewhere, so the
    # same limit is applied here, explicitly, from the header.
    limit = pixel_limit(max_pixels)
    if image.width * image.height > limit:
        raise ImageRejected(f"{image.width}x{image.height} exceeds the {limit}-pixel limit")
    try:
        image.draft("RGB", (target, target))
        image.load()
    except MemoryError:  # the decoding process's memory limit (decode_memory_mb), not a partial file
        raise ImageRejected(
            f"{image.width}x{image.height} needs more memory to decode than decode_memory_mb allows"
        ) from None
    except Exception as exc:  # Pillow raises many types for corrupt data
        raise ImageIncomplete(f"corrupt or truncated image: {exc}") from None
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not cost the picture
        upright = image
    return _shrink(_flatten(upright), target, slack)


@dataclass(frozen=True)
class DecodeLimits:
    """What an untrusted file may be to get decoded at all."""

    formats: tuple[str, ...]
    max_pixels: int
    max_bytes: int

    def decode(self, data: bytes, target: int, slack: float = 1.0) -> Image.Image:
        """:func:`decode_image` within these limits."""
        return decode_image(
            data, target=target, formats=self.formats, max_pixels=self.max_pixels, slack=slack
        )

    def read(self, path: Path) -> bytes:
        """:func:`read_file` within these limits."""
        return read_file(path, max_bytes=self.max_bytes)

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeLimits:
        """What an inbox or reference file may be, as configured (the daemon's, the page's)."""
        pillow_warnings_off()
        return cls(tuple(settings.image_formats), settings.max_pixels, int(settings.max_file_mb * 2**20))

    def load(self, path: Path, target: int) -> Image.Image:
        """:func:`read_file` then :func:`decode_image`, within these limits."""
        return self.decode(self.read(path), target)
