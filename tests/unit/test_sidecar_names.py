"""Tests for clipsort.ingest.sidecars's lookup: the per-listing index finds what a full read finds."""

from __future__ import annotations

from pathlib import PurePath

from hypothesis import given
from hypothesis import strategies as st

from clipsort.config import DEFAULT_SIDECARS
from clipsort.ingest.sidecars import by_lower_name, companions_in

STEMS = st.sampled_from(["IMG_1", "img_1", "IMG_10", "a", "A", "IMG_1.jpg", "new\nline", "NEW\nline.jpg"])
ENDINGS = st.sampled_from([".jpg", ".JPG", ".xmp", ".XMP", ".aae", ".json", ".txt", ".thm", ""])


def every_name(picture: str, names: list[str]) -> list[str]:
    """The sidecars of ``picture`` by reading every name, as the lookup did before its index."""
    wanted = {
        base + suffix
        for base in (PurePath(picture).stem.lower(), picture.lower())
        for suffix in DEFAULT_SIDECARS
    }
    return sorted(name for name in names if name != picture and name.lower() in wanted)


@given(st.lists(st.tuples(STEMS, ENDINGS).map("".join), max_size=30), st.tuples(STEMS, ENDINGS).map("".join))
def test_the_index_finds_exactly_what_reading_every_name_finds(names: list[str], picture: str) -> None:
    """Both indexes: of every name, and of the names with a sidecar's suffix only (picked out by a
    regular expression over the listing, names holding a newline included)."""
    expected = every_name(picture, names)
    assert companions_in(picture, by_lower_name(names), DEFAULT_SIDECARS) == expected
    assert companions_in(picture, by_lower_name(names, DEFAULT_SIDECARS), DEFAULT_SIDECARS) == expected
