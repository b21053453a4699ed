"""Sidecar files: edits and metadata written beside a picture, which go wherever the picture goes.

A sidecar is named like its picture with a suffix of ``sidecar_suffixes``:
``IMG_1234.xmp`` (Lightroom, darktable) or ``IMG_1234.AAE`` (Apple Photos)
beside ``IMG_1234.jpg``, or the picture's whole name with the suffix
(``IMG_1234.jpg.json``, Google Takeout; ``IMG_1234.jpg.xmp``, darktable).
Case does not matter. A sidecar is never classified and never rejected: it
moves with its picture into the same folder under the matching name
(``IMG_1234_1.xmp`` beside a picture renamed ``IMG_1234_1.jpg`` on a name
clash), or waits in the inbox for it. Pure functions of names.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath


def is_sidecar(name: str, suffixes: Sequence[str]) -> bool:
    """Whether a file of this name is a sidecar (by its suffix; ``suffixes`` are lower case).

    ``splitext`` finds the suffix ``PurePath.suffix`` does for every name a suffix can match (it
    differs only for a name ending in a dot) at a fraction of the cost: it runs for each hint.
    """
    return os.path.splitext(name)[1].lower() in suffixes


def companions(picture: str, names: Iterable[str], suffixes: Sequence[str]) -> list[str]:
    """The sidecars of ``picture`` among ``names`` (a folder's entries), sorted."""
    return companions_in(picture, by_lower_name(names), suffixes)


def by_lower_name(names: Iterable[str], suffixes: Sequence[str] | None = None) -> dict[str, list[str]]:
    """A folder's entries by their lower-case name: built once per listing, looked up per picture.

    Reading every name of the listing for each picture cost a batch (inbox size x batch) name
    comparisons: measured 0.22 ms per file of `clipsort sort`'s CPU with 600 files in the inbox,
    growing with the inbox. With ``suffixes``, only the names that end in one are indexed (the only
    ones :func:`companions_in` can find), picked out of the whole listing by one regular
    expression, in C: a 3,000-name inbox listed for each batch cost a sort 0.03 ms per file.
    """
    if suffixes is not None:
        names = list(names)
        listing = "\n".join(names)
        if listing.count("\n") == len(names) - 1:  # no name holds a newline (else all are read)
            names = _ending_in(tuple(suffixes)).findall(listing)
    found: dict[str, list[str]] = {}
    for name in names:
        found.setdefault(name.lower(), []).append(name)
    return found


@functools.cache
def _ending_in(suffixes: tuple[str, ...]) -> re.Pattern[str]:
    """The lines (names) that end in one of ``suffixes``, whatever their case."""
    ending = "|".join(re.escape(suffix) for suffix in suffixes) or "(?!)"  # no suffix: nothing
    return re.compile(f"^[^\n]*(?:{ending})$", re.IGNORECASE | re.MULTILINE)


def companions_in(picture: str, index: dict[str, list[str]], suffixes: Sequence[str]) -> list[str]:
    """The sidecars of ``picture`` in a folder's :func:`by_lower_name` index, sorted."""
    stem = PurePath(picture).stem.lower()
    whole = picture.lower()
    wanted = {base + suffix for base in (stem, whole) for suffix in suffixes}
    return sorted(name for key in wanted for name in index.get(key, ()) if name != picture)


def renamed(sidecar: str, picture: str, placed: str) -> str:
    """The sidecar's name beside ``picture`` once it is placed as ``placed`` (the same name, or numbered)."""
    if sidecar.lower().startswith(picture.lower()):
        return placed + sidecar[len(picture) :]  # IMG_1.jpg.json -> IMG_1_1.jpg.json
    stem = PurePath(picture).stem
    return PurePath(placed).stem + sidecar[len(stem) :]  # IMG_1.xmp -> IMG_1_1.xmp


def pictures_of(sidecar: Path, suffixes: Sequence[str]) -> bool:
    """Whether some file in the sidecar's folder could be its picture (else it is an orphan, for now)."""
    try:
        names = [entry.name for entry in sidecar.parent.iterdir()]
    except OSError:
        return False
    return any(
        sidecar.name in companions(name, [sidecar.name], suffixes)
        for name in names
        if name != sidecar.name and not is_sidecar(name, suffixes)
    )


def split(paths: Iterable[Path], suffixes: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """``paths`` as (pictures and other files to classify, sidecars)."""
    files: list[Path] = []
    sidecars: list[Path] = []
    for path in paths:
        (sidecars if is_sidecar(path.name, suffixes) else files).append(path)
    return files, sidecars
