"""Tests for pruning the state to its retention windows, with a fake clock."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from clipsort.config import load_settings
from clipsort.encode.embedcache import EmbeddingCache
from clipsort.service.housekeeping import DAY, sweep
from clipsort.service.status import folder_size
from clipsort.store.journal import Conclusion, Intent, Journal

DIMS = 512  # ViT-B/32's vectors, so the sizes below are the real ones


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def vectors(count: int, start: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(start)
    return {f"sha{start + k}": rng.standard_normal(DIMS).astype(np.float32) for k in range(count)}


def intent(k: int, tmp_path: Path) -> Intent:
    return Intent(
        dataset="rgb",
        source=tmp_path / "Images" / f"{k}.png",
        sha256=f"{k:064x}",
        size=100 + k,
        mode="reference",
        model="tiny",
        label="red",
        top3=(("red", 0.9), ("blue", 0.1)),
        placement="sorted",
        folder=tmp_path / "Dataset" / "red",
    )


def file_bytes(path: Path) -> int:
    """The database with its write-ahead log."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_vectors_unused_for_the_window_go_and_their_space_is_returned(tmp_path: Path) -> None:
    """Old rows are deleted, rows used again are kept, and the file shrinks (incremental vacuum)."""
    clock = Clock()
    cache = EmbeddingCache(tmp_path / "e.sqlite3", clock=clock)
    cache.put("m", vectors(3000))
    clock.now += 10 * DAY
    cache.put("m", vectors(10, start=5000))
    assert set(cache.get("m", ["sha7"])) == {"sha7"}  # asked for again: in use
    full = file_bytes(cache.path)
    pruned = cache.prune(unused_since=clock.now - 5 * DAY)
    assert pruned.vectors == 2999
    kept = cache.get("m", ["sha7", "sha8", "sha5000", "sha5009"])
    assert sorted(kept) == ["sha5000", "sha5009", "sha7"]
    assert file_bytes(cache.path) < full / 10, (file_bytes(cache.path), full)


def test_file_hashes_are_pruned_with_the_vectors(tmp_path: Path) -> None:
    """A hash memo not looked up within the window goes; one looked up stays."""
    clock = Clock()
    cache = EmbeddingCache(tmp_path / "e.sqlite3", clock=clock)
    for name in ("old.png", "kept.png"):
        (tmp_path / name).write_bytes(name.encode())
        cache.file_key(tmp_path / name)
    clock.now += 2 * DAY
    cache.file_key(tmp_path / "kept.png")
    assert cache.prune(unused_since=clock.now - DAY).file_hashes == 1
    with sqlite3.connect(cache.path) as db:
        assert db.execute("SELECT COUNT(*) FROM file_hashes").fetchone() == (1,)


def test_a_cache_from_before_retention_is_upgraded_in_place(tmp_path: Path) -> None:
    """Rows without a time count as old; the file is converted to incremental vacuum once."""
    path = tmp_path / "e.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE vectors (model TEXT, key TEXT, vector BLOB, PRIMARY KEY (model, key))")
        db.execute("CREATE TABLE file_hashes (stat_key TEXT PRIMARY KEY, sha256 TEXT NOT NULL)")
        db.execute("INSERT INTO vectors VALUES ('m', 'k', ?)", (np.ones(4, np.float32).tobytes(),))
    clock = Clock()
    cache = EmbeddingCache(path, clock=clock)
    assert np.array_equal(cache.get("m", ["k"])["k"], np.ones(4, np.float32))  # used now
    cache.put("m", vectors(1))
    assert cache.prune(unused_since=clock.now - DAY).vectors == 0
    cache.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)


def test_compaction_keeps_planned_and_corrected_entries(tmp_path: Path) -> None:
    """Settled entries older than the window go; a planned one and a corrected one stay."""
    clock = Clock()
    journal = Journal(tmp_path, clock=clock)
    ids = journal.plan([intent(k, tmp_path) for k in range(2000)])
    journal.conclude([Conclusion(i, "moved", tmp_path / "Dataset" / "red" / f"{i}.png") for i in ids[1:]])
    corrected = journal.entries()[-1]
    journal.correct(
        corrected, "rgb", corrected.intent.sha256, tmp_path / "Dataset" / "blue" / "x.png", "blue"
    )
    full = file_bytes(journal.path)
    clock.now += 40 * DAY
    recent = journal.plan([intent(9999, tmp_path)])
    assert journal.compact(concluded_before=clock.now - 30 * DAY) == 1998
    left = journal.entries()
    assert [e.id for e in left] == [ids[0], corrected.id, *recent]
    assert [e.state for e in left] == ["planned", "corrected", "planned"]
    assert len(journal.corrections()) == 1
    assert file_bytes(journal.path) < full / 2, (file_bytes(journal.path), full)


def test_a_journal_deleted_under_a_running_process_is_recreated_with_an_error(tmp_path: Path) -> None:
    """The next transaction notices, logs journal_recreated and writes to a new file, not the lost inode."""
    journal = Journal(tmp_path)
    journal.plan([intent(1, tmp_path)])
    for leftover in tmp_path.glob("journal.sqlite3*"):
        leftover.unlink()
    with capture_logs() as logs:
        [entry] = journal.plan([intent(2, tmp_path)])
    assert [log["event"] for log in logs] == ["journal_recreated"]
    assert journal.path.exists()
    with Journal(tmp_path) as other:  # another process sees what was written after the loss
        assert [e.id for e in other.entries()] == [entry]


@pytest.mark.parametrize("days", [1.0, 30.0])
def test_housekeeping_prunes_both_stores_to_their_windows(tmp_path: Path, days: float) -> None:
    """One sweep applies vector_retention_days and journal_retention_days and measures the folder."""
    settings = load_settings(
        None,
        {
            "root": tmp_path / "Data",
            "state_dir": tmp_path / "state",
            "vector_retention_days": days,
            "journal_retention_days": 2 * days,
        },
    )
    settings.state_path.mkdir(parents=True)
    clock = Clock()
    cache = EmbeddingCache(settings.state_path / "e.sqlite3", clock=clock)
    journal = Journal(settings.state_path, clock=clock)
    cache.put("m", vectors(100))
    ids = journal.plan([intent(k, tmp_path) for k in range(100)])
    journal.conclude([Conclusion(i, "moved") for i in ids])
    clock.now += 1.5 * days * DAY  # past the vectors' window, inside the journal's
    first = sweep(settings, cache, journal, clock.now)
    assert (first.vectors, first.journal_entries) == (100, 0)
    clock.now += days * DAY
    second = sweep(settings, cache, journal, clock.now)
    assert (second.vectors, second.journal_entries) == (0, 100)
    assert second.state_bytes == folder_size(settings.state_path) > 0
