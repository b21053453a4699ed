"""Camera RAW files (DNG, CR2, CR3, NEF, ARW, RAF, ORF, RW2...) through LibRaw, an optional extra.

``pip install 'clipsort[raw]'`` adds rawpy (MIT; LibRaw under LGPL-2.1 or
CDDL), and with it the format name ``RAW`` for ``image_formats`` (in the
default list whenever rawpy is installed).

What a RAW file is decoded to: its embedded preview when it has one (every
camera writes a JPEG of the full or nearly full picture beside the sensor
data), decoded as a JPEG under the same limits as any other; otherwise a
half-size demosaic of the sensor data (a quarter of the pixels, no
interpolation), after the pixel cap was checked against the sensor's size.

Most RAW formats are TIFF inside, so Pillow's TIFF plugin would claim them
and decode only a thumbnail, or fail. A file with a RAW-capable signature is
therefore offered to LibRaw first; LibRaw answers a plain TIFF with
"unsupported" at once, and Pillow reads it as before.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from clipsort.errors import ImageRejected

try:
    import rawpy
except ImportError:  # the extra is not installed: RAW is simply not an available format
    rawpy = None  # type: ignore[assignment]

FORMAT = "RAW"

# Leading bytes of the containers LibRaw reads: TIFF (DNG, CR2, NEF, ARW, PEF, SRW...), Olympus ORF,
# Panasonic RW2, Fujifilm RAF, Minolta MRW, Sigma X3F; Canon CR3 is ISO media ("ftypcrx " at 4).
_SIGNATURES = (
    b"II*\x00",
    b"MM\x00*",
    b"IIRO",
    b"IIRS",
    b"MMOR",
    b"IIU\x00",
    b"FUJIFILM",
    b"\x00MRM",
    b"FOVb",
)

# LibRaw's ``flip`` code -> the transpose that makes a preview upright (the demosaic applies it itself).
_UPRIGHT = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}

Decode = Callable[[bytes], Image.Image]
"""Decoding a preview's JPEG bytes under the caller's limits."""


def maybe_raw(data: bytes) -> bool:
    """Whether ``data`` starts like a container LibRaw may read (cheap; LibRaw decides)."""
    return data.startswith(_SIGNATURES) or data[4:12] == b"ftypcrx "


def decode_raw(data: bytes, *, target: int, max_pixels: int, decode_jpeg: Decode) -> Image.Image | None:
    """The picture in a RAW file, or None when LibRaw does not take it for one (Pillow tries next).

    A preview whose shortest edge is under ``target`` (a mere thumbnail) is
    passed over for the demosaic.

    Raises :class:`ImageRejected` for a RAW file that is over ``max_pixels``
    or that LibRaw cannot decode.
    """
    if rawpy is None:
        return None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            sizes = raw.sizes
            preview = _preview(raw, max_pixels, decode_jpeg)
            if preview is not None and min(preview.size) >= min(target, sizes.width // 2, sizes.height // 2):
                upright = _UPRIGHT.get(sizes.flip)
                return preview if upright is None else preview.transpose(upright)
            if sizes.width * sizes.height > max_pixels:
                raise ImageRejected(f"{sizes.width}x{sizes.height} exceeds the {max_pixels}-pixel limit")
            pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
    except rawpy.LibRawFileUnsupportedError:
        return None
    except rawpy.LibRawError as exc:
        raise ImageRejected(f"unreadable RAW file: {exc}") from None
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def _preview(raw: rawpy.RawPy, max_pixels: int, decode_jpeg: Decode) -> Image.Image | None:
    """The embedded preview, if the file has a usable one."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        return decode_jpeg(bytes(thumb.data))
    bitmap = np.asarray(thumb.data)
    if bitmap.ndim != 3 or bitmap.shape[2] != 3 or bitmap.shape[0] * bitmap.shape[1] > max_pixels:
        return None
    return Image.fromarray(bitmap.astype(np.uint8), "RGB")
