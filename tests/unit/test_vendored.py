"""Vendored files are the ones recorded: source, version, checksum and licence."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import clipsort.web

WEB = Path(clipsort.web.__file__).parent


def test_every_vendored_file_matches_its_record() -> None:
    """Each record names a shipped file whose bytes hash to the recorded sha256, its licence beside it."""
    records = tomllib.loads((WEB / "vendored.toml").read_text())["file"]
    assert records, "no vendored file recorded"
    for record in records:
        shipped = WEB / record["path"]
        assert hashlib.sha256(shipped.read_bytes()).hexdigest() == record["sha256"], record["path"]
        assert record["version"] in shipped.name and record["version"] in record["source"]
        assert (WEB / record["license_file"]).read_text().startswith("Zero-Clause BSD")


def test_nothing_under_static_is_third_party_without_a_record() -> None:
    """A minified file added to static/ without a record fails here."""
    records = tomllib.loads((WEB / "vendored.toml").read_text())["file"]
    recorded = {record["path"] for record in records}
    minified = {f"static/{path.name}" for path in (WEB / "static").glob("*.min.*")}
    assert minified <= recorded
