"""Image formats beyond Pillow's own: HEIC/HEIF, the default of phones' cameras.

pi-heif (BSD-3) adds a ``HEIF`` opener to Pillow. Its wheels carry libheif
with only the libde265 decoder (LGPL): no encoder, so none of x265's GPL,
which is why it rather than pillow-heif (the same libheif with the x265
encoder) is clipsort's dependency. It decodes; clipsort never writes HEIC.

Camera RAW is clipsort's own format name, ``RAW``, decoded by
:mod:`clipsort.decode.rawimages` through rawpy when the ``raw`` extra is
installed; without it a RAW file is what Pillow makes of it (rejected).
"""

from __future__ import annotations

import functools

import pi_heif

OWN_FORMATS = ("RAW",)  # names valid in image_formats that are not Pillow's


@functools.cache
def register() -> None:
    """Register the extra openers with Pillow once per process (before ``Image.init`` lists them)."""
    pi_heif.register_heif_opener()
